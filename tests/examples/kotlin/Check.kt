// The test side of tests/examples/test_kotlin_client.py: runs the app's plain-JVM Kotlin
// (FederationClient, Safetensors, SeenRerank) against the real gateway and on inputs the
// test compares with Python. Not app code.
package devicetune.check

import com.example.devicetune.Eligibility
import com.example.devicetune.FederationClient
import com.example.devicetune.Instructions
import com.example.devicetune.Json
import com.example.devicetune.MemoryCredentials
import com.example.devicetune.PersonalHead
import com.example.devicetune.PersonalizationRecipe
import com.example.devicetune.ReportOutcome
import com.example.devicetune.Safetensors
import com.example.devicetune.Task
import com.example.devicetune.SeenRerank
import com.example.devicetune.Tensor
import com.example.devicetune.TrainResult
import com.example.devicetune.TrainingAdapter
import com.example.devicetune.VersionDecryption
import java.io.File
import java.security.KeyFactory
import java.security.interfaces.ECPublicKey
import java.security.spec.PKCS8EncodedKeySpec
import java.security.spec.X509EncodedKeySpec

/** Trains by adding `delta` to every weight: the test knows what the server must receive. */
class DeltaAdapter(private val delta: Float) : TrainingAdapter {
    var loaded = 0
    override fun load(model: ByteArray, sha256: String) { loaded = model.size }
    override fun train(start: Map<String, Tensor>, instructions: Instructions): TrainResult {
        require(loaded > 0) { "train before load" }
        val weights = start.mapValues { (_, t) ->
            Tensor(t.shape, FloatArray(t.data.size) { t.data[it] + delta }) }
        return TrainResult(weights, numExamples = 20, trainLoss = 0.5)
    }
}

fun federate(url: String, token: String, delta: Float, maxWaitS: Double) {
    val client = FederationClient(url, MemoryCredentials(), trace = { println("TRACE $it") })
    client.enroll(token)
    println("ENROLLED ${client.deviceId}")
    val adapter = DeltaAdapter(delta)
    while (true) {
        val wait = client.runCycle(adapter, Eligibility(true, true, true))
        if (client.lastReport != null) break
        Thread.sleep((Math.min(wait, maxWaitS) * 1000).toLong()) // honour "come back after"
    }
    // The answer to the report was "lost": the same body again is counted once.
    val (task, body) = client.lastReport!!
    val again = client.reportWithRetry(task, body)
    println("RESENT duplicate=${(again as ReportOutcome.Accepted).duplicate}")
}

/** Each input line: blend;seen;global;personal (comma-separated); each output line: the
 * combined probabilities then the predicted class. */
fun rerank(input: File, output: File) {
    val lines = input.readLines().filter { it.isNotBlank() }.map { line ->
        val (blend, seen, global, personal) = line.split(";")
        fun doubles(s: String) = s.split(",").map { it.toDouble() }.toDoubleArray()
        val seenClasses = if (seen.isEmpty()) IntArray(0) else
            seen.split(",").map { it.toInt() }.toIntArray()
        val g = doubles(global)
        val p = doubles(personal)
        val b = blend.toDouble()
        SeenRerank.combine(g, p, seenClasses, b).joinToString(",") + ";" +
            SeenRerank.predict(g, p, seenClasses, b)
    }
    output.writeText(lines.joinToString("\n"))
}

/** Each input line: gate;margin;total;blends;counts (rows split by '|');chooseEpochs; each output
 * line: epochs;blend. */
fun choose(input: File, output: File) {
    val lines = input.readLines().filter { it.isNotBlank() }.map { line ->
        val parts = line.split(";")
        val blends = parts[3].split(",").map { it.toDouble() }.toDoubleArray()
        val counts = parts[4].split("|").map { row ->
            row.split(",").map { it.toDouble() }.toDoubleArray() }.toTypedArray()
        val (epochs, blend) = SeenRerank.choose(counts, blends, parts[2].toInt(),
                                                parts[0].toBoolean(), parts[1].toDouble(),
                                                parts[5].toBoolean())
        "$epochs;$blend"
    }
    output.writeText(lines.joinToString("\n"))
}

/** Decrypt the encrypted version in `folder` with a PKCS#8 private key and an X.509 public
 * key (DER files) into `out`. */
fun decrypt(folder: File, privateDer: File, publicDer: File, out: File) {
    val factory = KeyFactory.getInstance("EC")
    val private = factory.generatePrivate(PKCS8EncodedKeySpec(privateDer.readBytes()))
    val public = factory.generatePublic(X509EncodedKeySpec(publicDer.readBytes())) as ECPublicKey
    val files = VersionDecryption(private, public)
        .decrypt(File(folder, "manifest.json").readBytes()) { File(folder, it).readBytes() }
    for ((name, data) in files) File(out, name).apply { parentFile.mkdirs() }.writeBytes(data)
    println("DECRYPTED ${files.keys.sorted().joinToString(",")}")
}

