"""User-level DP-FedAvg in numpy: clip, sum, noise, divide; and adaptive clipping.

A device update is a list of arrays treated as one flat vector. Each is scaled to L2
norm at most ``clip_norm``, the scaled updates are summed, Gaussian noise of std
``noise_multiplier * clip_norm`` is added to each coordinate of the sum, and the sum is
divided by the *expected* number of devices per round, not the number that replied:
McMahan et al.'s fixed-denominator estimator, whose sensitivity is ``clip_norm / m``
whatever the sample (dividing by the actual count would leak it). Every device
weighs the same. Clipping and summing run in float64; the result takes the dtype of
the first device's arrays.

Adaptive clipping (Andrew et al. 2021) moves the clip norm geometrically toward the
``target_quantile`` of update norms, using a noisy count of updates at or under the
clip. The count query and the update query share the round's privacy: with count
noise ``sigma_b`` the update gets noise multiplier
``(z**-2 - (2 * sigma_b)**-2) ** -0.5`` so that the round as a whole is a Gaussian
mechanism with noise multiplier ``z``; the accountant records ``z``.

References:
    McMahan, Ramage, Talwar, Zhang. Learning Differentially Private Recurrent
    Language Models. ICLR 2018.
    Andrew, Thakkar, McMahan, Ramaswamy. Differentially Private Learning with
    Adaptive Clipping. NeurIPS 2021.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from devicetune.errors import ConfigError, UpdateRejected

Update = Sequence[np.ndarray]


@dataclass(frozen=True)
class DpAggregate:
    """One round's private aggregate and what went into it."""

    update: list[np.ndarray]  # noisy sum of clipped updates / expected_devices
    clip_norm: float
    noise_std: float  # per-coordinate std of the noise in `update`
    norms: np.ndarray  # each device's update norm before clipping
    unclipped: int  # devices whose norm was at or under clip_norm


def update_norm(update: Update) -> float:
    """L2 norm of an update taken as one flat vector (accumulated in float64)."""
    return math.sqrt(sum(float(np.vdot(a, a)) for a in _as_float64(update)))


def clip_update(update: Update, clip_norm: float) -> tuple[list[np.ndarray], float]:
    """Scale ``update`` to norm at most ``clip_norm``; return it (float64) and its norm.

    Raises:
        UpdateRejected: the update has a NaN or infinite value.
    """
    arrays = _as_float64(update)
    norm = update_norm(arrays)
    if not math.isfinite(norm):
        raise UpdateRejected("a device update has NaN or infinite values; reject it "
                             "before aggregation")
    scale = 1.0 if norm <= clip_norm else clip_norm / norm  # norm 0: nothing to clip
    return [a * scale for a in arrays], norm


def dp_fedavg(updates: Sequence[Update], *, clip_norm: float, noise_multiplier: float,
              expected_devices: float, rng: np.random.Generator) -> DpAggregate:
    """Aggregate one round with user-level DP (McMahan et al. 2018).

    Args:
        updates: One update per device that replied, all of the same shapes.
        clip_norm: L2 bound on each device's contribution.
        noise_multiplier: Noise std on the sum, in units of ``clip_norm``.
        expected_devices: Devices per round the sampling expects (q * population).
        rng: The source of noise; seed it for reproducible simulations.

    Raises:
        ConfigError: a parameter is out of range.
        UpdateRejected: updates differ in shape or hold non-finite values.
    """
    _check(clip_norm > 0, f"clip_norm must be > 0, got {clip_norm}")
    _check(noise_multiplier >= 0, f"noise_multiplier must be >= 0, got {noise_multiplier}")
    _check(expected_devices > 0, f"expected devices per round must be > 0, got "
           f"{expected_devices}")
    if not updates:
        raise UpdateRejected("no device updates to aggregate")
    shapes = [np.shape(a) for a in updates[0]]
    dtypes = [np.asarray(a).dtype for a in updates[0]]
    total = [np.zeros(shape) for shape in shapes]
    norms = np.empty(len(updates))
    for i, update in enumerate(updates):
        if [np.shape(a) for a in update] != shapes:
            raise UpdateRejected(f"device update {i} has shapes "
                                 f"{[np.shape(a) for a in update]}, expected {shapes}")
        clipped, norms[i] = clip_update(update, clip_norm)
        for acc, part in zip(total, clipped, strict=True):
            acc += part
    sum_std = noise_multiplier * clip_norm
    for acc in total:
        acc += rng.normal(0.0, sum_std, acc.shape) if sum_std > 0 else 0.0
        acc /= expected_devices
    return DpAggregate(
        update=[acc.astype(dtype) if np.issubdtype(dtype, np.floating) else acc
                for acc, dtype in zip(total, dtypes, strict=True)],
        clip_norm=clip_norm, noise_std=sum_std / expected_devices, norms=norms,
        unclipped=int(np.sum(norms <= clip_norm)))


