package com.example.devicetune

import android.util.AtomicFile
import org.tensorflow.lite.Interpreter
import java.io.ByteArrayOutputStream
import java.io.Closeable
import java.io.DataInputStream
import java.io.DataOutputStream
import java.io.File
import java.io.FileNotFoundException
import java.io.IOException
import java.nio.FloatBuffer
import java.nio.IntBuffer
import java.util.zip.CRC32
import kotlin.random.Random

/**
 * A devicetune `model.tflite` run with the LiteRT Interpreter through its signatures:
 * `embed` and `infer` for any batch, `train` / `train_dp` / `train_masked` / `evaluate` on the static
 * batch of manifest.json with a `mask` for partial batches, `get_weights` / `set_weights`
 * for the personal weights and `configure` for the step size.
 *
 * Every LiteRT call is written out as `runSignature(mapOf(inputs), mapOf(outputs), "name")`
 * with the names of manifest.json's signature table;
 * tests/examples/test_app_integration.py reads these calls and checks each name against a
 * fresh `devicetune build`.
 *
 * Thread safety: an Interpreter is not thread-safe, so every call holds one lock, and
 * [replaceWith] swaps in a new version under the same lock. Calls are CPU-bound and
 * synchronous: make them off the main thread.
 */
class DevicetuneModel private constructor(
    private var interpreter: Interpreter,
    private var current: ModelManifest,
    private val numThreads: Int,
) : Closeable {
    private val lock = Any()

    /** The manifest of the version now running. */
    val manifest: ModelManifest get() = synchronized(lock) { current }

    /** Class probabilities, one row per example. [examples] holds [count] examples of
     *  `manifest.inputShape`, flattened row-major (as the model's input). */
    fun infer(examples: FloatArray, count: Int): Array<FloatArray> = synchronized(lock) {
        val x = examplesTensor(examples, count)
        val probabilities = Array(count) { FloatArray(current.classes.size) }
        interpreter.runSignature(mapOf("x" to x), mapOf("probabilities" to probabilities), "infer")
        probabilities
    }

    /** The most probable class label of each example. */
    fun predict(examples: FloatArray, count: Int): List<String> = synchronized(lock) {
        infer(examples, count).map { row -> current.classes[row.indices.maxBy { row[it] }] }
    }

    /**
     * The backbone's features of each example: what `train` and `evaluate` take. The
     * backbone is frozen, so compute features once per example and keep them; a training
     * step on cached features costs microseconds.
     */
    fun embed(examples: FloatArray, count: Int): Array<FloatArray> = synchronized(lock) {
        val x = examplesTensor(examples, count)
        val dim = current.tflite.signature("embed").output("features").shape.last()
        val features = Array(count) { FloatArray(dim) }
        interpreter.runSignature(mapOf("x" to x), mapOf("features" to features), "embed")
        features
    }

    /**
     * One optimizer step on at most `batchSize` examples; a shorter batch is padded and
     * masked, so padding never trains. With [dpSgd], the step is DP-SGD (`train_dp`):
     * each example's gradient is clipped and Gaussian noise is added, as manifest.json's
     * `dp_clip_norm` and `dp_noise_multiplier` say.
     *
     * @param labels class indices into `manifest.classes`.
     * @return the mean loss of the real examples, before the step.
     */
    fun trainStep(features: List<FloatArray>, labels: IntArray, dpSgd: Boolean = false): Float =
        synchronized(lock) {
            val batch = staticBatch(features, labels)
            val loss = FloatBuffer.allocate(1)
            if (dpSgd) {
                interpreter.runSignature(
                    mapOf("features" to batch.features, "labels" to batch.labels, "mask" to batch.mask),
                    mapOf("loss" to loss), "train_dp")
            } else {
                interpreter.runSignature(
                    mapOf("features" to batch.features, "labels" to batch.labels, "mask" to batch.mask),
                    mapOf("loss" to loss), "train")
            }
            loss.get(0)
        }

    /**
     * [trainStep] with a restricted softmax (`train_masked`, FedRS): only the classes this
     * phone holds take part, so the classes its past lacks keep the global model's
     * weights. Use it in federated rounds whose task says `class-mask`.
     *
     * @param classMask one float per class of `manifest.classes`: 1 for a class this
     *   phone has examples of, 0 for one it has not.
     */
    fun trainStepMasked(features: List<FloatArray>, labels: IntArray, classMask: FloatArray): Float =
        synchronized(lock) {
            require(classMask.size == current.classes.size) { "one mask entry per class" }
            val batch = staticBatch(features, labels)
            val loss = FloatBuffer.allocate(1)
            interpreter.runSignature(
                mapOf("features" to batch.features, "labels" to batch.labels, "mask" to batch.mask,
                      "class_mask" to FloatBuffer.wrap(classMask)),
                mapOf("loss" to loss), "train_masked")
            loss.get(0)
        }

    /** One pass over the examples in a shuffled order; returns the mean loss per example. */
    fun trainEpoch(features: List<FloatArray>, labels: IntArray, random: Random = Random.Default,
                   dpSgd: Boolean = false): Float = synchronized(lock) {
        // One lock for the epoch: a new version swapped in mid-epoch would mix two models.
        require(features.size == labels.size) { "one label per example" }
        val order = features.indices.shuffled(random)
        var lossSum = 0.0
        for (chunk in order.chunked(current.tflite.batchSize)) {
            val labelsOfChunk = IntArray(chunk.size) { labels[chunk[it]] }
            val loss = trainStep(chunk.map { features[it] }, labelsOfChunk, dpSgd)
            lossSum += loss.toDouble() * chunk.size
        }
        if (order.isEmpty()) Float.NaN else (lossSum / order.size).toFloat()
    }

    /** Mean loss and accuracy over the examples, without training. */
    fun evaluate(features: List<FloatArray>, labels: IntArray): Evaluation = synchronized(lock) {
        require(features.size == labels.size && features.isNotEmpty()) {
            "one label per example, and at least one example"
        }
        var lossSum = 0.0
        var correctSum = 0.0
        for (chunk in features.indices.chunked(current.tflite.batchSize)) {
            val batch = staticBatch(chunk.map { features[it] },
                                    IntArray(chunk.size) { labels[chunk[it]] })
            val loss = FloatBuffer.allocate(1)
            val correct = FloatBuffer.allocate(1)
            interpreter.runSignature(
                mapOf("features" to batch.features, "labels" to batch.labels, "mask" to batch.mask),
                mapOf("loss" to loss, "correct" to correct), "evaluate")
            lossSum += loss.get(0).toDouble() * chunk.size // loss is the mean of the real rows
            correctSum += correct.get(0).toDouble()       // correct is their count
        }
        val n = features.size
        Evaluation(loss = (lossSum / n).toFloat(), accuracy = (correctSum / n).toFloat(), examples = n)
    }

    /** Sets the step size and the proximal term `mu/2 * ||w - w_global||^2` (FedProx),
     *  which keeps a personal head near the global one. */
    fun configure(learningRate: Float, proximalMu: Float = 0f) = synchronized(lock) {
        val ok = IntBuffer.allocate(1)
        interpreter.runSignature(mapOf("learning_rate" to learningRate, "proximal_mu" to proximalMu),
                                 mapOf("ok" to ok), "configure")
    }

    /**
     * The trainable weights, by the names of `tflite.weight_names`. `unused` is an ignored
     * scalar: LiteRT's Java `runSignature` refuses a call with no inputs.
     */
    fun getWeights(): Map<String, FloatArray> = synchronized(lock) {
        val signature = current.tflite.signature("get_weights")
        val weights = current.tflite.weightNames.associateWith {
            FloatBuffer.allocate(signature.output(it).elementCount)
        }
        interpreter.runSignature(mapOf("unused" to 0), weights, "get_weights")
        weights.mapValues { (_, buffer) -> buffer.array() }
    }

    /**
     * Loads trainable weights. The artifact treats them as a new starting point: the
     * optimizer restarts and the proximal term is anchored on them.
     */
    fun setWeights(weights: Map<String, FloatArray>) = synchronized(lock) {
        val signature = current.tflite.signature("set_weights")
        val inputs: Map<String, Any> = current.tflite.weightNames.associateWith { name ->
            val values = weights[name] ?: throw IllegalArgumentException("no weights for $name")
            require(values.size == signature.input(name).elementCount) {
                "$name has ${values.size} values, the model needs ${signature.input(name).elementCount}"
            }
            FloatBuffer.wrap(values)
        }
        val ok = IntBuffer.allocate(1)
        interpreter.runSignature(inputs, mapOf("ok" to ok), "set_weights")
    }

    /**
     * Saves the personal weights to [file] atomically (android.util.AtomicFile: a crash
     * leaves the old file or the new one), tagged with the sha256 of the model they
     * belong to, so they are never restored into another version.
     */
    fun savePersonalWeights(file: File) {
        val (modelSha256, weights) = synchronized(lock) { current.tflite.sha256 to getWeights() }
        val body = ByteArrayOutputStream()
        DataOutputStream(body).run {
            writeInt(PERSONAL_MAGIC)
            writeUTF(modelSha256)
            writeInt(weights.size)
            for ((name, values) in weights) {
                writeUTF(name)
                writeInt(values.size)
                values.forEach { writeFloat(it) }
            }
            writeLong(CRC32().apply { update(body.toByteArray()) }.value)
        }
        val atomic = AtomicFile(file)
        val stream = atomic.startWrite()
        try {
            stream.write(body.toByteArray())
            atomic.finishWrite(stream) // fsyncs, then renames over the old file
        } catch (e: IOException) {
            atomic.failWrite(stream)
            throw e
        }
    }

    /**
     * Restores personal weights saved by [savePersonalWeights].
     *
     * @return false if there are none for this version (first run, or a new version
     *   arrived: personalise again from the new global weights); true once loaded.
     */
    fun restorePersonalWeights(file: File): Boolean {
        val bytes = try {
            AtomicFile(file).readFully()
        } catch (e: FileNotFoundException) {
            return false
        }
        if (bytes.size < 8) return false
        val body = bytes.copyOfRange(0, bytes.size - 8)
        val stored = DataInputStream(bytes.inputStream(bytes.size - 8, 8)).readLong()
        if (stored != CRC32().apply { update(body) }.value) return false // corrupt: personalise again
        val input = DataInputStream(body.inputStream())
        val (modelSha256, weights) = try {
            if (input.readInt() != PERSONAL_MAGIC) return false
            val sha256 = input.readUTF()
            sha256 to (0 until input.readInt()).associate {
                input.readUTF() to FloatArray(input.readInt()) { input.readFloat() }
            }
        } catch (e: IOException) {
            return false
        }
        synchronized(lock) {
            if (modelSha256 != current.tflite.sha256) return false
            setWeights(weights)
        }
        return true
    }

    /**
     * Swaps in a verified version: opens it first, so a model that does not load or lacks
     * a signature never replaces the running one, then closes the old interpreter. Personal
     * weights of the old version are not carried over (they would be on top of the old
     * global model); [restorePersonalWeights] refuses them by the model's sha256.
     */
    fun replaceWith(modelFile: File, manifest: ModelManifest) {
        val fresh = openChecked(modelFile, manifest, numThreads)
        val old = synchronized(lock) {
            val previous = interpreter
            interpreter = fresh
            current = manifest
            previous
        }
        old.close()
    }

    override fun close() = synchronized(lock) { interpreter.close() }

    /** The mean loss and accuracy of [evaluate]. */
    data class Evaluation(val loss: Float, val accuracy: Float, val examples: Int)

    private class StaticBatch(
        val features: Array<FloatArray>,
        val labels: IntArray,
        val mask: FloatArray,
    )

    /** The static batch `train` and `evaluate` take: real rows first, zero rows masked out. */
    private fun staticBatch(features: List<FloatArray>, labels: IntArray): StaticBatch {
        val size = current.tflite.batchSize
        val dim = current.tflite.signature("train").input("features").shape[1]
        require(features.size == labels.size && features.size in 1..size) {
            "a step takes 1 to $size examples, got ${features.size}"
        }
        val classes = current.classes.size
        return StaticBatch(
            features = Array(size) { row ->
                if (row < features.size) {
                    require(features[row].size == dim) {
                        "features have $dim values, got ${features[row].size}"
                    }
                    features[row]
                } else {
                    FloatArray(dim)
                }
            },
            labels = IntArray(size) { row ->
                if (row < labels.size) {
                    require(labels[row] in 0 until classes) {
                        "label ${labels[row]} is not a class index"
                    }
                    labels[row]
                } else {
                    0
                }
            },
            mask = FloatArray(size) { row -> if (row < features.size) 1f else 0f },
        )
    }

    /** [count] flat examples as the nested float array LiteRT resizes `x` from. */
    private fun examplesTensor(examples: FloatArray, count: Int): Any {
        val shape = current.inputShape
        require(count > 0 && examples.size == count * current.exampleSize) {
            "expected $count examples of shape $shape (${count * current.exampleSize} floats), " +
                "got ${examples.size}"
        }
        val dims = intArrayOf(count) + shape.toIntArray()
        val tensor = java.lang.reflect.Array.newInstance(Float::class.javaPrimitiveType!!, *dims)
        fillNested(tensor, examples, dims, 0, 0)
        return tensor
    }

    private fun fillNested(target: Any, flat: FloatArray, dims: IntArray, depth: Int, offset: Int): Int {
        if (depth == dims.size - 1) {
            System.arraycopy(flat, offset, target as FloatArray, 0, dims[depth])
            return offset + dims[depth]
        }
        var next = offset
        for (i in 0 until dims[depth]) {
            next = fillNested(java.lang.reflect.Array.get(target, i), flat, dims, depth + 1, next)
        }
        return next
    }

    companion object {
        private const val PERSONAL_MAGIC = 0x44545057 // "DTPW"

        /**
         * Opens a version that [VersionVerifier] accepted.
         *
         * @param numThreads interpreter threads; 1-2 keep a phone cool during training.
         */
        fun open(modelFile: File, manifest: ModelManifest, numThreads: Int = 2): DevicetuneModel =
            DevicetuneModel(openChecked(modelFile, manifest, numThreads), manifest, numThreads)

        /** An interpreter whose signatures are exactly the manifest's, else an exception. */
        private fun openChecked(modelFile: File, manifest: ModelManifest, numThreads: Int): Interpreter {
            val interpreter = Interpreter(modelFile, Interpreter.Options().setNumThreads(numThreads))
            try {
                val keys = interpreter.signatureKeys.toSet()
                for ((name, spec) in manifest.tflite.signatures) {
                    val inputs = spec.inputs.map { it.name }.toSet()
                    val outputs = spec.outputs.map { it.name }.toSet()
                    if (name !in keys ||
                        interpreter.getSignatureInputs(name).toSet() != inputs ||
                        interpreter.getSignatureOutputs(name).toSet() != outputs) {
                        throw InvalidModelException("model.tflite's '$name' signature is not the " +
                            "one manifest.json describes")
                    }
                }
            } catch (e: Exception) {
                interpreter.close()
                throw e
            }
            return interpreter
        }
    }
}
