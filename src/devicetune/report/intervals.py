"""Bootstrap intervals over devices for the report's headline numbers.

The devices a run personalised are a sample of the people an app would reach; a mean
over 30 of them moves by points from one sample to the next. Each headline number gets
a 95% percentile bootstrap interval: resample the devices with replacement, recompute
the number, take the 2.5th and 97.5th percentiles (Efron 1979; percentile intervals,
Efron & Tibshirani 1993, ch. 13). Seeded, so a report is reproducible.

References:
    B. Efron. Bootstrap methods: another look at the jackknife. Annals of Statistics,
    7(1), 1979.
    B. Efron, R. Tibshirani. An Introduction to the Bootstrap. Chapman & Hall, 1993.
    J. A. Hanley, A. Lippman-Hand. If nothing goes wrong, is everything all right?
    JAMA, 249(13), 1983 (the rule of three).

A share of devices harmed that is 0 in the run is 0 in every resample, so the bootstrap
would say "0.0–0.0%"; its upper bound is then the rule of three, 3/n (Hanley &
Lippman-Hand 1983): no harm seen in 30 devices still allows up to 10%.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from devicetune.run_files import PersonalizationResult

RESAMPLES = 2000
LEVEL = 0.95
SEED = 0


@dataclass(frozen=True)
class Intervals:
    """95% intervals, each ``(low, high)`` on the 0..1 scale, keyed like summary.json."""

    by_key: dict[str, tuple[float, float]]
    devices: int

    def get(self, key: str) -> tuple[float, float] | None:
        return self.by_key.get(key)


def bootstrap(values: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray],
              resamples: int = RESAMPLES, level: float = LEVEL, seed: int = SEED
              ) -> tuple[float, float]:
    """Percentile interval of ``statistic`` over resamples of the rows of ``values``.

    ``statistic`` takes a ``(resamples, devices, ...)`` array and reduces axis 1."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(values), size=(resamples, len(values)))
    estimates = statistic(values[rows])
    tail = (1 - level) / 2
    low, high = np.quantile(estimates, [tail, 1 - tail])
    return float(low), float(high)


def device_intervals(devices: Sequence[PersonalizationResult]) -> Intervals | None:
    """Intervals for the mean accuracies, the mean gain and the share harmed (the
    recipe's, and naive fine-tuning's when it was measured); None under 2 devices."""
    if len(devices) < 2:
        return None
    table = {"global": [d.acc_global for d in devices],
             "personal": [d.acc_personal for d in devices]}
    naive = all(d.acc_naive is not None for d in devices)
    if naive:
        table["naive"] = [float(d.acc_naive) for d in devices]  # type: ignore[arg-type]
    names = list(table)
    values = np.array([table[n] for n in names], dtype=float).T  # (devices, columns)
    col = {name: i for i, name in enumerate(names)}

    def mean_of(name: str) -> Callable[[np.ndarray], np.ndarray]:
        return lambda s: s[:, :, col[name]].mean(axis=1)

    def harmed_by(name: str) -> Callable[[np.ndarray], np.ndarray]:
        return lambda s: (s[:, :, col[name]] < s[:, :, col["global"]]).mean(axis=1)

    stats: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "accuracy_global.mean": mean_of("global"),
        "accuracy_personal.mean": mean_of("personal"),
        "mean_gain": lambda s: (s[:, :, col["personal"]] - s[:, :, col["global"]]).mean(1),
        "fraction_harmed": harmed_by("personal"),
    }
    if naive:
        stats |= {
            "naive.accuracy.mean": mean_of("naive"),
            "naive.mean_gain": lambda s: (s[:, :, col["naive"]]
                                          - s[:, :, col["global"]]).mean(1),
            "naive.fraction_harmed": harmed_by("naive"),
        }
    found = {key: bootstrap(values, stat) for key, stat in stats.items()}
    for key, (_low, high) in found.items():
        if key.endswith("fraction_harmed") and high == 0.0:
            found[key] = (0.0, min(1.0, 3 / len(devices)))
    return Intervals(found, len(devices))
