package com.example.devicetune

import org.json.JSONException
import org.json.JSONObject
import java.io.File
import java.io.FileInputStream
import java.security.GeneralSecurityException
import java.security.KeyFactory
import java.security.MessageDigest
import java.security.PublicKey
import java.security.Signature
import java.security.interfaces.ECPublicKey
import java.security.spec.X509EncodedKeySpec
import java.util.Base64

/**
 * Verifies `model.sig`, the signature devicetune writes beside every model version.
 *
 * `model.sig` is an OpenSSF model-signing v1.0 sigstore bundle made in key-pair mode
 * (`devicetune sign`, src/devicetune/artifacts/signing.py):
 *
 * ```
 * {"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
 *  "verificationMaterial": {"publicKey": {"hint": sha256 hex of the signer's PEM}, ...},
 *  "dsseEnvelope": {"payloadType": "application/vnd.in-toto+json",
 *                   "payload": base64(in-toto statement JSON),
 *                   "signatures": [{"sig": base64(DER ECDSA P-256 / SHA-256), "keyid": ""}]}}
 * ```
 *
 * The signature is over the DSSE pre-authentication encoding (PAE) of the payload, and
 * the statement's predicate lists the sha256 of manifest.json and of every payload file:
 * `{"name": "model.tflite", "algorithm": "sha256", "digest": hex}`. Its subject digest is
 * the sha256 of those digests' bytes, concatenated in order.
 *
 * Verification order matters: the payload is parsed only after the signature over its
 * exact bytes verifies with the release public key the app ships.
 *
 * @param publicKeyPem the release public key, `public_key.pem` of `devicetune keys generate`
 *   (SubjectPublicKeyInfo PEM, EC P-256). Ship it in the app; never download it.
 */
class SignatureVerifier(publicKeyPem: String) {
    private val publicKey: PublicKey = parsePublicKey(publicKeyPem)
    private val keyHint: String = sha256Hex(publicKeyPem.toByteArray(Charsets.UTF_8))

    /**
     * Checks the bundle's signature and returns what it vouches for: file name -> hex
     * sha256, for manifest.json and every payload file of the version.
     *
     * @throws InvalidModelException the bundle is malformed, made by another key, or altered.
     */
    fun signedDigests(bundleBytes: ByteArray): Map<String, String> {
        val envelope = try {
            val bundle = JSONObject(String(bundleBytes, Charsets.UTF_8))
            if (!bundle.getString("mediaType").startsWith(BUNDLE_MEDIA_TYPE_PREFIX)) {
                throw InvalidModelException("model.sig is not a sigstore bundle")
            }
            val hint = bundle.optJSONObject("verificationMaterial")
                ?.optJSONObject("publicKey")?.optString("hint").orEmpty()
            Envelope.parse(bundle.getJSONObject("dsseEnvelope"), hint)
        } catch (e: JSONException) {
            throw InvalidModelException("model.sig is not a model-signing bundle: ${e.message}", e)
        } catch (e: IllegalArgumentException) { // bad base64
            throw InvalidModelException("model.sig is not a model-signing bundle: ${e.message}", e)
        }
        if (envelope.payloadType != PAYLOAD_TYPE) {
            throw InvalidModelException("model.sig signs a '${envelope.payloadType}' payload, " +
                "not an in-toto statement")
        }
        val message = pae(envelope.payloadType, envelope.payload)
        if (envelope.signatures.none { verifies(message, it) }) {
            // The hint is unauthenticated: it only makes the error message precise.
            throw InvalidModelException(
                if (envelope.hint.isNotEmpty() && envelope.hint != keyHint) {
                    "model.sig was made by another key than the app's release key"
                } else {
                    "model.sig does not verify: the signature or the statement was altered"
                })
        }
        return try {
            parseStatement(JSONObject(String(envelope.payload, Charsets.UTF_8)))
        } catch (e: JSONException) {
            throw InvalidModelException("the signed statement is malformed: ${e.message}", e)
        }
    }

    private fun verifies(message: ByteArray, derSignature: ByteArray): Boolean = try {
        Signature.getInstance("SHA256withECDSA").run {
            initVerify(publicKey)
            update(message)
            verify(derSignature)
        }
    } catch (e: GeneralSecurityException) {
        false // a malformed DER signature is a signature that does not verify
    }

