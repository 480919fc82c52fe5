"""Who gained and who lost from personalization: per device, per cohort, the worst off."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from devicetune.run_files import PersonalizationResult

# Accuracies are ratios of small counts; a difference below this is no change at all.
TIE = 1e-9
# Cohorts without a configured order (a config that did not load) sort known tiers first.
KNOWN_ORDER = ("android", "ios", "high", "mid", "low")


@dataclass(frozen=True)
class CohortOutcome:
    """A group of devices (one platform, one tier): means over its devices."""

    name: str
    devices: int
    acc_global: float
    acc_personal: float
    mean_gain: float
    fraction_gained: float
    fraction_harmed: float


@dataclass(frozen=True)
class GainCounts:
    """How many devices personalization helped, left alone, or harmed."""

    gained: int
    unchanged: int
    harmed: int

    @property
    def total(self) -> int:
        return self.gained + self.unchanged + self.harmed


def gain_counts(devices: Iterable[PersonalizationResult]) -> GainCounts:
    """Devices whose accuracy on future data rose, stayed, or fell."""
    gains = [d.gain for d in devices]
    return GainCounts(gained=sum(g > TIE for g in gains),
                      unchanged=sum(abs(g) <= TIE for g in gains),
                      harmed=sum(g < -TIE for g in gains))


def cohort_order(names: Iterable[str], configured: Sequence[str] = ()) -> list[str]:
    """Cohort names in the config's order (tiers high to low), then known, then A-Z."""
    rank: dict[str, int] = {}
    for name in [*configured, *KNOWN_ORDER]:
        rank.setdefault(name, len(rank))
    return sorted(set(names), key=lambda n: (rank.get(n, len(rank)), n))


def by_cohort(devices: Sequence[PersonalizationResult], attribute: str,
              configured: Sequence[str] = ()) -> list[CohortOutcome]:
    """Outcomes per value of ``attribute`` (``platform`` or ``tier``)."""
    outcomes = []
    for name in cohort_order((getattr(d, attribute) for d in devices), configured):
        group = [d for d in devices if getattr(d, attribute) == name]
        counts = gain_counts(group)
        outcomes.append(CohortOutcome(
            name=name, devices=len(group),
            acc_global=_mean(d.acc_global for d in group),
            acc_personal=_mean(d.acc_personal for d in group),
            mean_gain=_mean(d.gain for d in group),
            fraction_gained=counts.gained / len(group),
            fraction_harmed=counts.harmed / len(group),
        ))
    return outcomes


def worst_decile(devices: Sequence[PersonalizationResult]) -> list[PersonalizationResult]:
    """The tenth of devices (at least one) left with the lowest accuracy after
    personalization: the users the product serves worst. Worst first; ties go to the
    device the global model served worse."""
    if not devices:
        return []
    size = max(1, math.ceil(len(devices) / 10))
    ranked = sorted(devices, key=lambda d: (d.acc_personal, d.acc_global, d.device_id))
    return ranked[:size]


def harmed(devices: Sequence[PersonalizationResult]) -> list[PersonalizationResult]:
    """Devices personalization made worse, most harmed first."""
    return sorted((d for d in devices if d.gain < -TIE), key=lambda d: (d.gain, d.device_id))


def _mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values)
