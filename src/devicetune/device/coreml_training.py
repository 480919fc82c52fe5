"""What `MLUpdateTask` does to an updatable Core ML classifier, in numpy.

The trainable part is read from the spec: the chain of layers from the first updatable
``innerProduct`` to the ``softmax`` under the categorical cross-entropy loss (inner
products, with ReLU between them). One update runs ``epochs`` passes over the examples;
each pass visits them in a fresh shuffled order (if the model shuffles) in mini-batches
of ``miniBatchSize`` (the last one may be smaller), and every mini-batch takes one
optimizer step on the mean loss of its examples. The optimizer starts fresh with each
update: Core ML keeps no optimizer state in the model file.

Update rules (what Core ML documents, and what `devicetune.model.optimizers` compiles
into the TFLite artifact):

- SGD with momentum: ``v = momentum * v - lr * g; w = w + v``.
- Adam (Kingma & Ba 2015, Algorithm 1): ``m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
  w = w - lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.

The arithmetic is float64; the weights go back into the model as float32.

References:
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from devicetune.errors import ConfigError, ExportError

_LOG_EPS = 1e-12


@dataclass
class DenseLayer:
    """One inner product of the trainable chain, ``(in, out)`` kernel layout."""

    name: str
    kernel: np.ndarray
    bias: np.ndarray
    relu: bool  # a ReLU follows (the last layer feeds the softmax instead)
    trainable: bool


@dataclass
class DenseHead:
    """The chain from the features blob to the softmax, as Core ML trains it."""

    layers: list[DenseLayer]

    @classmethod
    def from_layers(cls, layers: Sequence[Any], features: str, probabilities: str
                    ) -> DenseHead:
        """Read the chain that starts at blob ``features`` and ends at ``probabilities``.

        Raises:
            ExportError: a layer on the way is not an inner product, a ReLU or the softmax.
        """
        from devicetune.device.coreml_layers import weights

        consumers = {name: layer for layer in layers for name in layer.input}
        chain: list[DenseLayer] = []
        blob = features
        while blob != probabilities:
            layer = consumers.get(blob)
            if layer is None:
                raise ExportError(f"no layer consumes {blob!r} on the way to the softmax; "
                                  "the updatable part is not a chain")
            kind = layer.WhichOneof("layer")
            if kind == "innerProduct":
                p = layer.innerProduct
                c_out, c_in = int(p.outputChannels), int(p.inputChannels)
                kernel = weights(p.weights, (c_out, c_in)).T.astype(np.float64)
                bias = (weights(p.bias).astype(np.float64) if p.hasBias
                        else np.zeros(c_out))
                chain.append(DenseLayer(layer.name, kernel, bias, False, layer.isUpdatable))
            elif (kind == "activation" and chain
                  and layer.activation.WhichOneof("NonlinearityType") == "ReLU"):
                chain[-1].relu = True
            elif kind == "softmax" and chain and layer.output[0] == probabilities:
                pass
            else:
                raise ExportError(f"layer {layer.name!r} ({kind}) sits in the updatable "
                                  "part; the Core ML reference trains inner products with "
                                  "ReLU between them, then a softmax")
            blob = layer.output[0]
        if not chain:
            raise ExportError("no inner product between the features and the softmax")
        return cls(chain)

    def forward(self, features: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray],
                                                     np.ndarray]:
        """Each layer's input and pre-activation, and the probabilities."""
        inputs, pre = [], []
        hidden = np.asarray(features, np.float64)
        for layer in self.layers:
            inputs.append(hidden)
            z = hidden @ layer.kernel + layer.bias
            pre.append(z)
            hidden = np.maximum(z, 0.0) if layer.relu else z
        shifted = np.exp(hidden - hidden.max(axis=1, keepdims=True))
        return inputs, pre, shifted / shifted.sum(axis=1, keepdims=True)

    def loss_and_gradients(self, features: np.ndarray, labels: np.ndarray
                           ) -> tuple[float, list[np.ndarray]]:
        """Mean cross-entropy of the batch and its gradient, ``[dW0, db0, dW1, ...]``."""
        inputs, pre, probabilities = self.forward(features)
        n = len(labels)
        rows = np.arange(n)
        loss = float(-np.log(probabilities[rows, labels] + _LOG_EPS).mean())
        delta = probabilities.copy()
        delta[rows, labels] -= 1.0
        delta /= n
        grads: list[np.ndarray] = []
        for index in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[index]
            grads[:0] = [inputs[index].T @ delta, delta.sum(axis=0)]
            if index:
                delta = delta @ layer.kernel.T
                if self.layers[index - 1].relu:
                    delta = delta * (pre[index - 1] > 0)
        return loss, grads

    def params(self) -> list[np.ndarray]:
        return [t for layer in self.layers for t in (layer.kernel, layer.bias)]

    def trainable_mask(self) -> list[bool]:
        return [layer.trainable for layer in self.layers for _ in (0, 1)]


