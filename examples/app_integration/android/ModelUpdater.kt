package com.example.devicetune

import android.content.Context
import android.util.AtomicFile
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext
import org.json.JSONException
import org.json.JSONObject
import java.io.ByteArrayOutputStream
import java.io.File
import java.io.FileOutputStream
import java.io.IOException
import java.io.OutputStream
import java.net.HttpURLConnection
import java.net.URL
import java.net.URLEncoder
import java.security.MessageDigest

/** The registry could not be reached or answered with an error. Retry later. */
class RegistryException(message: String, cause: Throwable? = null) : IOException(message, cause)

/**
 * Reads a devicetune registry (`devicetune registry serve`, src/devicetune/registry/api.py).
 * Reads need no token. Use HTTPS in production: Android refuses cleartext HTTP unless the
 * app's network security config allows it (fine for a registry on a laptop in development).
 *
 * @param baseUrl e.g. `https://models.example.com`, without a trailing slash.
 */
class RegistryClient(
    private val baseUrl: String,
    private val connectTimeoutMs: Int = 15_000,
    private val readTimeoutMs: Int = 60_000,
) {
    /** The version this device runs under the model's staged rollout or A/B test. */
    fun latestVersion(name: String, deviceId: String): Int {
        val device = URLEncoder.encode(deviceId, "UTF-8")
        val body = ByteArrayOutputStream()
        get("/v1/models/$name/latest?device_id=$device&platform=android", body, MAX_JSON_BYTES)
        return try {
            JSONObject(body.toString("UTF-8")).getInt("version")
        } catch (e: JSONException) {
            throw RegistryException("the registry's answer is not JSON: ${e.message}", e)
        }
    }

    /** Downloads manifest.json of a version, byte for byte as signed; returns its sha256. */
    fun downloadManifest(name: String, version: Int, target: File): String =
        download("/v1/models/$name/versions/$version/manifest", target, MAX_JSON_BYTES)

    /** Downloads one file of a version (model.sig, model.tflite, ...); returns its sha256. */
    fun downloadFile(name: String, version: Int, file: String, target: File, maxBytes: Long): String =
        download("/v1/models/$name/versions/$version/files/$file", target, maxBytes)

    /** Streams a GET into [target], fsynced before it returns. */
    private fun download(path: String, target: File, maxBytes: Long): String =
        FileOutputStream(target).use { output ->
            get(path, output, maxBytes).also { output.fd.sync() }
        }

    /** Streams a GET into [output], hashing as it goes; returns the body's sha256. */
    private fun get(path: String, output: OutputStream, maxBytes: Long): String {
        val connection = (URL(baseUrl + path).openConnection() as HttpURLConnection).apply {
            connectTimeout = connectTimeoutMs
            readTimeout = readTimeoutMs
            instanceFollowRedirects = false
            setRequestProperty("Accept-Encoding", "identity")
        }
        try {
            val status = connection.responseCode
            if (status != HttpURLConnection.HTTP_OK) {
                // The registry's errors are {"detail": "..."}: say what it said.
                val detail = connection.errorStream?.use { it.readBytes().decodeToString().take(500) }
                throw RegistryException("GET $path: HTTP $status ${detail.orEmpty()}")
            }
            if (connection.contentLengthLong > maxBytes) {
                throw RegistryException(
                    "GET $path: ${connection.contentLengthLong} bytes, more than $maxBytes")
            }
            val digest = MessageDigest.getInstance("SHA-256")
            var total = 0L
            connection.inputStream.use { input ->
                val buffer = ByteArray(64 * 1024)
                while (true) {
                    val read = input.read(buffer)
                    if (read < 0) break
                    total += read
                    if (total > maxBytes) throw RegistryException("GET $path: more than $maxBytes bytes")
                    digest.update(buffer, 0, read)
                    output.write(buffer, 0, read)
                }
            }
            return digest.digest().toHex()
        } catch (e: RegistryException) {
            throw e
        } catch (e: IOException) {
            throw RegistryException("GET $path failed: ${e.message}", e)
        } finally {
            connection.disconnect()
        }
    }

    companion object {
        const val MAX_JSON_BYTES = 4L shl 20
        const val MAX_MODEL_BYTES = 512L shl 20
    }
}

