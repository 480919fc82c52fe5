"""Static batches with a mask: how a variable number of examples meets a fixed-shape
training signature."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def padded_batches(features: np.ndarray, labels: np.ndarray, batch_size: int,
                   order: np.ndarray | None = None
                   ) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield ``(features, labels, mask)`` of exactly ``batch_size`` rows; the last batch
    is padded with zero rows whose mask is 0.

    All batches are gathered in one pass (one fancy index, not one per batch) and
    yielded as read-only views of it.

    Args:
        features: ``(n, feature_dim)`` float32.
        labels: ``(n,)`` class indices.
        batch_size: the artifact's static batch.
        order: the row order to visit (a shuffle), default ``0..n-1``.
    """
    n = len(features)
    steps = -(-n // batch_size)
    f = np.zeros((steps, batch_size, features.shape[1]), np.float32)
    y = np.zeros((steps, batch_size), np.int32)
    m = np.zeros((steps, batch_size), np.float32)
    rows = slice(None) if order is None else order
    f.reshape(-1, features.shape[1])[:n] = features[rows]
    y.reshape(-1)[:n] = labels[rows]
    m.reshape(-1)[:n] = 1.0
    for array in (f, y, m):
        array.setflags(write=False)
    for step in range(steps):
        yield f[step], y[step], m[step]
