// Plain JVM (no android.* imports): compiled and run by tests/examples/test_kotlin_client.py
// against the real gateway. The Android parts (WorkManager, Keystore, LiteRT) are in
// FederationWorker.kt.
//
// devicetune's device protocol v1 (docs/gateway-openapi.json), step for step as the
// reference phone (examples/reference_phone/phone.py) speaks it:
//   enroll once -> check in -> (no task: come back after retry_after_s)
//   -> download the model (sha256 checked) -> download the start weights (safetensors)
//   -> train through a TrainingAdapter -> report the weights (safetensors) -> check in ...
// A report whose answer was lost is sent again with the same body: the server counts an
// accepted report once (duplicate = true) and answers 404/410 when its round is gone.
package com.example.devicetune

import java.io.IOException
import java.net.HttpURLConnection
import java.net.URL
import java.security.MessageDigest

class Instructions(val localEpochs: Int, val learningRate: Double, val proximalMu: Double,
                   val dpSgd: Boolean)

class Task(val taskId: String, val round: Int, val weightsUrl: String, val modelUrl: String,
           val modelSha256: String, val instructions: Instructions)

class CheckIn(val task: Task?, val retryAfterS: Double)

class Eligibility(val charging: Boolean, val unmetered: Boolean, val idle: Boolean)

/** What training produced: the new weights and the report's metadata. */
class TrainResult(val weights: Map<String, Tensor>, val numExamples: Int, val trainLoss: Double,
                  val dpSteps: Int? = null)

/** How the app trains: on Android `LiteRtTrainingAdapter` (FederationWorker.kt) runs the
 * artifact's signatures; a test passes its own. */
interface TrainingAdapter {
    /** The round's model file (already checked against the task's sha256). */
    fun load(model: ByteArray, sha256: String)

    /** Local epochs from `start`, as `instructions` say. */
    fun train(start: Map<String, Tensor>, instructions: Instructions): TrainResult
}

/** Where the credential lives: the Android Keystore (FederationWorker.kt), or memory. */
interface CredentialStore {
    fun load(): Pair<Int, String>?
    fun save(deviceId: Int, credential: String)
}

class MemoryCredentials : CredentialStore {
    private var held: Pair<Int, String>? = null
    override fun load() = held
    override fun save(deviceId: Int, credential: String) { held = deviceId to credential }
}

class ProtocolException(val status: Int, message: String) : IOException(message)

sealed class ReportOutcome {
    class Accepted(val duplicate: Boolean) : ReportOutcome()
    /** 404 or 410: the round is gone or closed; check in again. */
    class RoundGone(val status: Int) : ReportOutcome()
}