    private fun parseStatement(statement: JSONObject): Map<String, String> {
        if (statement.getString("_type") != STATEMENT_TYPE) {
            throw InvalidModelException("the signed payload is not an in-toto v1 statement")
        }
        if (statement.getString("predicateType") != PREDICATE_TYPE) {
            throw InvalidModelException("the signed statement is not a model-signing v1.0 " +
                "signature (predicateType ${statement.getString("predicateType")})")
        }
        val resources = statement.getJSONObject("predicate").getJSONArray("resources")
        val digests = LinkedHashMap<String, String>()
        val root = MessageDigest.getInstance("SHA-256")
        for (i in 0 until resources.length()) {
            val resource = resources.getJSONObject(i)
            val name = resource.getString("name")
            val digest = resource.getString("digest")
            if (resource.getString("algorithm") != "sha256" || !SHA256_HEX.matches(digest)) {
                throw InvalidModelException("the signed digest of $name is not a sha256")
            }
            if (digests.put(name, digest) != null) {
                throw InvalidModelException("the signed statement lists $name twice")
            }
            root.update(hexToBytes(digest))
        }
        // model-signing checks the same: the subject names all resources by one digest.
        val subjects = statement.getJSONArray("subject")
        if (subjects.length() != 1 || subjects.getJSONObject(0).getJSONObject("digest")
                .getString("sha256") != root.digest().toHex()) {
            throw InvalidModelException("the signed statement's subject digest does not " +
                "match its resources")
        }
        return digests
    }

    private class Envelope(
        val payloadType: String,
        val payload: ByteArray,
        val signatures: List<ByteArray>,
        val hint: String,
    ) {
        companion object {
            fun parse(json: JSONObject, hint: String): Envelope {
                val signatures = json.getJSONArray("signatures")
                return Envelope(
                    payloadType = json.getString("payloadType"),
                    payload = Base64.getDecoder().decode(json.getString("payload")),
                    signatures = (0 until signatures.length()).map {
                        Base64.getDecoder().decode(signatures.getJSONObject(it).getString("sig"))
                    },
                    hint = hint,
                )
            }
        }
    }

    companion object {
        const val BUNDLE_MEDIA_TYPE_PREFIX = "application/vnd.dev.sigstore.bundle"
        const val PAYLOAD_TYPE = "application/vnd.in-toto+json"
        const val STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
        const val PREDICATE_TYPE = "https://model_signing/signature/v1.0"
        private val SHA256_HEX = Regex("[0-9a-f]{64}")

        /**
         * DSSE v1 pre-authentication encoding:
         * `"DSSEv1" SP len(type) SP type SP len(body) SP body`, lengths in bytes as
         * ASCII decimal (github.com/secure-systems-lab/dsse, protocol.md).
         */
        fun pae(payloadType: String, payload: ByteArray): ByteArray {
            val type = payloadType.toByteArray(Charsets.UTF_8)
            val header = "DSSEv1 ${type.size} $payloadType ${payload.size} "
            return header.toByteArray(Charsets.UTF_8) + payload
        }

        private fun parsePublicKey(pem: String): PublicKey {
            val body = pem.lineSequence()
                .filterNot { it.startsWith("-----") }
                .joinToString("") { it.trim() }
            val key = KeyFactory.getInstance("EC")
                .generatePublic(X509EncodedKeySpec(Base64.getDecoder().decode(body)))
            require(key is ECPublicKey && key.params.curve.field.fieldSize == 256) {
                "the release key must be an EC P-256 public key"
            }
            return key
        }
    }
}

/**
 * Decides whether a version folder may be used: [SignatureVerifier] for the signature,
 * then every file the app keeps against the signed digests and the signed manifest.
 *
 * A folder holds manifest.json, model.sig and the TFLite model; the app never downloads
 * the other payload files (Model.mlmodel, update.npz), whose digests the signature still
 * lists, so each downloaded file is checked on its own.
 *
 * @param modelName the model this app runs: a version of another model signed with the
 *   same key is refused.
 */
class VersionVerifier(private val signatures: SignatureVerifier, private val modelName: String) {

