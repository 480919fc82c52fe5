// The test side of tests/examples/test_kotlin_client.py: runs the app's plain-JVM Kotlin
// (FederationClient, Safetensors, SeenRerank) against the real gateway and on inputs the
// test compares with Python. Not app code.
package devicetune.check

import com.example.devicetune.Eligibility
import com.example.devicetune.FederationClient
import com.example.devicetune.Instructions
import com.example.devicetune.MemoryCredentials
import com.example.devicetune.ReportOutcome
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

/** Each input line: gate;margin;total;blends;counts (rows split by '|'); each output
 * line: epochs;blend. */
fun choose(input: File, output: File) {
    val lines = input.readLines().filter { it.isNotBlank() }.map { line ->
        val parts = line.split(";")
        val blends = parts[3].split(",").map { it.toDouble() }.toDoubleArray()
        val counts = parts[4].split("|").map { row ->
            row.split(",").map { it.toDouble() }.toDoubleArray() }.toTypedArray()
        val (epochs, blend) = SeenRerank.choose(counts, blends, parts[2].toInt(),
                                                parts[0].toBoolean(), parts[1].toDouble())
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

fun main(args: Array<String>) {
    when (args[0]) {
        "federate" -> federate(args[1], args[2], args[3].toFloat(), args[4].toDouble())
        "rerank" -> rerank(File(args[1]), File(args[2]))
        "choose" -> choose(File(args[1]), File(args[2]))
        "decrypt" -> decrypt(File(args[1]), File(args[2]), File(args[3]), File(args[4]))
        else -> throw IllegalArgumentException("federate or rerank")
    }
}
