package com.example.devicetune

// The recipe (PersonalizationRecipe.kt, compiled and compared with the simulator) on the
// installed model: the kept examples, a PersonalHead over DevicetuneModel, and the rule
// (SeenRerank) at prediction time. Needs the Android SDK (DevicetuneModel): checked by
// contract, not compiled here.

/**
 * The examples the recipe personalises from, kept on the phone (app-private storage) so a
 * new version can be personalised again: raw examples for `infer`, their embeddings for
 * `train`. Bounded: the oldest go first. Saving them across app restarts (an AtomicFile,
 * as DevicetuneModel.savePersonalWeights does) is the app's; this example keeps them in memory.
 */
class KeptExamples(val exampleSize: Int, val capacity: Int = 2000) {
    val examples = ArrayList<FloatArray>()
    val labels = ArrayList<Int>()

    fun add(example: FloatArray, label: Int) {
        require(example.size == exampleSize) { "an example has $exampleSize values" }
        if (examples.size == capacity) { examples.removeAt(0); labels.removeAt(0) }
        examples.add(example)
        labels.add(label)
    }
}

/** set_weights / get_weights / train on cached embeddings / infer, through [model]. */
class DevicetunePersonalHead(private val model: DevicetuneModel, private val kept: KeptExamples) : PersonalHead {
    private val features: List<FloatArray> = kept.examples.map { example ->
        model.embed(example, 1)[0] // the backbone is frozen: embed once per example
    }
    private val labels = kept.labels.toIntArray()

    override fun setWeights(weights: Map<String, FloatArray>) = model.setWeights(weights)
    override fun getWeights(): Map<String, FloatArray> = model.getWeights()

    override fun trainEpoch(rows: IntArray) {
        model.trainEpoch(rows.map { features[it] }, IntArray(rows.size) { labels[rows[it]] })
    }

    override fun probabilities(rows: IntArray): Array<DoubleArray> {
        val flat = FloatArray(rows.size * kept.exampleSize)
        rows.forEachIndexed { i, row -> kept.examples[row].copyInto(flat, i * kept.exampleSize) }
        return model.infer(flat, rows.size).map { p -> DoubleArray(p.size) { p[it].toDouble() } }
            .toTypedArray()
    }
}

/**
 * Keeps the personal state current: after [ModelUpdater] installs a version, call [refresh];
 * the state of the old global model is dropped and the recipe runs again from the new
 * global weights with the kept examples (see PersonalizationRecipe.kt for why not carry
 * the personal layer over). [predict] applies the seen-class re-ranking.
 */
class Personalization(private val model: DevicetuneModel, private val kept: KeptExamples,
                      private val learningRate: Float) {
    private var state: PersonalState? = null

    /** Personalise again unless the state was made from the model now installed. */
    fun refresh(globalSha256: String) {
        if (PersonalizationRecipe.current(state, globalSha256) != null) return
        val global = model.getWeights()
        model.configure(learningRate)
        state = PersonalizationRecipe.personalize(
            DevicetunePersonalHead(model, kept), kept.labels.toIntArray(), global, globalSha256)
        model.setWeights(global)
    }

    /** The class index to show for one example: the global model's where it predicts an
     *  unseen class or the gate kept it; else the re-ranked best seen class. */
    fun predict(example: FloatArray): Int {
        val current = state
        val global = model.infer(example, 1)[0].map { it.toDouble() }.toDoubleArray()
        val personal = current?.personal ?: return SeenRerank.predict(global, global, IntArray(0), 0.0)
        val globalWeights = model.getWeights()
        model.setWeights(personal)
        val mine = try {
            model.infer(example, 1)[0].map { it.toDouble() }.toDoubleArray()
        } finally {
            model.setWeights(globalWeights)
        }
        return SeenRerank.predict(global, mine, current.seen, current.blend)
    }
}