/**
 * The model versions on the device, under `filesDir/devicetune/NAME/`:
 *
 * ```
 * versions/7/          manifest.json, model.sig, model.tflite: one verified version
 * current              the version in use (android.util.AtomicFile)
 * personal-weights.bin the personal weights, tagged with the model's sha256
 * staging-*            downloads in progress; removed at start-up
 * ```
 *
 * A version folder is complete before `current` names it, and `current` is replaced
 * atomically, so a crash at any point leaves the old version or the new one in use.
 */
class ModelStore(context: Context, val modelName: String) {
    val root = File(context.filesDir, "devicetune/$modelName")
    private val versions = File(root, "versions")
    private val pointer = AtomicFile(File(root, "current"))
    val personalWeights = File(root, "personal-weights.bin")

    init {
        versions.mkdirs()
        root.listFiles { file -> file.name.startsWith("staging-") }?.forEach { it.deleteRecursively() }
    }

    /** The version in use, or null before the first install. */
    fun currentVersion(): Int? = try {
        pointer.readFully().decodeToString().trim().toInt()
    } catch (e: IOException) {
        null
    } catch (e: NumberFormatException) {
        null
    }

    fun folder(version: Int) = File(versions, version.toString())

    fun newStaging(): File = File(root, "staging-${System.nanoTime()}").apply {
        if (!mkdirs()) throw IOException("cannot create $this")
    }

    /** Moves a verified staging folder into place as [version] (not yet in use). */
    fun commit(staging: File, version: Int): File {
        val target = folder(version)
        target.deleteRecursively() // a leftover of an install that did not finish
        if (!staging.renameTo(target)) throw IOException("cannot move $staging to $target")
        return target
    }

    /** Makes [version] the one in use, atomically, and removes every other version. */
    fun makeCurrent(version: Int) {
        val stream = pointer.startWrite()
        try {
            stream.write(version.toString().toByteArray())
            pointer.finishWrite(stream)
        } catch (e: IOException) {
            pointer.failWrite(stream)
            throw e
        }
        versions.listFiles()
            ?.filter { it.name != version.toString() }
            ?.forEach { it.deleteRecursively() }
    }
}

/**
 * Keeps the app's model current: asks the registry which version this device should run,
 * downloads manifest.json, model.sig and the TFLite model, verifies them, and only then
 * swaps the model in. Until then the running model is untouched.
 *
 * ```
 * val verifier = VersionVerifier(SignatureVerifier(RELEASE_PUBLIC_KEY_PEM), "har")
 * val store = ModelStore(context, "har")
 * val model = ModelUpdater.openInstalled(context, store, verifier)
 * val updater = ModelUpdater(RegistryClient("https://models.example.com"), store, verifier, deviceId)
 * when (updater.update(model)) { ... }   // e.g. from a WorkManager job on unmetered network
 * ```
 *
 * Weights-only updates: an emitted version also holds `update.npz`, the new weights alone,
 * which an app could apply with `set_weights` to the model it has. This example downloads
 * the whole `model.tflite` instead: the file is small (the HAR model is 172 KB), it is the
 * unit the signature, the manifest's signature table and `tflite.sha256` describe, and a
 * restart needs no second file to re-apply. Apps with large backbones can download
 * `update.npz` (a zip of .npy arrays, float32, named by `tflite.weight_names`), check it
 * against its signed sha256 like any file here, and call [DevicetuneModel.setWeights].
 */
