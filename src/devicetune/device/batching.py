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

    Args:
        features: ``(n, feature_dim)`` float32.
        labels: ``(n,)`` class indices.
        batch_size: the artifact's static batch.
        order: the row order to visit (a shuffle), default ``0..n-1``.
    """
    n = len(features)
    order = np.arange(n) if order is None else order
    for start in range(0, n, batch_size):
        rows = order[start:start + batch_size]
        real = len(rows)
        f = np.zeros((batch_size, features.shape[1]), np.float32)
        y = np.zeros(batch_size, np.int32)
        m = np.zeros(batch_size, np.float32)
        f[:real], y[:real], m[:real] = features[rows], labels[rows], 1.0
        yield f, y, m
