"""Checks every device update passes before it may be aggregated.

A device can send anything: a wrong shape from a stale app, NaN from a diverged step,
or a huge update from a faulty or malicious phone. Each is rejected with a reason and
never reaches the strategy.
"""

from __future__ import annotations

import numpy as np


def update_problem(names: list[str], weights: list[np.ndarray], global_names: list[str],
                   global_weights: list[np.ndarray], max_update_norm: float) -> str | None:
    """Why an update must be rejected, or None when it is acceptable."""
    if names != global_names:
        return f"weight names {names} differ from the model's {global_names}"
    for name, new, old in zip(names, weights, global_weights, strict=True):
        if new.shape != old.shape:
            return f"{name} has shape {tuple(new.shape)}, expected {tuple(old.shape)}"
        if new.dtype != np.float32:
            return f"{name} has dtype {new.dtype}, expected float32"
        if not np.all(np.isfinite(new)):
            return f"{name} holds NaN or infinite values"
    norm = update_norm(weights, global_weights)
    if norm > max_update_norm:
        return f"update norm {norm:.4g} exceeds the bound {max_update_norm:g}"
    return None


def update_norm(weights: list[np.ndarray], global_weights: list[np.ndarray]) -> float:
    """L2 norm of the whole update (new minus global), in float64."""
    return float(np.sqrt(sum(np.sum((n.astype(np.float64) - o) ** 2)
                             for n, o in zip(weights, global_weights, strict=True))))
