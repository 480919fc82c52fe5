// Plain JVM (no android.* imports): compiled and run by tests/examples/test_kotlin_client.py,
// which runs it and the simulator's own `_seen_rerank` (src/devicetune/fleet/personalize.py)
// on the same data with the same deterministic head and compares what they choose.
//
// The personalization the simulator measures, step for step (method "seen_rerank"):
//  1. blend = 0.5 + half the global model's error on the device's past ("global_error");
//  2. blocked cross-validation folds over the kept examples (blocks of 8, every 5th block
//     held out, shifted per fold); per fold, from the global weights, train `epochs`
//     epochs on the rest and count, after each, the held-out examples the re-ranking rule
//     (SeenRerank) gets right with the fold's seen classes, against the global model;
//  3. the gate: keep the global model unless the best (epochs, blend) beats it by
//     `gateMargin` binomial standard errors (SeenRerank.choose);
//  4. otherwise train the chosen epochs on all kept examples from the global weights; the
//     personal weights, the blend and the seen classes make the personal state.
//
// Personal weights survive a new version by re-personalisation: the state names the global
// model it was made from (sha256); on a new version the app runs `personalize` again from
// the new global weights with the examples it kept. Why not carry the personal layer over
// when shapes match: the blend and the gate were judged against the *old* global model, so
// a carried head comes with no guarantee against the new one (it may undo what the fleet
// learned), and the simulator's measured gain is for personalisation from the current
// global model, which is what this does.
package com.example.devicetune

/** What the recipe needs of the model (on Android, DevicetuneModel's signatures over the
 * kept examples' embeddings: set_weights, get_weights, train, infer). */
interface PersonalHead {
    fun setWeights(weights: Map<String, FloatArray>)
    fun getWeights(): Map<String, FloatArray>

    /** One epoch of training on these rows of the kept examples. */
    fun trainEpoch(rows: IntArray)

    /** The softmax outputs for these rows with the weights set now. */
    fun probabilities(rows: IntArray): Array<DoubleArray>
}

/** fleet.personalization's defaults for seen_rerank (src/devicetune/config/fleet.py); the
 * contract test checks them against the config's. */
object RecipeDefaults {
    const val EPOCHS = 20
    const val CHOOSE_EPOCHS = false
    const val VALIDATION_FRACTION = 0.2
    const val GATE = true
    const val GATE_MARGIN = 1.0
    const val FOLD_BLOCK = 8
}

/** The personal model: null weights (blend 0) means the gate kept the global model. */
class PersonalState(val globalSha256: String, val personal: Map<String, FloatArray>?,
                    val blend: Double, val seen: IntArray, val epochs: Int)

object PersonalizationRecipe {
    /** (fit rows, validation rows) per fold, blocks of `block` consecutive examples. */
    fun validationFolds(n: Int, fraction: Double,
                        block: Int = RecipeDefaults.FOLD_BLOCK): List<Pair<IntArray, IntArray>> {
        if (fraction <= 0 || n < 2 * block) return emptyList()
        val every = Math.max(2, Math.rint(1 / fraction).toInt()) // Python's round: half to even
        val folds = ArrayList<Pair<IntArray, IntArray>>()
        for (f in 0 until every) {
            val held = (0 until n).filter { (it / block) % every == f }.toIntArray()
            val fit = (0 until n).filter { (it / block) % every != f }.toIntArray()
            if (held.isNotEmpty() && fit.isNotEmpty()) folds.add(fit to held)
        }
        return folds
    }

    /** The personal state for `global` (named by its sha256) from the kept examples. */
    fun personalize(head: PersonalHead, labels: IntArray, global: Map<String, FloatArray>,
                    globalSha256: String, epochs: Int = RecipeDefaults.EPOCHS,
                    chooseEpochs: Boolean = RecipeDefaults.CHOOSE_EPOCHS,
                    validationFraction: Double = RecipeDefaults.VALIDATION_FRACTION,
                    gate: Boolean = RecipeDefaults.GATE,
                    gateMargin: Double = RecipeDefaults.GATE_MARGIN): PersonalState {
        val n = labels.size
        val all = IntArray(n) { it }
        val seen = labels.distinct().sorted().toIntArray()
        head.setWeights(global)
        val past = head.probabilities(all)
        val error = all.count { argmax(past[it]) != labels[it] }.toDouble() / Math.max(n, 1)
        val blends = doubleArrayOf(0.0, SeenRerank.blendFromError(error))
        val correct = Array(epochs + 1) { DoubleArray(blends.size) }
        var total = 0
        val folds = validationFolds(n, validationFraction)
        for ((fit, held) in folds) {
            val fitSeen = fit.map { labels[it] }.distinct().sorted().toIntArray()
            head.setWeights(global)
            val pGlobal = head.probabilities(held)
            record(correct[0], blends, pGlobal, pGlobal, held, labels, fitSeen)
            total += held.size
            for (epoch in 1..epochs) {
                head.trainEpoch(fit)
                record(correct[epoch], blends, pGlobal, head.probabilities(held), held, labels, fitSeen)
            }
        }
        val (chosen, blend) = when {
            folds.isNotEmpty() -> SeenRerank.choose(correct, blends, total, gate, gateMargin, chooseEpochs)
            gate -> 0 to 0.0 // nothing to validate on: the gate keeps the global model
            else -> epochs to blends.max()!!
        }
        head.setWeights(global)
        if (chosen == 0 || blend == 0.0) return PersonalState(globalSha256, null, 0.0, seen, 0)
        repeat(chosen) { head.trainEpoch(all) }
        val personal = head.getWeights()
        head.setWeights(global)
        return PersonalState(globalSha256, personal, blend, seen, chosen)
    }

    /** The state if it was made from this global model; null: personalise again. */
    fun current(state: PersonalState?, globalSha256: String): PersonalState? =
        state?.takeIf { it.globalSha256 == globalSha256 }

    private fun record(counts: DoubleArray, blends: DoubleArray, pGlobal: Array<DoubleArray>,
                       pPersonal: Array<DoubleArray>, rows: IntArray, labels: IntArray,
                       seen: IntArray) {
        for (b in blends.indices) {
            counts[b] += rows.indices.count {
                SeenRerank.predict(pGlobal[it], pPersonal[it], seen, blends[b]) == labels[rows[it]]
            }.toDouble()
        }
    }

    private fun argmax(p: DoubleArray): Int {
        var best = 0
        for (i in p.indices) if (p[i] > p[best]) best = i
        return best
    }
}
