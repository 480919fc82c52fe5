"""The Android artifact on every head/optimizer variant, in the real LiteRT interpreter."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from devicetune.device.batching import padded_batches
from devicetune.device.litert import LiteRTModel
from devicetune.errors import ExportError
from devicetune.export.tflite import check_builtin_ops, operator_names, signature_table
from devicetune.export.verify import tflite_parity
from devicetune.model import step
from tests.export.conftest import examples

VARIANTS = [
    dict(head="linear", optimizer="adam"),
    dict(head="linear", optimizer="sgd"),
    dict(head="mlp", optimizer="adam"),
    dict(head="mlp", optimizer="sgd"),
    dict(head="linear", optimizer="adam", tail=1),
    dict(head="mlp", optimizer="sgd", architecture="conv2d_small"),
]
IDS = ["-".join(str(v) for v in kw.values()) for kw in VARIANTS]


@pytest.mark.parametrize("kwargs", VARIANTS, ids=IDS)
def test_variant_is_builtin_only_and_matches_tensorflow(variant, kwargs) -> None:
    v = variant(**kwargs)
    ops = operator_names(v.flatbuffer)
    assert not [op for op in ops if op.startswith("CUSTOM")], ops
    lite = LiteRTModel(v.flatbuffer)
    assert lite.signatures == sorted(["configure", "embed", "evaluate", "get_weights",
                                      "infer", "set_weights", "train", "train_dp",
                                      "train_masked"])
    x, y = examples(v.model.input_shape)
    checks = {c.name: c for c in tflite_parity(v.program(), lite, x, y, steps=100, seed=1)}
    assert checks["tflite.infer"].max_abs_diff <= 1e-5
    assert checks["tflite.infer"].passed and checks["tflite.embed"].passed
    # 100 steps of partial batches; tolerance is 1e-4 relative to the weights' magnitude.
    assert checks["tflite.train.100_steps"].passed, checks["tflite.train.100_steps"]
    assert checks["tflite.train.proximal"].passed
    assert checks["tflite.evaluate.loss"].passed and checks["tflite.evaluate.correct"].passed
    assert checks["tflite.train_dp.loss"].passed
    assert checks["tflite.train_masked"].passed, checks["tflite.train_masked"]
    assert checks["tflite.weights_roundtrip"].max_abs_diff == 0.0


def test_training_actually_moves_the_weights_and_lowers_the_loss(variant) -> None:
    v = variant(head="mlp", optimizer="adam")
    lite = LiteRTModel(v.flatbuffer)
    x, y = examples(v.model.input_shape, n=16)
    features = lite.embed(x)
    before = lite.get_weights()
    batch = next(padded_batches(features[:8], y[:8].astype(np.int32), 8))
    losses = [lite.train(*batch) for _ in range(150)]
    after = lite.get_weights()
    assert losses[-1] < 0.6 * losses[0]
    assert any(not np.array_equal(before[k], after[k]) for k in before)


def test_parity_detects_an_artifact_that_differs(variant) -> None:
    v = variant(head="linear", optimizer="adam")
    lite = LiteRTModel(v.flatbuffer)
    weights = lite.get_weights()
    rng = np.random.default_rng(0)
    lite.set_weights({k: w + 0.05 * rng.normal(size=w.shape) for k, w in weights.items()})
    x, y = examples(v.model.input_shape)
    checks = {c.name: c for c in tflite_parity(v.program(), lite, x, y, steps=5, seed=1)}
    assert not checks["tflite.infer"].passed
    assert not checks["tflite.train.5_steps"].passed


@pytest.mark.parametrize("rate_factor", [0.5, 1.5])
def test_adams_half_step_tolerance_still_catches_a_wrong_rate(variant, rate_factor) -> None:
    """The Adam weights check allows half of one step; an artifact training at a rate
    half or one and a half times the TensorFlow step's must still fail it."""
    v = variant(head="linear", optimizer="adam")
    lite = LiteRTModel(v.flatbuffer)
    lite.configure(learning_rate=0.01 * rate_factor)
    x, y = examples(v.model.input_shape)
    checks = {c.name: c for c in tflite_parity(v.program(), lite, x, y, steps=20, seed=1)}
    assert checks["tflite.infer"].passed  # same weights before training
    train = checks["tflite.train.20_steps"]
    assert not train.passed and "half of one step" in train.note


def test_signature_table_records_names_shapes_and_dtypes(variant) -> None:
    v = variant(head="mlp", optimizer="adam")
    table = signature_table(v.flatbuffer)
    train = table["train"]
    assert [(t.name, t.shape, t.dtype) for t in train.inputs] == [
        ("features", [8, 24], "float32"), ("labels", [8], "int32"), ("mask", [8], "float32")]
    assert [t.name for t in table["evaluate"].outputs] == ["correct", "loss"]
    assert table["infer"].inputs[0].shape == [-1, 128, 9]  # any batch size
    assert [t.name for t in table["get_weights"].outputs] == sorted(
        ["dense0_kernel", "dense0_bias", "dense1_kernel", "dense1_bias"])
    # LiteRT's Java runSignature refuses a call without inputs: every signature has one.
    assert all(sig.inputs for sig in table.values())
    assert [(t.name, t.shape, t.dtype) for t in table["get_weights"].inputs] == [
        ("unused", [], "int32")]