/** A dense softmax head on fixed features, trained by full-batch gradient descent in
 * doubles: deterministic, so the simulator's recipe can run the same head in numpy. */
class LinearHead(private val x: Array<DoubleArray>, private val y: IntArray,
                 private val classes: Int, private val rate: Double) : PersonalHead {
    private var w = DoubleArray(0)
    private var b = DoubleArray(0)

    override fun setWeights(weights: Map<String, FloatArray>) {
        w = weights.getValue("kernel").map { it.toDouble() }.toDoubleArray()
        b = weights.getValue("bias").map { it.toDouble() }.toDoubleArray()
    }

    override fun getWeights() = mapOf("kernel" to w.map { it.toFloat() }.toFloatArray(),
                                      "bias" to b.map { it.toFloat() }.toFloatArray())

    fun probabilities(row: DoubleArray): DoubleArray {
        val logits = DoubleArray(classes) { c -> b[c] + row.indices.sumByDouble { row[it] * w[it * classes + c] } }
        val top = logits.max()!!
        val exp = logits.map { Math.exp(it - top) }
        val sum = exp.sum()
        return exp.map { it / sum }.toDoubleArray()
    }

    override fun probabilities(rows: IntArray) = Array(rows.size) { probabilities(x[rows[it]]) }

    override fun trainEpoch(rows: IntArray) {
        val gw = DoubleArray(w.size)
        val gb = DoubleArray(classes)
        for (r in rows) {
            val p = probabilities(x[r])
            p[y[r]] -= 1.0
            for (k in x[r].indices) for (c in 0 until classes) gw[k * classes + c] += x[r][k] * p[c] / rows.size
            for (c in 0 until classes) gb[c] += p[c] / rows.size
        }
        for (i in w.indices) w[i] -= rate * gw[i]
        for (c in b.indices) b[c] -= rate * gb[c]
    }
}

/** The recipe on a JSON case (kernel, bias, x, y, test_x, test_y, classes, rate); prints
 * epochs, blend and the accuracy of the personalised predictions on the test rows. */
fun recipe(input: File) {
    val case = Json.parse(input.readText()) as Map<*, *>
    fun matrix(key: String) = (case[key] as List<*>).map { row ->
        (row as List<*>).map { (it as Double) }.toDoubleArray() }.toTypedArray()
    fun ints(key: String) = (case[key] as List<*>).map { (it as Double).toInt() }.toIntArray()
    fun floats(key: String) = (case[key] as List<*>).map { (it as Double).toFloat() }.toFloatArray()
    val classes = (case["classes"] as Double).toInt()
    val x = matrix("x")
    val y = ints("y")
    val head = LinearHead(x, y, classes, case["rate"] as Double)
    val global = mapOf("kernel" to floats("kernel"), "bias" to floats("bias"))
    val state = PersonalizationRecipe.personalize(head, y, global, "sha-of-global")
    val testX = matrix("test_x")
    val testY = ints("test_y")
    var right = 0
    for (i in testX.indices) {
        head.setWeights(global)
        val pGlobal = head.probabilities(testX[i])
        val predicted = if (state.personal == null) SeenRerank.predict(pGlobal, pGlobal, state.seen, 0.0) else {
            head.setWeights(state.personal!!)
            SeenRerank.predict(pGlobal, head.probabilities(testX[i]), state.seen, state.blend)
        }
        if (predicted == testY[i]) right++
    }
    println("RECIPE ${state.epochs};${state.blend};${right.toDouble() / testX.size}")
}

/** Download the round's model with a wrong expected sha256: the client must refuse it. */
fun badModel(url: String, token: String) {
    val client = FederationClient(url, MemoryCredentials())
    client.enroll(token)
    val task = Task("no-task", 0, "/v1/tasks/no-task/weights", "/v1/model/android", "0".repeat(64),
                    Instructions(1, 0.01, 0.0, false))
    client.downloadModel(task)
    println("ACCEPTED") // not reached when the client refuses
}

/** Decode a safetensors file; print its tensors' names and element counts. */
fun decode(file: File) {
    val decoded = Safetensors.decode(file.readBytes())
    println("DECODED " + decoded.tensors.entries.joinToString(",") { "${it.key}:${it.value.data.size}" })
}

fun main(args: Array<String>) {
    when (args[0]) {
        "federate" -> federate(args[1], args[2], args[3].toFloat(), args[4].toDouble())
        "rerank" -> rerank(File(args[1]), File(args[2]))
        "choose" -> choose(File(args[1]), File(args[2]))
        "recipe" -> recipe(File(args[1]))
        "bad-model" -> badModel(args[1], args[2])
        "decode" -> decode(File(args[1]))
        "decrypt" -> decrypt(File(args[1]), File(args[2]), File(args[3]), File(args[4]))
        else -> throw IllegalArgumentException("federate or rerank")
    }
}
