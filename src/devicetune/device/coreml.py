"""An iPhone: the updatable Core ML artifact, run by devicetune's reference interpreter.

There is no Core ML runtime on Linux; `CoreMLReference` executes the `.mlmodel` from its
spec and updates it as `MLUpdateTask` does. Two things an iOS device cannot do, because
Core ML's update task has no place for them: a proximal term and DP-SGD.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devicetune.device.runtime import EpochHook
from devicetune.errors import ConfigError


class CoreMLDevice:
    """`DeviceRuntime` over ``Model.mlmodel``.

    Args:
        model: path to the updatable model.
        learning_rate: the rate used when `fit` is given none.
    """

    platform = "ios"

    def __init__(self, model: Path, learning_rate: float) -> None:
        from devicetune.device.coreml_reference import CoreMLReference

        self.reference = CoreMLReference(model)
        self.batch_size = int(self.reference.batch_size)
        self.weight_names = list(self.reference.weight_names)
        self.default_learning_rate = learning_rate

    def features(self, x: np.ndarray) -> np.ndarray:
        return self.reference.features(np.asarray(x, np.float32))

    def fit(self, features: np.ndarray, labels: np.ndarray, epochs: int,
            rng: np.random.Generator, learning_rate: float | None = None,
            proximal_mu: float = 0.0, private: bool = False,
            on_epoch: EpochHook | None = None, class_mask: np.ndarray | None = None
            ) -> float:
        """One MLUpdateTask of ``epochs`` epochs (a fresh optimizer, as Core ML starts)."""
        if private:
            raise ConfigError("privacy.device.enabled: Core ML updates cannot clip "
                              "per-example gradients; use an all-android fleet for DP-SGD")
        if proximal_mu > 0:
            raise ConfigError("server.proximal_mu: Core ML updates have no proximal term; "
                              "set it to 0 or use an all-android fleet")
        if epochs == 0:
            return float("nan")
        losses = self.reference.update(
            features, np.asarray(labels, np.int64), epochs=epochs,
            batch_size=self.batch_size, learning_rate=learning_rate or
            self.default_learning_rate, shuffle_seed=rng, on_epoch=on_epoch,
            class_mask=class_mask)
        return float(losses[-1])

    def evaluate(self, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        if len(features) == 0:
            return 0.0, 0.0
        return self.reference.evaluate(features, np.asarray(labels, np.int64))

    def get_weights(self) -> list[np.ndarray]:
        weights = self.reference.get_weights()
        return [weights[name] for name in self.weight_names]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.reference.set_weights(list(weights))