def adaptive_noise(noise_multiplier: float, expected_devices: float,
                   count_noise_std: float | None = None) -> tuple[float, float]:
    """Split a round's noise between the update and the clipped count (Andrew et al.).

    Returns:
        (update noise multiplier, count noise std). The count noise defaults to
        ``expected_devices / 20``, the paper's recommendation.

    Raises:
        ConfigError: ``noise_multiplier`` is not below ``2 * count_noise_std``.
    """
    sigma_b = expected_devices / 20 if count_noise_std is None else count_noise_std
    if noise_multiplier == 0:
        return 0.0, sigma_b
    if not noise_multiplier < 2 * sigma_b:
        raise ConfigError(
            f"adaptive clipping with noise_multiplier {noise_multiplier:g} needs count "
            f"noise std above {noise_multiplier / 2:g}, but it is {sigma_b:g} "
            f"(expected devices per round / 20); sample more devices per round, lower "
            "privacy.noise_multiplier, or use privacy.mode = 'fixed'")
    return (noise_multiplier ** -2 - (2 * sigma_b) ** -2) ** -0.5, sigma_b


def next_clip_norm(clip_norm: float, unclipped: int, expected_devices: float, *,
                   target_quantile: float, learning_rate: float, count_noise_std: float,
                   rng: np.random.Generator) -> float:
    """The clip norm for the next round: ``C * exp(-eta * (b - gamma))`` where b is
    the noisy fraction of updates at or under C (Andrew et al. 2021, Algorithm 1)."""
    noisy_fraction = (unclipped + rng.normal(0.0, count_noise_std)) / expected_devices
    return clip_norm * math.exp(-learning_rate * (noisy_fraction - target_quantile))


class AdaptiveClipping:
    """DP-FedAvg whose clip norm follows a quantile of update norms (Andrew et al.).

    Holds the clip norm between rounds; put ``clip_norm`` in the server's round state
    to resume it. Each `aggregate` uses the current clip and then moves it.
    """

    def __init__(self, *, clip_norm: float, noise_multiplier: float,
                 expected_devices: float, target_quantile: float = 0.5,
                 learning_rate: float = 0.2, count_noise_std: float | None = None) -> None:
        _check(0 < target_quantile < 1, f"target_quantile must be in (0, 1), got "
               f"{target_quantile}")
        _check(learning_rate > 0, f"clip learning rate must be > 0, got {learning_rate}")
        self.clip_norm = clip_norm
        self.noise_multiplier = noise_multiplier
        self.expected_devices = expected_devices
        self.target_quantile = target_quantile
        self.learning_rate = learning_rate
        self.update_noise_multiplier, self.count_noise_std = adaptive_noise(
            noise_multiplier, expected_devices, count_noise_std)

    def aggregate(self, updates: Sequence[Update], rng: np.random.Generator) -> DpAggregate:
        """Aggregate one round at the current clip norm, then adapt the clip norm."""
        result = dp_fedavg(updates, clip_norm=self.clip_norm,
                           noise_multiplier=self.update_noise_multiplier,
                           expected_devices=self.expected_devices, rng=rng)
        self.clip_norm = next_clip_norm(
            self.clip_norm, result.unclipped, self.expected_devices,
            target_quantile=self.target_quantile, learning_rate=self.learning_rate,
            count_noise_std=self.count_noise_std, rng=rng)
        return result


def _as_float64(update: Update) -> list[np.ndarray]:
    return [np.asarray(a, dtype=np.float64) for a in update]


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


__all__ = [
    "AdaptiveClipping",
    "DpAggregate",
    "Update",
    "adaptive_noise",
    "clip_update",
    "dp_fedavg",
    "next_clip_norm",
    "update_norm",
]