class ModelUpdater(
    private val registry: RegistryClient,
    private val store: ModelStore,
    private val verifier: VersionVerifier,
    private val deviceId: String,
    /** The app's key for versions emitted with emit.encrypt_for ([keystoreDecryption]). */
    private val decryption: VersionDecryption? = null,
) {
    sealed interface Outcome {
        data class UpToDate(val version: Int) : Outcome
        data class Installed(val version: Int, val previous: Int?) : Outcome
    }

    /**
     * Brings [model] to the version the registry assigns this device (which can be lower
     * than the installed one when a rollout is rolled back).
     *
     * @throws RegistryException the registry could not be reached: retry later.
     * @throws InvalidModelException the version failed verification: the running model
     *   stays; report it, do not retry in a loop.
     */
    suspend fun update(model: DevicetuneModel): Outcome = withContext(Dispatchers.IO) {
        val name = store.modelName
        val version = registry.latestVersion(name, deviceId)
        val installed = store.currentVersion()
        if (version == installed) return@withContext Outcome.UpToDate(version)
        val staging = store.newStaging()
        try {
            // The signature and the manifest first: both small, and nothing else is
            // downloaded on the word of a manifest the release key has not vouched for.
            registry.downloadFile(name, version, VersionFiles.SIGNATURE_FILE,
                                  File(staging, VersionFiles.SIGNATURE_FILE),
                                  RegistryClient.MAX_JSON_BYTES)
            registry.downloadManifest(name, version, File(staging, VersionFiles.MANIFEST_FILE))
            val signed = verifier.verifyManifest(staging, version)
            if (signed.encrypted) {
                // Decrypted only after its signature verified: the .enc file's sha256 is the
                // signed one before a byte of it reaches the cipher.
                val keys = decryption ?: throw InvalidModelException(
                    "version $version is encrypted (emit.encrypt_for) and this app has no key")
                val encrypted = signed.tflite.file + VersionDecryption.ENCRYPTED_SUFFIX
                registry.downloadFile(name, version, encrypted, File(staging, encrypted),
                                      RegistryClient.MAX_MODEL_BYTES)
                if (sha256File(File(staging, encrypted)) != signed.files[encrypted]) {
                    throw InvalidModelException("$encrypted does not match its signed sha256")
                }
                val plain = try {
                    keys.decrypt(File(staging, VersionFiles.MANIFEST_FILE).readBytes()) {
                        File(staging, it).readBytes()
                    }
                } catch (e: DecryptionException) {
                    throw InvalidModelException(e.message ?: "decryption failed", e)
                }
                File(staging, signed.tflite.file).writeBytes(plain.getValue(signed.tflite.file))
            } else {
                registry.downloadFile(name, version, signed.tflite.file, File(staging, signed.tflite.file),
                                      RegistryClient.MAX_MODEL_BYTES)
            }
            val manifest = verifier.verifyFolder(staging, version) // every byte now on disk
            val folder = store.commit(staging, version)
            model.replaceWith(File(folder, manifest.tflite.file), manifest) // opens it first
            store.makeCurrent(version)
            Outcome.Installed(version, installed)
        } finally {
            staging.deleteRecursively() // gone after commit; a failed download's leftovers
        }
    }

    companion object {
        /** The asset folder holding the version the APK ships (manifest.json, model.sig,
         *  model.tflite of a signed `devicetune build`). */
        const val BUNDLED_ASSETS = "devicetune"

        /**
         * Opens the installed version, re-verified (the files could have been altered on
         * a rooted device), or installs the version the APK ships on first run.
         */
        fun openInstalled(
            context: Context,
            store: ModelStore,
            verifier: VersionVerifier,
        ): DevicetuneModel {
            store.currentVersion()?.let { version ->
                val folder = store.folder(version)
                try {
                    val manifest = verifier.verifyFolder(folder, version)
                    return DevicetuneModel.open(File(folder, manifest.tflite.file), manifest)
                } catch (e: Exception) {
                    // Altered, or does not load (the Interpreter throws IllegalArgumentException):
                    // fall back to the bundled version below; the next update repairs it.
                }
            }
            val staging = store.newStaging()
            try {
                val shipped = listOf(
                    VersionFiles.MANIFEST_FILE, VersionFiles.SIGNATURE_FILE, VersionFiles.MODEL_FILE)
                for (file in shipped) {
                    context.assets.open("$BUNDLED_ASSETS/$file").use { input ->
                        FileOutputStream(File(staging, file)).use { input.copyTo(it) }
                    }
                }
                val manifest = verifier.verifyFolder(staging)
                val folder = store.commit(staging, manifest.version)
                val model = DevicetuneModel.open(File(folder, manifest.tflite.file), manifest)
                store.makeCurrent(manifest.version)
                return model
            } finally {
                staging.deleteRecursively()
            }
        }
    }
}

/**
 * The app's decryption key pair from the Android Keystore: generate it once with
 * `KeyGenParameterSpec.Builder(alias, KeyProperties.PURPOSE_AGREE_KEY)` and
 * `ECGenParameterSpec("secp256r1")` (API 31), and give its public key (the certificate's,
 * PEM) to the publisher for `emit.encrypt_for`. The private key never leaves the Keystore:
 * KeyAgreement uses it there.
 */
fun keystoreDecryption(alias: String): VersionDecryption {
    val keyStore = java.security.KeyStore.getInstance("AndroidKeyStore").apply { load(null) }
    val private = keyStore.getKey(alias, null) as java.security.PrivateKey
    val public = keyStore.getCertificate(alias).publicKey as java.security.interfaces.ECPublicKey
    return VersionDecryption(private, public)
}
