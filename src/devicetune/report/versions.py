"""A server's model versions against their parents, per cohort, with regressions flagged.

Each line of ``versions.jsonl`` is a version the server emitted or refused::

    {"version": 3, "parent_version": 2, "round": 12, "emitted": true, "reason": null,
     "metrics": {"accuracy": 0.91, "by_platform": {"android": 0.92, "ios": 0.89},
                 "by_tier": {"high": 0.93, "mid": 0.91, "low": 0.88}},
     "parent_metrics": {...same shape...} | null}

A cohort regresses when its accuracy falls more than ``tolerance`` below the parent's:
the same bound the emit gate holds the whole fleet to (``emit.max_regression``), applied
to each platform and tier, where an average can hide a group that lost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devicetune.report.outcomes import cohort_order

OVERALL = "all devices"


@dataclass(frozen=True)
class CohortDelta:
    """One cohort of one version: its accuracy, its parent's, and whether it regressed."""

    cohort: str
    accuracy: float | None
    parent: float | None
    regressed: bool

    @property
    def delta(self) -> float | None:
        if self.accuracy is None or self.parent is None:
            return None
        return self.accuracy - self.parent


@dataclass(frozen=True)
class VersionComparison:
    """A version against its parent, cohort by cohort (``all devices`` first)."""

    version: int | None
    parent_version: int | None
    round: int | None
    emitted: bool
    reason: str | None
    cohorts: tuple[CohortDelta, ...]

    @property
    def regressed(self) -> list[str]:
        """The cohorts that fell more than the tolerance below the parent."""
        return [c.cohort for c in self.cohorts if c.regressed]


def compare_versions(versions: Sequence[dict[str, Any]], tolerance: float,
                     tiers: Sequence[str] = ()) -> list[VersionComparison]:
    """Every version of ``versions.jsonl`` against its parent, in file order.

    Args:
        tolerance: the accuracy drop (0..1) a cohort may take before it is flagged.
        tiers: the configured tier names, to order the tier columns.
    """
    names = cohort_names(versions, tiers)
    comparisons = []
    for entry in versions:
        ours = _cohorts(entry.get("metrics"))
        parents = _cohorts(entry.get("parent_metrics"))
        cohorts = []
        for name in names:
            accuracy, parent = ours.get(name), parents.get(name)
            regressed = (accuracy is not None and parent is not None
                         and accuracy < parent - tolerance - 1e-12)
            cohorts.append(CohortDelta(name, accuracy, parent, regressed))
        comparisons.append(VersionComparison(
            version=_int(entry.get("version")), parent_version=_int(entry.get("parent_version")),
            round=_int(entry.get("round")), emitted=entry.get("emitted") is True,
            reason=entry.get("reason") if isinstance(entry.get("reason"), str) else None,
            cohorts=tuple(cohorts),
        ))
    return comparisons


def cohort_names(versions: Sequence[dict[str, Any]], tiers: Sequence[str] = ()) -> list[str]:
    """``all devices``, then every platform, then every tier any version reports."""
    platforms: set[str] = set()
    tier_names: set[str] = set()
    for entry in versions:
        for key in ("metrics", "parent_metrics"):
            metrics = entry.get(key)
            if isinstance(metrics, dict):
                platforms.update(_group(metrics, "by_platform"))
                tier_names.update(_group(metrics, "by_tier"))
    return [OVERALL, *cohort_order(platforms), *cohort_order(tier_names, tiers)]


def _cohorts(metrics: Any) -> dict[str, float]:
    if not isinstance(metrics, dict):
        return {}
    values = {OVERALL: _float(metrics.get("accuracy"))}
    for group in ("by_platform", "by_tier"):
        values.update({k: _float(v) for k, v in _group(metrics, group).items()})
    return {k: v for k, v in values.items() if v is not None}


def _group(metrics: dict[str, Any], key: str) -> dict[str, Any]:
    group = metrics.get(key)
    return group if isinstance(group, dict) else {}


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
