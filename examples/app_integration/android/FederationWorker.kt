package com.example.devicetune

import android.content.Context
import android.security.keystore.KeyGenParameterSpec
import android.security.keystore.KeyProperties
import android.util.Base64
import androidx.work.BackoffPolicy
import androidx.work.Constraints
import androidx.work.CoroutineWorker
import androidx.work.ExistingWorkPolicy
import androidx.work.NetworkType
import androidx.work.OneTimeWorkRequestBuilder
import androidx.work.WorkManager
import androidx.work.WorkerParameters
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.withContext
import java.io.File
import java.io.IOException
import java.security.KeyStore
import java.util.concurrent.TimeUnit
import javax.crypto.Cipher
import javax.crypto.KeyGenerator
import javax.crypto.SecretKey
import javax.crypto.spec.GCMParameterSpec

// The Android half of federated rounds: WorkManager runs FederationClient's cycle while the
// phone charges, is idle and on an unmetered network; the credential is encrypted under a
// key in the Android Keystore; training runs the artifact's signatures with LiteRT.
// Needs the Android SDK: checked by contract (tests/examples/test_app_integration.py,
// test_federation_contract.py), not compiled here. FederationClient.kt, Safetensors.kt,
// Json.kt and SeenRerank.kt are plain JVM and compiled and run by the tests.

/** The credential encrypted with an AES-256-GCM key that never leaves the Keystore. */
class KeystoreCredentials(context: Context) : CredentialStore {
    private val preferences = context.getSharedPreferences("devicetune.federation", Context.MODE_PRIVATE)

    private fun key(): SecretKey {
        val keyStore = KeyStore.getInstance("AndroidKeyStore").apply { load(null) }
        (keyStore.getKey(ALIAS, null) as SecretKey?)?.let { return it }
        val generator = KeyGenerator.getInstance(KeyProperties.KEY_ALGORITHM_AES, "AndroidKeyStore")
        generator.init(KeyGenParameterSpec.Builder(
            ALIAS, KeyProperties.PURPOSE_ENCRYPT or KeyProperties.PURPOSE_DECRYPT)
            .setBlockModes(KeyProperties.BLOCK_MODE_GCM)
            .setEncryptionPaddings(KeyProperties.ENCRYPTION_PADDING_NONE)
            .setKeySize(256)
            .build())
        return generator.generateKey()
    }

    override fun load(): Pair<Int, String>? {
        val id = preferences.getInt(DEVICE_ID, -1)
        val sealed = preferences.getString(CREDENTIAL, null) ?: return null
        if (id < 0) return null
        val bytes = Base64.decode(sealed, Base64.NO_WRAP)
        val cipher = Cipher.getInstance("AES/GCM/NoPadding")
        cipher.init(Cipher.DECRYPT_MODE, key(), GCMParameterSpec(128, bytes, 0, 12))
        return id to String(cipher.doFinal(bytes, 12, bytes.size - 12))
    }

    override fun save(deviceId: Int, credential: String) {
        val cipher = Cipher.getInstance("AES/GCM/NoPadding")
        cipher.init(Cipher.ENCRYPT_MODE, key()) // the Keystore picks the nonce
        val sealed = cipher.iv + cipher.doFinal(credential.toByteArray())
        preferences.edit().putInt(DEVICE_ID, deviceId)
            .putString(CREDENTIAL, Base64.encodeToString(sealed, Base64.NO_WRAP)).apply()
    }

    companion object {
        private const val ALIAS = "devicetune-federation-credential"
        private const val DEVICE_ID = "device_id"
        private const val CREDENTIAL = "credential"
    }
}

/**
 * Trains a round's task with the installed model's signatures (`set_weights`, `configure`,
 * `train` / `train_dp`, `get_weights`, through [DevicetuneModel]) on a training copy, so
 * the model the app predicts with is never touched by a round.
 *
 * @param features the local examples' embeddings (`DevicetuneModel.embed`), kept on the phone.
 */
