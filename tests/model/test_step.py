"""The closed-form head math against TensorFlow's own autodiff and Keras' optimizers."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from devicetune.config import HeadLayers, OptimizerSpec
from devicetune.model import step
from devicetune.model.head import init_head
from devicetune.model.optimizers import make_optimizer

B, F, C = 8, 12, 5


def head_layers(kind: str):
    return init_head(F, HeadLayers(type=kind, hidden_units=7), C, seed=1)


def tape_per_example_grads(layers, features, labels):
    """Each example's gradient of its own cross-entropy, by GradientTape."""
    params = [tf.Variable(t) for layer in layers for t in (layer.kernel, layer.bias)]
    grads = []
    for i in range(len(features)):
        with tf.GradientTape() as tape:
            passed = step.forward(features[i:i + 1], params[0::2], params[1::2],
                                  [layer.activation for layer in layers])
            loss = -tf.math.log(passed.probabilities[0, labels[i]])
        grads.append([g.numpy() for g in tape.gradient(loss, params)])
    return grads


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_closed_form_gradients_equal_autodiff(kind: str) -> None:
    rng = np.random.default_rng(0)
    layers = head_layers(kind)
    features = rng.normal(size=(B, F)).astype(np.float32)
    labels = rng.integers(0, C, B).astype(np.int32)
    mask = np.array([1, 1, 1, 0, 1, 0, 1, 1], np.float32)
    kernels = [tf.constant(layer.kernel) for layer in layers]
    biases = [tf.constant(layer.bias) for layer in layers]
    activations = [layer.activation for layer in layers]
    passed = step.forward(features, kernels, biases, activations)
    deltas = step.per_example_deltas(passed, labels, kernels, activations)
    ours = step.weighted_gradients(passed, deltas, mask / mask.sum())
    per_example = tape_per_example_grads(layers, features, labels)
    expected = [sum(mask[i] * per_example[i][k] for i in range(B)) / mask.sum()
                for k in range(len(ours))]
    for mine, theirs in zip(ours, expected, strict=True):
        np.testing.assert_allclose(mine.numpy(), theirs, atol=1e-6)
    norms = step.per_example_grad_norms(passed, deltas).numpy()
    tape_norms = [np.sqrt(sum(np.sum(g ** 2) for g in grads)) for grads in per_example]
    np.testing.assert_allclose(norms, tape_norms, rtol=1e-5)


def test_masked_loss_ignores_padding_rows() -> None:
    probabilities = tf.constant([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    labels = tf.constant([0, 1, 1])
    loss, count = step.masked_loss(probabilities, labels, tf.constant([1.0, 0.0, 1.0]))
    assert float(count) == 2.0
    assert float(loss) == pytest.approx(-(np.log(0.5) + np.log(0.8)) / 2, rel=1e-6)


def test_sgd_momentum_matches_keras() -> None:
    import keras

    spec = OptimizerSpec(name="sgd", learning_rate=0.1, momentum=0.9)
    ours = [tf.Variable([1.0, -2.0])]
    theirs = keras.Variable([1.0, -2.0])
    optimizer = make_optimizer(spec, ours)
    reference = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
    for g in ([0.5, 0.1], [-0.2, 0.3], [0.7, -0.4]):
        optimizer.apply(ours, [tf.constant(g)])
        reference.apply([tf.constant(g)], [theirs])
    np.testing.assert_allclose(ours[0].numpy(), np.asarray(theirs), rtol=1e-6)


def test_adam_follows_kingma_and_ba() -> None:
    spec = OptimizerSpec(name="adam", learning_rate=0.01, beta_1=0.9, beta_2=0.999,
                         epsilon=1e-7)
    param = [tf.Variable([0.3, -0.1])]
    optimizer = make_optimizer(spec, param)
    w, m, v = np.array([0.3, -0.1]), np.zeros(2), np.zeros(2)
    for t, g in enumerate(([0.5, 0.1], [-0.2, 0.3], [0.7, -0.4]), start=1):
        optimizer.apply(param, [tf.constant(g, tf.float32)])
        g = np.asarray(g)
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g ** 2
        w = w - 0.01 * (m / (1 - 0.9 ** t)) / (np.sqrt(v / (1 - 0.999 ** t)) + 1e-7)
    np.testing.assert_allclose(param[0].numpy(), w, rtol=1e-5)
    optimizer.reset()
    assert float(optimizer.step.numpy()) == 0.0