class FederationClient(
    private val baseUrl: String,
    private val credentials: CredentialStore,
    private val platform: String = "android",
    /** Each request, as "METHOD /path -> status": the test compares it with the phone's. */
    private val trace: (String) -> Unit = {},
    private val timeoutMs: Int = 60_000
) {
    var modelVersion: Int? = null

    /** The last report sent (its task and body), kept until the next one. */
    var lastReport: Pair<Task, ByteArray>? = null
        private set

    val deviceId: Int? get() = credentials.load()?.first

    fun enroll(enrollmentToken: String) {
        if (credentials.load() != null) return // once per install
        val answer = json(request("POST", "/v1/enroll",
            Json.write(mapOf("enrollment_token" to enrollmentToken, "platform" to platform))))
        credentials.save((answer.field("device_id") as Double).toInt(),
                         answer.field("credential") as String)
    }

    fun checkIn(eligibility: Eligibility): CheckIn {
        val answer = json(request("POST", "/v1/checkin", Json.write(mapOf(
            "platform" to platform, "model_version" to modelVersion,
            "charging" to eligibility.charging, "unmetered" to eligibility.unmetered,
            "idle" to eligibility.idle))))
        val task = answer.field("task") as Map<*, *>?
        return CheckIn(task?.let(::parseTask), answer.field("retry_after_s") as Double)
    }

    fun downloadModel(task: Task): ByteArray {
        val data = request("GET", task.modelUrl, null)
        val digest = MessageDigest.getInstance("SHA-256").digest(data)
            .joinToString("") { String.format("%02x", it) }
        if (digest != task.modelSha256) throw IOException("the model does not match the task's sha256")
        return data
    }

    fun downloadWeights(task: Task): Map<String, Tensor> =
        Safetensors.decode(request("GET", task.weightsUrl, null)).tensors

    fun report(task: Task, body: ByteArray): ReportOutcome = try {
        val answer = json(request("POST", "/v1/tasks/${task.taskId}/report", body,
                                  "application/octet-stream"))
        ReportOutcome.Accepted(answer.field("duplicate") as Boolean)
    } catch (e: ProtocolException) {
        if (e.status == 404 || e.status == 410) ReportOutcome.RoundGone(e.status) else throw e
    }

    /** The report, sent again with the same body while the server cannot be reached or
     * fails (5xx): idempotent, so a lost answer costs nothing. Exponential backoff. */
    fun reportWithRetry(task: Task, body: ByteArray, attempts: Int = 4,
                        firstWaitMs: Long = 500): ReportOutcome {
        var wait = firstWaitMs
        for (attempt in 1..attempts) {
            try {
                return report(task, body)
            } catch (e: IOException) {
                if (e is ProtocolException && e.status < 500) throw e
                if (attempt == attempts) throw e
                Thread.sleep(wait)
                wait *= 2
            }
        }
        throw IllegalStateException("unreachable")
    }

    /** The report body: the weights in safetensors, with the metadata the server reads. */
    fun reportBody(result: TrainResult): ByteArray {
        val metadata = linkedMapOf("num_examples" to result.numExamples.toString(),
                                   "train_loss" to result.trainLoss.toString())
        if (result.dpSteps != null) metadata["dp_steps"] = result.dpSteps.toString()
        return Safetensors.encode(result.weights, metadata)
    }

    /** One cycle: check in; with a task, train and report. Returns how long to wait before
     * the next check-in ("come back after"; 0 after a report). */
    fun runCycle(adapter: TrainingAdapter, eligibility: Eligibility): Double {
        val answer = checkIn(eligibility)
        val task = answer.task ?: return answer.retryAfterS
        adapter.load(downloadModel(task), task.modelSha256)
        val start = downloadWeights(task)
        val result = adapter.train(start, task.instructions)
        val body = reportBody(result)
        lastReport = task to body
        reportWithRetry(task, body)
        return 0.0
    }

    // ------------------------------------------------------------------ HTTP

    private fun request(method: String, path: String, body: Any?,
                        contentType: String = "application/json"): ByteArray {
        val connection = URL(baseUrl.trimEnd('/') + path).openConnection() as HttpURLConnection
        try {
            connection.requestMethod = method
            connection.connectTimeout = timeoutMs
            connection.readTimeout = timeoutMs
            credentials.load()?.let {
                connection.setRequestProperty("Authorization", "Bearer ${it.second}")
            }
            if (body != null) {
                val bytes = if (body is ByteArray) body else (body as String).toByteArray()
                connection.doOutput = true
                connection.setRequestProperty("Content-Type", contentType)
                connection.setFixedLengthStreamingMode(bytes.size) // Content-Length
                connection.outputStream.use { it.write(bytes) }
            }
            val status = connection.responseCode
            trace("$method $path -> $status")
            if (status >= 400) {
                val detail = connection.errorStream?.use { String(it.readBytes()) } ?: ""
                throw ProtocolException(status, "$method $path: HTTP $status $detail")
            }
            return connection.inputStream.use { it.readBytes() }
        } finally {
            connection.disconnect()
        }
    }

    private fun json(bytes: ByteArray): Map<*, *> = Json.parse(String(bytes)) as Map<*, *>

    private fun parseTask(task: Map<*, *>): Task {
        val i = task.field("instructions") as Map<*, *>
        return Task(task.field("task_id") as String, (task.field("round") as Double).toInt(),
                    task.field("weights_url") as String, task.field("model_url") as String,
                    task.field("model_sha256") as String,
                    Instructions((i.field("local_epochs") as Double).toInt(),
                                 i.field("learning_rate") as Double,
                                 i.field("proximal_mu") as Double, i.field("dp_sgd") as Boolean))
    }
}

/** A field of a protocol answer (the contract test checks each name against the OpenAPI
 * document). */
fun Map<*, *>.field(name: String): Any? {
    if (!containsKey(name)) throw IOException("the answer has no '$name'")
    return get(name)
}
