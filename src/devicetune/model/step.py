"""The head's math, written once in TensorFlow: forward, loss, gradients, DP clipping.

The head is a stack of dense layers (ReLU or linear between them, softmax at the end)
on top of the frozen backbone's features. Gradients are closed-form rather than taken
with a tape: tape gradients with a dynamic batch emit `BroadcastGradientArgs` and
`ReluGrad`, which are not TFLite built-ins (DESIGN.md). Closed form also gives each
example's gradient norm for free, which DP-SGD needs.

Every function takes the masked static batch the artifact trains on: ``mask[i]`` is 1
for a real example and 0 for padding.

A restricted softmax (FedRS, model/class_mask) takes a second mask, over classes:
``class_mask[c]`` is 1 for a class the device holds. Absent classes' logits are shifted
far down before the softmax, so their probabilities are exactly 0, their deltas 0, and
their weights get no gradient. The shift is an added constant, so Core ML can carry it
too (as a frozen bias, export/coreml).

References:
    Goodfellow, "Efficient Per-Example Gradient Computations", arXiv:1510.01799, 2015.
    Lee & Kifer, "Scaling up Differentially Private Deep Learning with Fast Per-Example
    Gradient Clipping", PoPETs 2021.
    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016.
    Li & Zhan, "FedRS: Federated Learning with Restricted Softmax for Label Distribution
    Non-IID Data", KDD 2021.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import tensorflow as tf

from devicetune.model.class_mask import class_logit_offset

_LOG_EPS = 1e-12


@dataclass(frozen=True)
class ForwardPass:
    """What the backward pass needs: each layer's input and pre-activation."""

    inputs: list[tf.Tensor]  # input of layer l, shape (batch, in_l)
    pre_activations: list[tf.Tensor]  # x_l @ W_l + b_l, shape (batch, out_l)
    probabilities: tf.Tensor  # softmax of the last pre-activation


def forward(features: tf.Tensor, kernels: Sequence[Any], biases: Sequence[Any],
            activations: Sequence[str], class_mask: tf.Tensor | None = None
            ) -> ForwardPass:
    """Run the head; the last layer's activation is always softmax (restricted to the
    classes of ``class_mask``, shape ``(classes,)``, when given)."""
    inputs, pre = [], []
    hidden = features
    for kernel, bias, activation in zip(kernels, biases, activations, strict=True):
        inputs.append(hidden)
        z = tf.matmul(hidden, kernel) + bias
        pre.append(z)
        hidden = tf.nn.relu(z) if activation == "relu" else z
    logits = pre[-1] if class_mask is None else pre[-1] + class_logit_offset(class_mask)
    return ForwardPass(inputs, pre, tf.nn.softmax(logits))


def masked_loss(probabilities: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor
                ) -> tuple[tf.Tensor, tf.Tensor]:
    """Mean cross-entropy over the real examples, and the count of real examples."""
    onehot = tf.one_hot(labels, tf.shape(probabilities)[1], dtype=probabilities.dtype)
    per_example = -tf.reduce_sum(onehot * tf.math.log(probabilities + _LOG_EPS), axis=1)
    count = tf.maximum(tf.reduce_sum(mask), 1.0)
    return tf.reduce_sum(per_example * mask) / count, count


def correct_count(probabilities: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    """How many real examples the head classifies right."""
    predicted = tf.cast(tf.argmax(probabilities, axis=1), labels.dtype)
    return tf.reduce_sum(tf.cast(tf.equal(predicted, labels), tf.float32) * mask)


def per_example_deltas(passed: ForwardPass, labels: tf.Tensor, kernels: Sequence[Any],
                       activations: Sequence[str]) -> list[tf.Tensor]:
    """d(loss_i)/d(pre-activation) of every layer, one row per example, unscaled.

    Row i of layer l's delta times layer l's input row i is example i's own gradient, so
    these rows carry everything both plain and per-example (DP) gradients need.
    """
    probabilities = passed.probabilities
    onehot = tf.one_hot(labels, tf.shape(probabilities)[1], dtype=probabilities.dtype)
    delta = probabilities - onehot
    deltas = [delta]
    for layer in range(len(kernels) - 1, 0, -1):
        delta = tf.matmul(delta, kernels[layer], transpose_b=True)
        if activations[layer - 1] == "relu":
            # ReLU's derivative as a mask: the built-in ReluGrad is not a TFLite op.
            delta = delta * tf.cast(passed.pre_activations[layer - 1] > 0, delta.dtype)
        deltas.append(delta)
    deltas.reverse()
    return deltas


def weighted_gradients(passed: ForwardPass, deltas: Sequence[tf.Tensor],
                       row_weights: tf.Tensor) -> list[tf.Tensor]:
    """Sum over examples of ``row_weights[i] * gradient_i``: kernels then biases, per layer
    (``[dW_0, db_0, dW_1, db_1, ...]``)."""
    grads = []
    for layer_input, delta in zip(passed.inputs, deltas, strict=True):
        weighted = delta * row_weights[:, None]
        grads.append(tf.matmul(layer_input, weighted, transpose_a=True))
        grads.append(tf.reduce_sum(weighted, axis=0))
    return grads


def per_example_grad_norms(passed: ForwardPass, deltas: Sequence[tf.Tensor]) -> tf.Tensor:
    """L2 norm of each example's whole-head gradient, without materialising it.

    For a dense layer the example's kernel gradient is the outer product of its input
    and its delta, whose norm is the product of their norms (Goodfellow 2015).
    """
    squared = tf.zeros_like(deltas[0][:, 0])
    for layer_input, delta in zip(passed.inputs, deltas, strict=True):
        delta_sq = tf.reduce_sum(tf.square(delta), axis=1)
        squared += tf.reduce_sum(tf.square(layer_input), axis=1) * delta_sq + delta_sq
    return tf.sqrt(squared)


def clip_weights(norms: tf.Tensor, mask: tf.Tensor, clip_norm: float) -> tf.Tensor:
    """Per-example factor ``min(1, C / norm)`` (zero for padding)."""
    return mask * tf.minimum(1.0, clip_norm / tf.maximum(norms, 1e-12))
