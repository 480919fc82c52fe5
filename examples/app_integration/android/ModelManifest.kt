package com.example.devicetune

import org.json.JSONArray
import org.json.JSONException
import org.json.JSONObject

/** The files of a devicetune model version that the app keeps (see artifacts/emit.py). */
object VersionFiles {
    /** The manifest: hashes, signature table, class labels. Covered by the signature. */
    const val MANIFEST_FILE = "manifest.json"

    /** The OpenSSF model-signing bundle over manifest.json and every payload file. */
    const val SIGNATURE_FILE = "model.sig"

    /**
     * The Android model in a build and in every emitted version. The updater downloads
     * whatever `tflite.file` the signed manifest names; this name is only for the copy
     * shipped in the APK's assets.
     */
    const val MODEL_FILE = "model.tflite"
}

/** A version that must not be used: unsigned, signed by another key, tampered with, or
 *  not a model this app can run. The message says which. */
class InvalidModelException(message: String, cause: Throwable? = null) :
    Exception(message, cause)

/** One input or output of a signature; -1 in [shape] is a dimension of any size. */
data class TensorSpec(val name: String, val shape: List<Int>, val dtype: String) {
    /** Number of elements of a fully static tensor (a scalar has one). */
    val elementCount: Int
        get() {
            require(shape.none { it < 0 }) { "$name has a dynamic shape $shape" }
            return shape.fold(1) { count, dim -> count * dim }
        }
}

/** The inputs and outputs of one TFLite signature, as manifest.json lists them. */
data class SignatureSpec(val inputs: List<TensorSpec>, val outputs: List<TensorSpec>) {
    fun input(name: String): TensorSpec = inputs.firstOrNull { it.name == name }
        ?: throw InvalidModelException("the signature has no input '$name'")

    fun output(name: String): TensorSpec = outputs.firstOrNull { it.name == name }
        ?: throw InvalidModelException("the signature has no output '$name'")
}

/** The Android artifact's entry of manifest.json. */
data class TfliteEntry(
    val file: String,
    val sha256: String,
    /** The static batch of `train`, `train_dp` and `evaluate`. */
    val batchSize: Int,
    /** The order of the trainable tensors (get_weights / set_weights). */
    val weightNames: List<String>,
    val signatures: Map<String, SignatureSpec>,
) {
    fun signature(name: String): SignatureSpec = signatures[name]
        ?: throw InvalidModelException("model.tflite has no '$name' signature")
}

/**
 * The parts of a devicetune `manifest.json` the Android app acts on.
 *
 * Parse only bytes whose sha256 the release signature covers: [VersionVerifier] does
 * that before anything here is trusted. `format_version` guards against a layout this
 * code does not know; unknown fields are ignored (the signature already vouches for them).
 */
data class ModelManifest(
    val name: String,
    val version: Int,
    val classes: List<String>,
    /** The shape of one example, without the batch dimension (e.g. [128, 9]). */
    val inputShape: List<Int>,
    /** File name -> hex sha256 of every payload file of the version. */
    val files: Map<String, String>,
    val tflite: TfliteEntry,
    /** True when the payload files are encrypted for the app's key: ModelUpdater decrypts them
     *  (VersionDecryption) after the signature verified. */
    val encrypted: Boolean,
) {
    /** Number of floats in one example. */
    val exampleSize: Int get() = inputShape.fold(1) { count, dim -> count * dim }

    companion object {
        const val SUPPORTED_FORMAT_VERSION = 1

        /** Parses manifest.json; every problem is an [InvalidModelException]. */
        fun parse(bytes: ByteArray): ModelManifest = try {
            val json = JSONObject(String(bytes, Charsets.UTF_8))
            val format = json.getInt("format_version")
            if (format != SUPPORTED_FORMAT_VERSION) {
                throw InvalidModelException(
                    "manifest.json has format_version $format; this app reads " +
                        "$SUPPORTED_FORMAT_VERSION: update the app before this model")
            }
            val tflite = json.optJSONObject("tflite")
                ?: throw InvalidModelException(
                    "manifest.json has no TFLite model (built with export.tflite = false)")
            val files = json.getJSONObject("files")
            ModelManifest(
                name = json.getString("name"),
                version = json.getInt("version"),
                classes = json.getJSONArray("classes").strings(),
                inputShape = json.getJSONArray("input_shape").ints(),
                files = files.keys().asSequence().associateWith { files.getString(it) },
                tflite = parseTflite(tflite),
                encrypted = !json.isNull("encryption"),
            )
        } catch (e: JSONException) {
            throw InvalidModelException("manifest.json is not a devicetune manifest: ${e.message}", e)
        }

        /** The registry's rule for file names: never a path. */
        private val PLAIN_NAME = Regex("[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

        private fun parseTflite(json: JSONObject): TfliteEntry {
            val table = json.getJSONObject("signatures")
            val file = json.getString("file")
            if (!PLAIN_NAME.matches(file)) {
                throw InvalidModelException("tflite.file '$file' is not a plain file name")
            }
            return TfliteEntry(
                file = file,
                sha256 = json.getString("sha256"),
                batchSize = json.getInt("batch_size"),
                weightNames = json.getJSONArray("weight_names").strings(),
                signatures = table.keys().asSequence().associateWith { key ->
                    val entry = table.getJSONObject(key)
                    SignatureSpec(
                        inputs = entry.getJSONArray("inputs").tensors(),
                        outputs = entry.getJSONArray("outputs").tensors(),
                    )
                },
            )
        }

        private fun JSONArray.tensors(): List<TensorSpec> = (0 until length()).map { i ->
            val tensor = getJSONObject(i)
            TensorSpec(
                name = tensor.getString("name"),
                shape = tensor.getJSONArray("shape").ints(),
                dtype = tensor.getString("dtype"),
            )
        }

        private fun JSONArray.strings(): List<String> = (0 until length()).map { getString(it) }

        private fun JSONArray.ints(): List<Int> = (0 until length()).map { getInt(it) }
    }
}
