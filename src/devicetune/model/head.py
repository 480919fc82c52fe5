"""The trainable head's initial weights: a linear softmax or a one-hidden-layer MLP."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from devicetune.config import HeadLayers
from devicetune.errors import DataError
from devicetune.model.backbone import DenseParams


def init_head(feature_dim: int, head: HeadLayers, num_classes: int, seed: int
              ) -> list[DenseParams]:
    """Glorot-uniform kernels and zero biases (Keras' Dense defaults), seeded."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    widths = [feature_dim, head.hidden_units, num_classes] if head.type == "mlp" else [
        feature_dim, num_classes]
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        kernel = rng.uniform(-limit, limit, size=(fan_in, fan_out)).astype(np.float32)
        activation = "linear" if i == len(widths) - 2 else "relu"
        layers.append(DenseParams(kernel, np.zeros(fan_out, np.float32), activation))
    return layers


def head_as_numpy_forward(layers: list[DenseParams], features: np.ndarray) -> np.ndarray:
    """Probabilities of the head in numpy, float64 (an independent reference)."""
    hidden = features.astype(np.float64)
    for layer in layers:
        hidden = hidden @ layer.kernel.astype(np.float64) + layer.bias
        if layer.activation == "relu":
            hidden = np.maximum(hidden, 0.0)
    hidden -= hidden.max(axis=1, keepdims=True)
    exp = np.exp(hidden)
    return exp / exp.sum(axis=1, keepdims=True)


def fresh_like(weights: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """Untrained weights of the same shapes: zero biases, Glorot-uniform hidden kernels,
    and a zero classifier kernel, so the untrained head predicts every class alike
    (a random classifier on large embeddings starts confidently wrong)."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 14]))
    last_kernel = max(i for i, w in enumerate(weights) if w.ndim == 2)
    fresh = []
    for i, w in enumerate(weights):
        if w.ndim == 2 and i != last_kernel:
            limit = np.sqrt(6.0 / (w.shape[0] + w.shape[1]))
            fresh.append(rng.uniform(-limit, limit, size=w.shape).astype(np.float32))
        else:
            fresh.append(np.zeros_like(w, dtype=np.float32))
    return fresh


def read_head_weights(path: Path, like: list[DenseParams]) -> list[DenseParams]:
    """Initial head weights from a ``.npz`` of ``kernel_0, bias_0, kernel_1, ...``, one
    pair per head layer, shaped as ``like``.

    Raises:
        DataError: the file is missing, lacks a tensor, or a shape does not match.
    """
    from devicetune.data.npz import read_npz

    names = {f"{kind}_{i}" for i in range(len(like)) for kind in ("kernel", "bias")}
    arrays = read_npz(Path(path), names)
    layers = []
    for i, layer in enumerate(like):
        kernel, bias = arrays[f"kernel_{i}"], arrays[f"bias_{i}"]
        if kernel.shape != layer.kernel.shape or bias.shape != layer.bias.shape:
            raise DataError(f"{path}: kernel_{i} {kernel.shape} / bias_{i} {bias.shape} do "
                            f"not fit the head, which needs {layer.kernel.shape} / "
                            f"{layer.bias.shape}")
        if not (np.isfinite(kernel).all() and np.isfinite(bias).all()):
            raise DataError(f"{path}: kernel_{i} or bias_{i} holds NaN or infinity")
        layers.append(replace(layer, kernel=kernel.astype(np.float32),
                              bias=bias.astype(np.float32), source=f"{Path(path).name}"))
    return layers
