// Plain JVM (no android.* imports): compiled and run by tests/examples/test_kotlin_client.py
// on a version encrypted by devicetune (src/devicetune/artifacts/encryption.py).
//
// Scheme ecies-p256-hkdf-sha256-aes256gcm/v1. The version's manifest.json keeps per
// recipient (the hex sha256 of its DER public key) an ephemeral P-256 point E and the
// wrapped data key; the app:
//   Z   = ECDH(its private key, E)                      (KeyAgreement "ECDH")
//   KEK = HKDF-SHA256(Z, salt = E || R, info = "devicetune/v1 key wrap", 32 bytes)
//         (E and R, its own public key, as 65-byte uncompressed X9.62 points)
//   K   = AES-256-GCM-open(KEK, wrapped, AAD = "devicetune/v1 data key")
//   NAME = AES-256-GCM-open(K, NAME.enc, AAD = NAME), its sha256 = the manifest's
// Run it only on a folder whose signature verified (VersionVerifier): the signature covers
// the .enc files and manifest.json, so nothing unsigned is ever decrypted. On Android the
// private key can live in the Android Keystore (KeyProperties.PURPOSE_AGREE_KEY, API 31):
// KeyAgreement takes the Keystore's PrivateKey handle as it takes a software key.
package com.example.devicetune

import java.math.BigInteger
import java.security.KeyFactory
import java.security.MessageDigest
import java.security.PrivateKey
import java.security.interfaces.ECPublicKey
import java.security.spec.ECPoint
import java.security.spec.ECPublicKeySpec
import java.util.Base64
import javax.crypto.Cipher
import javax.crypto.KeyAgreement
import javax.crypto.Mac
import javax.crypto.spec.GCMParameterSpec
import javax.crypto.spec.SecretKeySpec

class DecryptionException(message: String) : Exception(message)

class VersionDecryption(private val privateKey: PrivateKey, private val publicKey: ECPublicKey) {
    /** Hex sha256 of the DER public key: how manifest.json names this recipient. */
    val keyId: String = hex(sha256(publicKey.encoded))

    /**
     * The plaintext payload files of an encrypted, verified version.
     *
     * @param manifest the version's manifest.json (the encrypted one, as signed).
     * @param read the bytes of one of the version's files by name (e.g. "model.tflite.enc").
     * @return file name -> plaintext, each checked against the manifest's sha256.
     * @throws DecryptionException another scheme, not encrypted for this key, a file or the
     *   wrapped key altered, or a plaintext whose sha256 differs.
     */
    fun decrypt(manifest: ByteArray, read: (String) -> ByteArray): Map<String, ByteArray> {
        val json = Json.parse(String(manifest, Charsets.UTF_8)) as Map<*, *>
        val encryption = json["encryption"] as Map<*, *>?
            ?: throw DecryptionException("the version is not encrypted: use its files as they are")
        if (encryption["scheme"] != SCHEME) {
            throw DecryptionException("unknown encryption scheme ${encryption["scheme"]}; this app reads $SCHEME")
        }
        val entry = (encryption["recipients"] as List<*>).map { it as Map<*, *> }
            .firstOrNull { it["recipient"] == keyId }
            ?: throw DecryptionException("the version is not encrypted for this app's key (${keyId.take(16)})")
        val dataKey = unwrap(entry["ephemeral_public_key"] as String, entry["wrapped_key"] as String)
        val out = LinkedHashMap<String, ByteArray>()
        for ((name, value) in encryption["files"] as Map<*, *>) {
            val file = value as Map<*, *>
            val plaintext = open(dataKey, read(file["file"] as String), (name as String).toByteArray(),
                                 "$name: decryption failed: the file was altered, renamed, or " +
                                     "belongs to another version")
            if (hex(sha256(plaintext)) != file["sha256"]) {
                throw DecryptionException("$name: its plaintext's sha256 differs from the manifest")
            }
            out[name] = plaintext
        }
        return out
    }

    private fun unwrap(ephemeralBase64: String, wrappedBase64: String): ByteArray {
        val point = Base64.getDecoder().decode(ephemeralBase64)
        if (point.size != 65 || point[0] != 4.toByte()) throw DecryptionException("bad ephemeral key")
        val params = publicKey.params
        val ephemeral = KeyFactory.getInstance("EC").generatePublic(ECPublicKeySpec(
            ECPoint(BigInteger(1, point.copyOfRange(1, 33)), BigInteger(1, point.copyOfRange(33, 65))),
            params))
        val agreement = KeyAgreement.getInstance("ECDH")
        agreement.init(privateKey)
        agreement.doPhase(ephemeral, true)
        val shared = agreement.generateSecret() // the x-coordinate, 32 bytes
        val kek = hkdfSha256(shared, salt = point + x962(publicKey), info = WRAP_INFO, length = 32)
        return open(kek, Base64.getDecoder().decode(wrappedBase64), WRAP_AAD,
                    "the wrapped data key does not open with this key: altered or wrapped for another")
    }

    private fun open(key: ByteArray, blob: ByteArray, aad: ByteArray, failure: String): ByteArray {
        if (blob.size < 12 + 16) throw DecryptionException(failure)
        val cipher = Cipher.getInstance("AES/GCM/NoPadding")
        cipher.init(Cipher.DECRYPT_MODE, SecretKeySpec(key, "AES"), GCMParameterSpec(128, blob, 0, 12))
        cipher.updateAAD(aad)
        return try {
            cipher.doFinal(blob, 12, blob.size - 12)
        } catch (e: javax.crypto.AEADBadTagException) {
            throw DecryptionException(failure)
        }
    }

    companion object {
        const val SCHEME = "ecies-p256-hkdf-sha256-aes256gcm/v1"
        const val ENCRYPTED_SUFFIX = ".enc"
        private val WRAP_INFO = "devicetune/v1 key wrap".toByteArray()
        private val WRAP_AAD = "devicetune/v1 data key".toByteArray()

        fun x962(key: ECPublicKey): ByteArray {
            fun coordinate(v: BigInteger): ByteArray {
                val raw = v.toByteArray().dropWhile { it == 0.toByte() }.toByteArray()
                return ByteArray(32 - raw.size) + raw
            }
            return byteArrayOf(4) + coordinate(key.w.affineX) + coordinate(key.w.affineY)
        }

        /** RFC 5869 with HMAC-SHA256. */
        fun hkdfSha256(ikm: ByteArray, salt: ByteArray, info: ByteArray, length: Int): ByteArray {
            val extract = Mac.getInstance("HmacSHA256").apply { init(SecretKeySpec(salt, "HmacSHA256")) }
            val prk = extract.doFinal(ikm)
            val expand = Mac.getInstance("HmacSHA256").apply { init(SecretKeySpec(prk, "HmacSHA256")) }
            var block = ByteArray(0)
            var out = ByteArray(0)
            var counter = 1
            while (out.size < length) {
                expand.update(block)
                expand.update(info)
                expand.update(counter.toByte())
                block = expand.doFinal()
                out += block
                counter++
            }
            return out.copyOf(length)
        }

        private fun sha256(data: ByteArray) = MessageDigest.getInstance("SHA-256").digest(data)
        private fun hex(data: ByteArray) = data.joinToString("") { String.format("%02x", it) }
    }
}