@dataclass
class Allowed:
    """A tunable parameter: its default and the interval the spec allows."""

    default: float
    low: float
    high: float
    integer: bool = False

    @classmethod
    def from_param(cls, param: Any, integer: bool = False) -> Allowed:
        kind = param.WhichOneof("AllowedValues")
        if kind == "range":
            low, high = param.range.minValue, param.range.maxValue
        elif kind == "set":
            low, high = min(param.set.values), max(param.set.values)
        else:
            low = high = param.defaultValue
        return cls(float(param.defaultValue), float(low), float(high), integer)

    def pick(self, name: str, value: float | None) -> float:
        """``value`` (or the default) if the model allows it, as Core ML checks.

        Raises:
            ConfigError: outside the allowed range.
        """
        if value is None:
            return int(self.default) if self.integer else self.default
        if not self.low <= value <= self.high:
            raise ConfigError(f"{name} = {value} is outside what the Core ML model allows "
                              f"([{self.low:g}, {self.high:g}]); pick a value in that range")
        return int(value) if self.integer else float(value)


@dataclass
class UpdateParameters:
    """The ``updateParams`` of a spec: optimizer, its parameters, epochs, shuffle."""

    optimizer: str  # "sgd" or "adam"
    learning_rate: Allowed
    batch_size: Allowed
    epochs: Allowed
    shuffle: bool
    seed: int
    extra: dict[str, float] = field(default_factory=dict)  # momentum or beta1/beta2/eps

    @classmethod
    def from_spec(cls, update: Any) -> UpdateParameters:
        kind = update.optimizer.WhichOneof("OptimizerType")
        if kind not in ("sgdOptimizer", "adamOptimizer"):
            raise ExportError("the Core ML model has no SGD or Adam optimizer to update with")
        opt = getattr(update.optimizer, kind)
        if kind == "sgdOptimizer":
            extra = {"momentum": opt.momentum.defaultValue}
        else:
            extra = {"beta1": opt.beta1.defaultValue, "beta2": opt.beta2.defaultValue,
                     "eps": opt.eps.defaultValue}
        return cls(
            optimizer="sgd" if kind == "sgdOptimizer" else "adam",
            learning_rate=Allowed.from_param(opt.learningRate),
            batch_size=Allowed.from_param(opt.miniBatchSize, integer=True),
            epochs=Allowed.from_param(update.epochs, integer=True),
            shuffle=bool(update.shuffle.defaultValue), seed=int(update.seed.defaultValue),
            extra=extra,
        )


class Optimizer:
    """SGD with momentum or Adam over a list of parameters; state starts at zero."""

    def __init__(self, params: UpdateParameters, learning_rate: float,
                 shapes: Sequence[tuple[int, ...]]) -> None:
        self.kind = params.optimizer
        self.learning_rate = learning_rate
        self.extra = params.extra
        self.step_count = 0
        self.first = [np.zeros(s) for s in shapes]  # velocity (SGD) or m (Adam)
        self.second = [np.zeros(s) for s in shapes]  # v (Adam)

    def apply(self, params: list[np.ndarray], grads: list[np.ndarray],
              trainable: list[bool]) -> None:
        """Update ``params`` in place."""
        self.step_count += 1
        lr = self.learning_rate
        if self.kind == "adam":
            b1, b2, eps = self.extra["beta1"], self.extra["beta2"], self.extra["eps"]
            m_scale = 1.0 / (1.0 - b1 ** self.step_count)
            v_scale = 1.0 / (1.0 - b2 ** self.step_count)
        for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
            if not trainable[i]:
                continue
            if self.kind == "sgd":
                self.first[i] = self.extra["momentum"] * self.first[i] - lr * grad
                param += self.first[i]
            else:
                self.first[i] = b1 * self.first[i] + (1.0 - b1) * grad
                self.second[i] = b2 * self.second[i] + (1.0 - b2) * grad * grad
                param -= lr * (self.first[i] * m_scale) / (
                    np.sqrt(self.second[i] * v_scale) + eps)


def train(head: DenseHead, features: np.ndarray, labels: np.ndarray,
          optimizer: Optimizer, epochs: int, batch_size: int, shuffle: bool,
          rng: np.random.Generator,
          on_epoch: Callable[[int], None] | None = None) -> list[float]:
    """Run ``epochs`` passes; the mean loss of each (before each batch's step).
    ``on_epoch(epoch)`` runs at each epoch's end, like MLUpdateTask's progress handler."""
    n = len(labels)
    params, trainable = head.params(), head.trainable_mask()
    losses = []
    for _ in range(epochs):
        order = rng.permutation(n) if shuffle else np.arange(n)
        total = 0.0
        for start in range(0, n, batch_size):
            rows = order[start:start + batch_size]
            loss, grads = head.loss_and_gradients(features[rows], labels[rows])
            optimizer.apply(params, grads, trainable)
            total += loss * len(rows)
        losses.append(total / max(1, n))
        if on_epoch is not None:
            on_epoch(len(losses))
    return losses