class LiteRtTrainingAdapter(
    private val manifest: ModelManifest,
    private val scratch: File,
    private val features: List<FloatArray>,
    private val labels: IntArray,
) : TrainingAdapter {
    private var model: DevicetuneModel? = null

    override fun load(model: ByteArray, sha256: String) {
        // The federation trains the version the app runs: a newer one is installed by
        // ModelUpdater (verified and signed) before the device takes part again.
        if (sha256 != manifest.tflite.sha256) throw IOException("the round's model is not the installed version")
        if (this.model != null) return
        val file = File(scratch, "federation-${manifest.tflite.sha256}.tflite")
        file.writeBytes(model)
        this.model = DevicetuneModel.open(file, manifest, numThreads = 1)
    }

    override fun train(start: Map<String, Tensor>, instructions: Instructions): TrainResult {
        val m = model ?: throw IllegalStateException("train before load")
        m.setWeights(start.mapValues { it.value.data })
        m.configure(instructions.learningRate.toFloat(), instructions.proximalMu.toFloat())
        var loss = Float.NaN
        repeat(instructions.localEpochs) {
            loss = m.trainEpoch(features, labels, dpSgd = instructions.dpSgd)
        }
        val shapes = manifest.tflite.signature("get_weights").outputs.associate { it.name to it.shape }
        val weights = m.getWeights().mapValues { (name, values) ->
            Tensor(shapes.getValue(name).toIntArray(), values) }
        val batches = (labels.size + manifest.tflite.batchSize - 1) / manifest.tflite.batchSize
        return TrainResult(weights, labels.size, loss.toDouble(),
                           dpSteps = if (instructions.dpSgd) instructions.localEpochs * batches else null)
    }
}

/**
 * One federation cycle per run: check in, and with a task download, train and report.
 * Then it enqueues itself after the server's "come back after"; a failure (no network,
 * 5xx) returns `Result.retry()`, which WorkManager backs off exponentially.
 */
class FederationWorker(context: Context, params: WorkerParameters) : CoroutineWorker(context, params) {
    override suspend fun doWork(): Result = withContext(Dispatchers.IO) {
        val app = applicationContext as FederatedApp
        val client = FederationClient(app.gatewayUrl, KeystoreCredentials(applicationContext))
        try {
            client.enroll(app.enrollmentToken) // no-op once enrolled
            client.modelVersion = app.installedVersion()
            val wait = client.runCycle(app.trainingAdapter(),
                                       Eligibility(charging = true, unmetered = true, idle = true))
            schedule(applicationContext, wait.toLong())
            Result.success()
        } catch (e: ProtocolException) {
            if (e.status >= 500) Result.retry() else Result.failure() // 4xx: a bug or a revoked device
        } catch (e: IOException) {
            Result.retry()
        }
    }

    companion object {
        const val WORK_NAME = "devicetune-federation"

        /** The constraints the check-in reports as eligibility: WorkManager runs the worker
         *  only when they hold. */
        fun schedule(context: Context, afterSeconds: Long) {
            val constraints = Constraints.Builder()
                .setRequiresCharging(true)
                .setRequiresDeviceIdle(true)
                .setRequiredNetworkType(NetworkType.UNMETERED)
                .build()
            val request = OneTimeWorkRequestBuilder<FederationWorker>()
                .setConstraints(constraints)
                .setInitialDelay(afterSeconds, TimeUnit.SECONDS)
                .setBackoffCriteria(BackoffPolicy.EXPONENTIAL, 30, TimeUnit.SECONDS)
                .build()
            WorkManager.getInstance(context).enqueueUniqueWork(WORK_NAME, ExistingWorkPolicy.REPLACE, request)
        }
    }
}

/** What the app's Application gives the worker. */
interface FederatedApp {
    val gatewayUrl: String
    val enrollmentToken: String
    fun installedVersion(): Int?
    fun trainingAdapter(): TrainingAdapter
}
