"""`DeviceRuntime`: what a simulated phone does with its artifact, on either platform.

A device is an artifact, its own data and its own weights. The runtime hides which
artifact runs (LiteRT on Android, the Core ML reference on iOS) behind the operations
an app performs: compute features once, train epochs, evaluate, read and write weights.
Weights travel as numpy arrays in the artifact's `weight_names` order.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np

from devicetune.device.batching import padded_batches
from devicetune.device.litert import LiteRTModel

EpochHook = Callable[[int], None]


class DeviceRuntime(Protocol):
    """One platform's artifact, as a phone runs it."""

    platform: str
    batch_size: int
    weight_names: list[str]

    def features(self, x: np.ndarray) -> np.ndarray:
        """The frozen backbone's output for ``x`` (it never changes on a device)."""

    def fit(self, features: np.ndarray, labels: np.ndarray, epochs: int,
            rng: np.random.Generator, learning_rate: float | None = None,
            proximal_mu: float = 0.0, private: bool = False,
            on_epoch: EpochHook | None = None, class_mask: np.ndarray | None = None
            ) -> float:
        """Train ``epochs`` shuffled epochs from the current weights (one session: the
        optimizer state carries across its epochs); mean loss of the last epoch.
        ``on_epoch(epoch)`` runs after each epoch and may call `evaluate`, as an app's
        progress handler can (Core ML's MLUpdateTask reports each epoch's end).
        ``class_mask`` (1 per class the device holds) restricts the softmax (FedRS)."""

    def evaluate(self, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        """Mean loss and accuracy of the current weights."""

    def get_weights(self) -> list[np.ndarray]: ...

    def set_weights(self, weights: list[np.ndarray]) -> None:
        """Load weights (a new starting point: optimizer state restarts)."""


class LiteRTDevice:
    """An Android phone: the TFLite artifact in the LiteRT interpreter.

    Args:
        model: ``model.tflite`` path or bytes.
        learning_rate: the artifact's built-in rate, restored when ``fit`` gets none.
    """

    platform = "android"

    def __init__(self, model: Path | bytes, learning_rate: float) -> None:
        self.model = LiteRTModel(model)
        self.batch_size = self.model.batch_size
        names = self.model.weight_names
        # get_weights returns names sorted alphabetically; the contract order is
        # dense0_kernel, dense0_bias, dense1_kernel, ...
        self.weight_names = sorted(names, key=_weight_order)
        self.default_learning_rate = learning_rate

    def features(self, x: np.ndarray) -> np.ndarray:
        return self.model.embed(x)

    def fit(self, features: np.ndarray, labels: np.ndarray, epochs: int,
            rng: np.random.Generator, learning_rate: float | None = None,
            proximal_mu: float = 0.0, private: bool = False,
            on_epoch: EpochHook | None = None, class_mask: np.ndarray | None = None
            ) -> float:
        self.model.configure(learning_rate or self.default_learning_rate, proximal_mu)
        labels = labels.astype(np.int32)
        loss = float("nan")
        n = len(features)
        for epoch in range(1, epochs + 1):
            total = 0.0
            for start, batch in zip(range(0, n, self.batch_size), padded_batches(
                    features, labels, self.batch_size, order=rng.permutation(n)),
                    strict=True):
                real = min(self.batch_size, n - start)
                total += self.model.train(*batch, private=private,
                                          class_mask=class_mask) * real
            loss = total / max(1, n)
            if on_epoch is not None:
                on_epoch(epoch)
        return loss

    def evaluate(self, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
        total_loss, total_correct = 0.0, 0.0
        for batch in padded_batches(features, labels.astype(np.int32), self.batch_size):
            loss, correct = self.model.evaluate(*batch)
            total_loss += loss * float(batch[2].sum())
            total_correct += correct
        n = max(1, len(features))
        return total_loss / n, total_correct / n

    def get_weights(self) -> list[np.ndarray]:
        weights = self.model.get_weights()
        return [weights[name] for name in self.weight_names]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        self.model.set_weights(dict(zip(self.weight_names, weights, strict=True)))


def _weight_order(name: str) -> tuple[int, int]:
    """``dense3_kernel`` -> (3, 0); ``dense3_bias`` -> (3, 1)."""
    layer, _, part = name.partition("_")
    return int(layer.removeprefix("dense")), 0 if part == "kernel" else 1


def open_runtimes(artifacts: Path, platform_mix: dict[str, float], learning_rate: float
                  ) -> dict[str, DeviceRuntime]:
    """One runtime per platform present in the fleet, over the build's artifacts."""
    runtimes: dict[str, DeviceRuntime] = {}
    if platform_mix.get("android", 0) > 0:
        runtimes["android"] = LiteRTDevice(artifacts / "model.tflite", learning_rate)
    if platform_mix.get("ios", 0) > 0:
        from devicetune.device.coreml import CoreMLDevice

        runtimes["ios"] = CoreMLDevice(artifacts / "Model.mlmodel", learning_rate)
    return runtimes
