"""The head's training step for many devices at once, in numpy (float32).

The same math as the artifact's ``train`` signature (devicetune.model.step and
optimizers): a static batch with a mask, mean cross-entropy over the real rows,
closed-form gradients, the proximal term, SGD with momentum or Adam with bias
correction, and ``train_masked``'s restricted softmax (FedRS, Li & Zhan 2021) when
each device's class mask is given. Here every array has a leading device axis, so one
step advances every device of a round together. A device whose batch holds no real
rows this step (it has fewer batches than the busiest device) is left exactly as it
was.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from devicetune.config import OptimizerSpec
from devicetune.model.class_mask import class_logit_offset

_LOG_EPS = np.float32(1e-12)


@dataclass
class BatchedHead:
    """Weights and optimizer state of ``D`` devices' heads.

    Args:
        params: per tensor (``kernel, bias`` per layer), shape ``(D, *tensor_shape)``.
        activations: per layer, "relu" or "linear" (the last is followed by softmax).
        optimizer: the artifact's optimizer.
        learning_rate, proximal_mu: as the artifact's ``configure`` sets them.
        dp_clip_norm, dp_noise_multiplier: the artifact's train_dp constants; with a
            noise multiplier every step is a DP-SGD step (Abadi et al. 2016).
        rng: the DP noise source.
    """

    params: list[np.ndarray]
    activations: list[str]
    optimizer: OptimizerSpec
    learning_rate: float
    proximal_mu: float = 0.0
    dp_clip_norm: float = 1.0
    dp_noise_multiplier: float | None = None  # set: train as the artifact's train_dp
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    anchor: list[np.ndarray] = field(default_factory=list)
    _slots: list[list[np.ndarray]] = field(default_factory=list)
    _steps: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.params = [np.array(p, np.float32) for p in self.params]
        self.anchor = [p.copy() for p in self.params]
        slots = 2 if self.optimizer.name == "adam" else 1
        self._slots = [[np.zeros_like(p) for p in self.params] for _ in range(slots)]
        self._steps = np.zeros(self.devices, np.float32)

    @classmethod
    def from_global(cls, weights: list[np.ndarray], devices: int, **kwargs: object
                    ) -> BatchedHead:
        """``devices`` copies of one set of weights (a round's starting point)."""
        stacked = [np.broadcast_to(w, (devices, *w.shape)).copy() for w in weights]
        return cls(stacked, **kwargs)  # type: ignore[arg-type]

    @property
    def devices(self) -> int:
        return int(self.params[0].shape[0])

    def device_weights(self, device: int) -> list[np.ndarray]:
        return [p[device].copy() for p in self.params]

    def step(self, features: np.ndarray, labels: np.ndarray, mask: np.ndarray,
             class_mask: np.ndarray | None = None) -> np.ndarray:
        """One training step on ``(K, B, F)`` features, ``(K, B)`` labels and mask, for
        the first ``K <= D`` devices (the others are left as they are); returns each
        device's mean loss over its real rows. ``class_mask`` ``(K, C)``: each device's
        classes, as ``train_masked`` takes them."""
        k = features.shape[0]
        params = self.params if k == self.devices else [p[:k] for p in self.params]
        kernels, biases = params[0::2], params[1::2]
        inputs, pre = [], []
        hidden = features
        for kernel, bias, activation in zip(kernels, biases, self.activations, strict=True):
            inputs.append(hidden)
            z = np.matmul(hidden, kernel) + bias[:, None, :]
            pre.append(z)
            hidden = np.maximum(z, 0) if activation == "relu" else z
        logits = pre[-1]
        if class_mask is not None:
            logits = logits + class_logit_offset(class_mask).astype(np.float32)[:, None, :]
        logits = logits - logits.max(axis=2, keepdims=True)
        exp = np.exp(logits)
        probabilities = exp / exp.sum(axis=2, keepdims=True)
        onehot = np.eye(probabilities.shape[2], dtype=np.float32)[labels]
        count = np.maximum(mask.sum(axis=1), 1.0)
        per_example = -(onehot * np.log(probabilities + _LOG_EPS)).sum(axis=2)
        loss = (per_example * mask).sum(axis=1) / count

        # Unscaled per-example deltas of every layer (row i is example i's own).
        delta = probabilities - onehot
        deltas = [delta]
        for layer in range(len(kernels) - 1, 0, -1):
            delta = np.matmul(delta, kernels[layer].transpose(0, 2, 1))
            if self.activations[layer - 1] == "relu":
                delta = delta * (pre[layer - 1] > 0)
            deltas.insert(0, delta)
        if self.dp_noise_multiplier is None:
            row_weights = mask / count[:, None]
        else:
            # DP-SGD: clip each example's whole-head gradient (its norm from the outer
            # product structure, Goodfellow 2015), then add noise to the sum.
            squared = sum((np.square(a).sum(axis=2) + 1.0) * np.square(d).sum(axis=2)
                          for a, d in zip(inputs, deltas, strict=True))
            norms = np.sqrt(squared)
            row_weights = mask * np.minimum(1.0, self.dp_clip_norm / np.maximum(norms, 1e-12))
        grads: list[np.ndarray] = []
        for layer_input, d in zip(inputs, deltas, strict=True):
            weighted = d * row_weights[:, :, None]
            grads.append(np.matmul(layer_input.transpose(0, 2, 1), weighted))
            grads.append(weighted.sum(axis=1))
        if self.dp_noise_multiplier is not None:
            std = np.float32(self.dp_noise_multiplier * self.dp_clip_norm)
            grads = [(g + std * self.rng.standard_normal(g.shape, np.float32))
                     / _expand(count, g).astype(np.float32) for g in grads]
        grads = [g.astype(np.float32) for g in grads]
        if self.proximal_mu:
            anchor = self.anchor if k == self.devices else [a[:k] for a in self.anchor]
            grads = [g + np.float32(self.proximal_mu) * (p - a)
                     for g, p, a in zip(grads, params, anchor, strict=True)]
        self._apply(grads, active=mask.sum(axis=1) > 0)
        return loss

    def _apply(self, grads: list[np.ndarray], active: np.ndarray) -> None:
        """The optimizer's update of the first ``len(active)`` devices, in place; a
        device not ``active`` this step keeps its weights and state exactly."""
        k = len(active)
        everyone = bool(active.all())
        rate = np.float32(self.learning_rate)
        spec = self.optimizer

        def put(target: np.ndarray, new: np.ndarray) -> None:
            target[:k] = new if everyone else np.where(_expand(active, new), new, target[:k])

        if spec.name == "adam":
            steps = self._steps[:k] + active  # only devices that trained this step advance
            b1, b2 = np.float32(spec.beta_1), np.float32(spec.beta_2)
            m_scale = (1.0 / (1.0 - b1 ** np.maximum(steps, 1))).astype(np.float32)
            v_scale = (1.0 / (1.0 - b2 ** np.maximum(steps, 1))).astype(np.float32)
            for i, grad in enumerate(grads):
                m, v = self._slots[0][i][:k], self._slots[1][i][:k]
                new_m = b1 * m + (1 - b1) * grad
                new_v = b2 * v + (1 - b2) * grad * grad
                update = (new_m * _expand(m_scale, grad)) / (
                    np.sqrt(new_v * _expand(v_scale, grad)) + np.float32(spec.epsilon))
                new_p = self.params[i][:k] - rate * update
                put(self._slots[0][i], new_m)
                put(self._slots[1][i], new_v)
                put(self.params[i], new_p)
            self._steps[:k] = steps
            return
        momentum = np.float32(spec.momentum)
        for i, grad in enumerate(grads):
            if momentum == 0:
                put(self.params[i], self.params[i][:k] - rate * grad)
                continue
            velocity = momentum * self._slots[0][i][:k] - rate * grad
            new_p = self.params[i][:k] + velocity
            put(self._slots[0][i], velocity)
            put(self.params[i], new_p)


def _expand(per_device: np.ndarray, like: np.ndarray) -> np.ndarray:
    return per_device.reshape((-1,) + (1,) * (like.ndim - 1))