    /**
     * Verifies model.sig and manifest.json of [folder], before the model file is there.
     *
     * @param expectedVersion the version the registry assigned (null: any, e.g. at start-up).
     * @return the manifest, now trusted.
     * @throws InvalidModelException the reason the version cannot be trusted.
     */
    fun verifyManifest(folder: File, expectedVersion: Int? = null): ModelManifest {
        val signed = signatures.signedDigests(
            readFile(File(folder, VersionFiles.SIGNATURE_FILE)))
        val manifestBytes = readFile(File(folder, VersionFiles.MANIFEST_FILE))
        if (sha256Hex(manifestBytes) != signed[VersionFiles.MANIFEST_FILE]) {
            throw InvalidModelException("manifest.json was modified after signing")
        }
        val manifest = ModelManifest.parse(manifestBytes)
        // As `devicetune verify`: the signature covers exactly the manifest and its files.
        if (signed.keys != manifest.files.keys + VersionFiles.MANIFEST_FILE) {
            throw InvalidModelException("the signature and manifest.json list different files")
        }
        for ((name, sha256) in manifest.files) {
            if (signed[name] != sha256) {
                throw InvalidModelException("manifest.json's sha256 of $name is not the signed one")
            }
        }
        if (manifest.name != modelName) {
            throw InvalidModelException("this is a version of '${manifest.name}', not '$modelName'")
        }
        if (expectedVersion != null && manifest.version != expectedVersion) {
            throw InvalidModelException("asked for version $expectedVersion, the signed " +
                "manifest says ${manifest.version}")
        }
        if (manifest.encrypted) {
            // Signed as encrypted (encrypt, then sign): the signature covers the .enc
            // file; its plaintext is checked against tflite.sha256 after decryption.
            if (manifest.tflite.file + VersionDecryption.ENCRYPTED_SUFFIX !in manifest.files) {
                throw InvalidModelException("encrypted version ${manifest.version} lacks " +
                    "${manifest.tflite.file}${VersionDecryption.ENCRYPTED_SUFFIX}")
            }
        } else if (manifest.files[manifest.tflite.file] != manifest.tflite.sha256) {
            throw InvalidModelException("manifest.json's tflite.sha256 disagrees with its files")
        }
        return manifest
    }

    /**
     * Verifies a whole version folder: [verifyManifest], then the TFLite model's bytes.
     *
     * @return the manifest, now trusted.
     * @throws InvalidModelException the reason the folder cannot be trusted.
     */
    fun verifyFolder(folder: File, expectedVersion: Int? = null): ModelManifest {
        val manifest = verifyManifest(folder, expectedVersion)
        if (manifest.encrypted) { // the signed ciphertext, then (below) its decryption
            val encrypted = manifest.tflite.file + VersionDecryption.ENCRYPTED_SUFFIX
            if (sha256File(File(folder, encrypted)) != manifest.files[encrypted]) {
                throw InvalidModelException("$encrypted does not match its signed sha256")
            }
        }
        val modelFile = manifest.tflite.file
        if (sha256File(File(folder, modelFile)) != manifest.tflite.sha256) {
            throw InvalidModelException("$modelFile does not match its signed sha256")
        }
        return manifest
    }

    private fun readFile(file: File): ByteArray {
        if (!file.isFile) throw InvalidModelException("${file.name} is missing")
        if (file.length() > MAX_METADATA_BYTES) throw InvalidModelException("${file.name} is too large")
        return file.readBytes()
    }

    private companion object {
        const val MAX_METADATA_BYTES = 4L shl 20
    }
}

internal fun sha256Hex(bytes: ByteArray): String =
    MessageDigest.getInstance("SHA-256").digest(bytes).toHex()

internal fun sha256File(file: File): String {
    if (!file.isFile) throw InvalidModelException("${file.name} is missing")
    val digest = MessageDigest.getInstance("SHA-256")
    FileInputStream(file).use { input ->
        val buffer = ByteArray(64 * 1024)
        while (true) {
            val read = input.read(buffer)
            if (read < 0) break
            digest.update(buffer, 0, read)
        }
    }
    return digest.digest().toHex()
}

internal fun ByteArray.toHex(): String = joinToString("") { "%02x".format(it) }

private fun hexToBytes(hex: String): ByteArray =
    ByteArray(hex.length / 2) { i -> hex.substring(2 * i, 2 * i + 2).toInt(16).toByte() }
