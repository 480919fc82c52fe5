// Plain JVM (no android.* imports): compiled and run by tests/examples/test_kotlin_client.py,
// which compares it with devicetune.fleet.personalize_seen on random inputs.
//
// The personalization recipe the simulator measures (fleet.personalization.method =
// "seen_rerank"): the personal head only re-ranks among the classes this device has seen,
// and only where the global model's top class is one of them. Every unseen class keeps
// its global probability, so a future example of a class the past lacks is predicted
// exactly as the global model predicts it. An app runs `infer` with the global weights
// and with the personal ones (`set_weights` between) and combines the two outputs here.
package com.example.devicetune

object SeenRerank {
    /** The personal output's weight when fleet.personalization.blend = "global_error". */
    const val AUTO_SLOPE = 0.5

    /** One half where the global model is right on every past example, growing to 1 as it
     * fails on the device's own past (`error` in [0, 1]). */
    fun blendFromError(error: Double): Double = Math.min(1.0, 0.5 + AUTO_SLOPE * error)

    private fun argmax(p: DoubleArray): Int {
        var best = 0
        for (i in p.indices) if (p[i] > p[best]) best = i
        return best
    }

    /** The personalised probabilities of one example: the global ones where the global top
     * class is unseen; elsewhere the global mass on the seen classes, spread by
     * (1 - blend) * global + blend * personal (each renormalised over the seen classes). */
    fun combine(global: DoubleArray, personal: DoubleArray, seen: IntArray,
                blend: Double): DoubleArray {
        val out = global.copyOf()
        if (blend == 0.0 || seen.isEmpty() || argmax(global) !in seen) return out
        val mass = seen.sumByDouble { global[it] }
        val personalMass = seen.sumByDouble { personal[it] }
        for (c in seen) {
            val mix = (1 - blend) * global[c] / Math.max(mass, 1e-30) +
                blend * personal[c] / Math.max(personalMass, 1e-30)
            out[c] = mass * mix
        }
        return out
    }

    /** The class the app shows: the global top class where it is unseen, else the best
     * seen class of the combined output. */
    fun predict(global: DoubleArray, personal: DoubleArray, seen: IntArray, blend: Double): Int {
        val top = argmax(global)
        if (blend == 0.0 || seen.isEmpty() || top !in seen) return top
        val combined = combine(global, personal, seen, blend)
        var best = seen[0]
        for (c in seen) if (combined[c] > combined[best]) best = c
        return best
    }

    /** The gate over cross-validated counts: `correct[e][b]` examples right after `e`
     * epochs with `blends[b]` (`blends[0]` = 0, `e` = 0: the global model). Returns
     * (epochs, blend), (0, 0.0) when no pair beats the global model by `margin` binomial
     * standard errors (SeenRerankSearch.best in personalize_seen.py); `chooseEpochs` false:
 * the last epoch count only. */
    fun choose(correct: Array<DoubleArray>, blends: DoubleArray, total: Int, gate: Boolean,
               margin: Double, chooseEpochs: Boolean = true): Pair<Int, Double> {
        val baseline = correct[0][0]
        var best: Triple<Double, Int, Int>? = null // (score, epochs, blend index)
        val first = if (chooseEpochs) 1 else correct.size - 1 // else: the last epoch count only
        for (e in first until correct.size) for (b in 1 until blends.size) {
            val s = correct[e][b]
            val better = best == null || s > best.first ||
                (s == best.first && (e < best.second || (e == best.second && b < best.third)))
            if (better) best = Triple(s, e, b)
        }
        if (best == null) return 0 to 0.0
        if (gate) {
            val n = Math.max(total, 1).toDouble()
            val p = Math.min(Math.max(baseline / n, 1.0 / n), 1.0 - 1.0 / n)
            if (best.first - baseline <= margin * Math.sqrt(n * p * (1 - p))) return 0 to 0.0
        }
        return best.second to blends[best.third]
    }
}
