"""`DeviceProgram`: the TensorFlow module whose signatures become the Android artifact.

Signatures (the contract with the app; names and shapes go into the manifest):

- ``infer(x) -> probabilities`` and ``embed(x) -> features``: any batch size.
- ``train(features, labels, mask) -> loss``: one optimizer step on a static batch;
  ``mask`` marks the real rows so a partial batch pads with zeros.
- ``train_dp(features, labels, mask) -> loss``: DP-SGD: each example's gradient clipped
  to ``dp_clip_norm``, Gaussian noise of std ``dp_noise_multiplier * dp_clip_norm``
  added to the sum (Abadi et al. 2016).
- ``train_masked(features, labels, mask, class_mask) -> loss``: ``train`` with a
  restricted softmax (FedRS, Li & Zhan 2021): ``class_mask`` (one float per class, 1 for
  a class the device holds) keeps absent classes out of the softmax, so their weights do
  not move. A device in a federation that restricts the softmax trains with this.
- ``evaluate(features, labels, mask) -> loss, correct``.
- ``get_weights(unused) -> tensors`` and ``set_weights(tensors) -> ok``: the trainable
  weights. ``unused`` is an int32 scalar that is ignored: LiteRT's Java/Kotlin
  ``runSignature`` refuses a call with no inputs, so a signature without one could not be
  called from an Android app.
  ``set_weights`` also restarts the optimizer and makes the new weights the anchor of the
  proximal term, since new weights arrive from the server as a new global model.
- ``configure(learning_rate, proximal_mu) -> ok``: tune the step on the device;
  ``proximal_mu`` adds ``mu/2 * ||w - anchor||^2`` to the loss (FedProx, Li et al. 2020),
  which also keeps a personal head near the global one.

The same object runs in TensorFlow as the reference the parity checks compare against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from devicetune.config import OptimizerSpec
from devicetune.model import step
from devicetune.model.backbone import DenseParams
from devicetune.model.optimizers import make_optimizer

SIGNATURES = ("infer", "embed", "train", "train_dp", "train_masked", "evaluate",
              "get_weights", "set_weights", "configure")


def weight_names(layers: int) -> list[str]:
    """Names of the trainable tensors, in `get_weights` / `set_weights` order."""
    return [f"dense{i}_{part}" for i in range(layers) for part in ("kernel", "bias")]


class DeviceProgram(tf.Module):
    """The frozen backbone plus a trainable dense head with its optimizer, in one module.

    Args:
        frozen: the backbone as a constant concrete function ``x -> features``.
        input_shape: one example's shape (without the batch).
        layers: the trainable dense layers, first to last (the last is the classifier).
        optimizer: the optimizer compiled into ``train`` and ``train_dp``.
        batch_size: the static batch of the training signatures.
        dp_clip_norm, dp_noise_multiplier: constants of ``train_dp``.
    """

    def __init__(self, frozen: Any, input_shape: Sequence[int], layers: Sequence[DenseParams],
                 optimizer: OptimizerSpec, batch_size: int, dp_clip_norm: float,
                 dp_noise_multiplier: float) -> None:
        super().__init__(name="devicetune")
        self.frozen = frozen
        self.activations = [layer.activation for layer in layers]
        self.feature_dim = int(layers[0].kernel.shape[0])
        self.num_classes = layers[-1].units
        self.batch_size = batch_size
        self.names = weight_names(len(layers))
        self.params = []
        for layer, name in zip(layers, self.names[::2], strict=True):
            self.params.append(tf.Variable(layer.kernel, dtype=tf.float32, name=name))
            self.params.append(tf.Variable(layer.bias, dtype=tf.float32,
                                           name=name.replace("kernel", "bias")))
        self.anchor = [tf.Variable(p.read_value(), name=f"anchor_{i}")
                       for i, p in enumerate(self.params)]
        self.proximal_mu = tf.Variable(0.0, name="proximal_mu")
        self.optimizer_spec = optimizer
        self.optimizer = make_optimizer(optimizer, self.params)
        self.dp_clip_norm = float(dp_clip_norm)
        self.dp_noise_multiplier = float(dp_noise_multiplier)
        self._define_signatures(tuple(int(d) for d in input_shape))

    # The signatures are closures over shapes known only at build time.
    def _define_signatures(self, input_shape: tuple[int, ...]) -> None:
        x_spec = tf.TensorSpec([None, *input_shape], tf.float32, name="x")
        batch = [
            tf.TensorSpec([self.batch_size, self.feature_dim], tf.float32, name="features"),
            tf.TensorSpec([self.batch_size], tf.int32, name="labels"),
            tf.TensorSpec([self.batch_size], tf.float32, name="mask"),
        ]
        weight_specs = [tf.TensorSpec(p.shape, tf.float32, name=n)
                        for p, n in zip(self.params, self.names, strict=True)]

        self.infer = tf.function(input_signature=[x_spec])(
            lambda x: {"probabilities": self._forward(self._embed(x)).probabilities})
        self.embed = tf.function(input_signature=[x_spec])(
            lambda x: {"features": self._embed(x)})
        self.train = tf.function(input_signature=batch)(
            lambda features, labels, mask: {"loss": self._train(features, labels, mask,
                                                                 private=False)})
        self.train_dp = tf.function(input_signature=batch)(
            lambda features, labels, mask: {"loss": self._train(features, labels, mask,
                                                                 private=True)})
        class_mask = tf.TensorSpec([self.num_classes], tf.float32, name="class_mask")
        self.train_masked = tf.function(input_signature=[*batch, class_mask])(
            lambda features, labels, mask, class_mask: {"loss": self._train(
                features, labels, mask, private=False, class_mask=class_mask)})
        self.evaluate = tf.function(input_signature=batch)(self._evaluate)
        self.get_weights = tf.function(input_signature=[
            tf.TensorSpec([], tf.int32, name="unused")])(
            lambda unused: {n: p.read_value()
                            for n, p in zip(self.names, self.params, strict=True)})
        self.set_weights = tf.function(input_signature=weight_specs)(self._set_weights)
        self.configure = tf.function(input_signature=[
            tf.TensorSpec([], tf.float32, name="learning_rate"),
            tf.TensorSpec([], tf.float32, name="proximal_mu"),
        ])(self._configure)

    def signatures(self) -> dict[str, Any]:
        """Concrete functions by signature name, for saving and conversion."""
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}

    def _embed(self, x: tf.Tensor) -> tf.Tensor:
        out = self.frozen(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    def _forward(self, features: tf.Tensor) -> step.ForwardPass:
        return step.forward(features, self.params[0::2], self.params[1::2], self.activations)

    def _train(self, features: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor,
               private: bool, class_mask: tf.Tensor | None = None) -> tf.Tensor:
        passed = step.forward(features, self.params[0::2], self.params[1::2],
                              self.activations, class_mask)
        loss, count = step.masked_loss(passed.probabilities, labels, mask)
        deltas = step.per_example_deltas(passed, labels, self.params[0::2], self.activations)
        if private:
            norms = step.per_example_grad_norms(passed, deltas)
            row_weights = step.clip_weights(norms, mask, self.dp_clip_norm)
            summed = step.weighted_gradients(passed, deltas, row_weights)
            noise_std = self.dp_noise_multiplier * self.dp_clip_norm
            grads = [(g + noise_std * _fresh_normal(g)) / count for g in summed]
        else:
            grads = step.weighted_gradients(passed, deltas, mask / count)
        grads = [g + self.proximal_mu * (p - a)
                 for g, p, a in zip(grads, self.params, self.anchor, strict=True)]
        with tf.control_dependencies(self.optimizer.apply(self.params, grads)):
            return tf.identity(loss)

    def _evaluate(self, features: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor
                  ) -> dict[str, tf.Tensor]:
        passed = self._forward(features)
        loss, _ = step.masked_loss(passed.probabilities, labels, mask)
        return {"loss": loss, "correct": step.correct_count(passed.probabilities, labels, mask)}

    def _set_weights(self, *weights: tf.Tensor) -> dict[str, tf.Tensor]:
        ops = [p.assign(w) for p, w in zip(self.params, weights, strict=True)]
        ops += [a.assign(w) for a, w in zip(self.anchor, weights, strict=True)]
        ops += self.optimizer.reset()
        # A signature without outputs is pruned away by the converter; return a token.
        with tf.control_dependencies(ops):
            return {"ok": tf.constant(1, tf.int32)}

    def _configure(self, learning_rate: tf.Tensor, proximal_mu: tf.Tensor
                   ) -> dict[str, tf.Tensor]:
        ops = [self.optimizer.learning_rate.assign(learning_rate),
               self.proximal_mu.assign(proximal_mu)]
        with tf.control_dependencies(ops):
            return {"ok": tf.constant(1, tf.int32)}

    def weights(self) -> list[np.ndarray]:
        """The current trainable weights as numpy arrays, in `weight_names` order."""
        return [p.numpy() for p in self.params]


def _fresh_normal(like: tf.Tensor) -> tf.Tensor:
    """Standard normal noise that differs on every phone and every call.

    RandomStandardNormal is a TFLite built-in (the stateless variants are not, DESIGN.md).
    Its seeds are pinned to 0/0, which LiteRT reads as "seed from the OS": left to
    ``tf.random.normal``, a global seed (Keras sets one) would bake fixed seeds into the
    artifact and every phone would add the same noise, which is no privacy at all.
    """
    return tf.raw_ops.RandomStandardNormal(shape=tf.shape(like), dtype=like.dtype,
                                           seed=0, seed2=0)