def _tape_example_grads(model, weights: dict, features: np.ndarray, labels: np.ndarray):
    names = sorted(weights, key=lambda n: (int(n[5:n.index("_")]), n.endswith("bias")))
    params = [tf.Variable(weights[n]) for n in names]
    activations = [layer.activation for layer in model.layers]
    grads = []
    for i in range(len(features)):
        with tf.GradientTape() as tape:
            passed = step.forward(features[i:i + 1], params[0::2], params[1::2], activations)
            loss = -tf.math.log(passed.probabilities[0, int(labels[i])])
        grads.append(dict(zip(names, (g.numpy() for g in tape.gradient(loss, params)),
                              strict=True)))
    return grads


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_train_dp_without_noise_clips_every_example_to_the_bound(variant, head) -> None:
    clip = 0.5
    # SGD with learning rate 1 and no momentum: the weight change is minus the gradient.
    v = variant(head=head, optimizer="sgd", noise=0.0, clip=clip, learning_rate=1.0,
                momentum=0.0)
    lite = LiteRTModel(v.flatbuffer)
    x, y = examples(v.model.input_shape, n=24, seed=3)
    features, labels = lite.embed(x) * 3.0, y.astype(np.int32)  # larger norms
    start = lite.get_weights()
    expected = _tape_example_grads(v.model, start, features, labels)
    clipped_some = 0
    for i in range(len(features)):
        lite.set_weights(start)
        batch = next(padded_batches(features[i:i + 1], labels[i:i + 1], lite.batch_size))
        lite.train(*batch, private=True)
        after = lite.get_weights()
        update = {k: start[k] - after[k] for k in start}
        norm = np.sqrt(sum(np.sum(u.astype(np.float64) ** 2) for u in update.values()))
        raw = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in expected[i].values()))
        assert norm <= clip * (1 + 1e-5)
        np.testing.assert_allclose(norm, min(raw, clip), rtol=1e-4)
        # The direction is the example's own gradient.
        for k in update:
            np.testing.assert_allclose(update[k], expected[i][k] * min(1.0, clip / raw),
                                       atol=1e-5)
        clipped_some += raw > clip
    assert clipped_some >= 3  # the test exercises clipping, not only small gradients


def test_train_dp_noise_has_the_configured_std(variant) -> None:
    noise, clip, steps = 0.7, 0.5, 250
    noisy = variant(head="linear", optimizer="sgd", noise=noise, clip=clip,
                    learning_rate=1.0, momentum=0.0)
    clean = variant(head="linear", optimizer="sgd", noise=0.0, clip=clip,
                    learning_rate=1.0, momentum=0.0)
    noisy_lite, clean_lite = LiteRTModel(noisy.flatbuffer), LiteRTModel(clean.flatbuffer)
    x, y = examples(noisy.model.input_shape, n=8, seed=4)
    features = noisy_lite.embed(x)
    batch = next(padded_batches(features[:6], y[:6].astype(np.int32), 8))  # 6 real rows
    start = noisy_lite.get_weights()
    clean_lite.set_weights(start)
    clean_lite.train(*batch, private=True)
    clean_update = {k: start[k] - w for k, w in clean_lite.get_weights().items()}
    samples = []
    for _ in range(steps):
        noisy_lite.set_weights(start)
        noisy_lite.train(*batch, private=True)
        after = noisy_lite.get_weights()
        # update = (clipped sum + noise) / 6 real examples
        samples.append(np.concatenate([((start[k] - after[k]) - clean_update[k]).ravel() * 6
                                       for k in start]))
    samples = np.concatenate(samples)
    assert len(samples) > 30_000
    assert abs(samples.std() / (noise * clip) - 1.0) < 0.05
    assert abs(samples.mean()) < 0.02 * noise * clip


def test_each_interpreter_draws_fresh_noise(variant) -> None:
    v = variant(head="linear", optimizer="sgd", noise=1.0, learning_rate=1.0, momentum=0.0)
    x, y = examples(v.model.input_shape, n=8)
    updates = []
    for _ in range(2):
        lite = LiteRTModel(v.flatbuffer)
        batch = next(padded_batches(lite.embed(x), y.astype(np.int32), 8))
        lite.train(*batch, private=True)
        updates.append(lite.get_weights()["dense0_kernel"])
    # Two phones running the same artifact must not add the same noise.
    assert not np.allclose(updates[0], updates[1])


def _convert(function, select_tf_ops: bool = False, custom_ops: bool = False) -> bytes:
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], function)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS] + (
        [tf.lite.OpsSet.SELECT_TF_OPS] if select_tf_ops else [])
    converter.allow_custom_ops = custom_ops  # let the converter emit it, so we refuse it
    return converter.convert()


def test_flex_ops_are_refused_by_name() -> None:
    # ReluGrad is what a tape gradient through ReLU emits (DESIGN.md).
    @tf.function(input_signature=[tf.TensorSpec([4], tf.float32)])
    def relu_grad(x):
        return tf.raw_ops.ReluGrad(gradients=x, features=x)

    with pytest.raises(ExportError, match=r"Flex \(Select TF\) op.*FlexReluGrad"):
        check_builtin_ops(_convert(relu_grad, select_tf_ops=True))


def test_custom_ops_are_refused_by_name() -> None:
    @tf.function(input_signature=[tf.TensorSpec([4, 4], tf.float32)])
    def decompose(matrix):
        return tf.linalg.svd(matrix)[0]

    with pytest.raises(ExportError, match=r"custom op\(s\) Svd"):
        check_builtin_ops(_convert(decompose, custom_ops=True))
