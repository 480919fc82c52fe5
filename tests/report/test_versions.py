"""Versions against their parents, per cohort: a cohort's loss is flagged even when the
average rose."""

from __future__ import annotations

from devicetune.report.versions import OVERALL, compare_versions
from tests.report.conftest import V1, V2, V3, VERSIONS, version


def _deltas(comparison) -> dict[str, float | None]:
    return {c.cohort: None if c.delta is None else round(100 * c.delta, 6)
            for c in comparison.cohorts}


def test_each_cohort_is_compared_with_the_parent() -> None:
    v1, v2, v3, v4 = compare_versions(VERSIONS, tolerance=0.02, tiers=["high", "mid", "low"])
    assert [c.cohort for c in v2.cohorts] == [OVERALL, "android", "ios", "high", "mid", "low"]
    assert _deltas(v1) == dict.fromkeys(_deltas(v1))  # the first version has no parent
    assert _deltas(v2) == {OVERALL: 4.0, "android": 4.0, "ios": 4.0, "high": 3.0,
                           "mid": 4.0, "low": 5.0}
    assert v3.regressed == ["ios"]  # +1 point overall, -6 on iOS
    assert (v4.emitted, v4.reason) == (False, "accuracy fell 15.0 points")


def test_a_drop_within_the_tolerance_is_not_flagged() -> None:
    _, _, v3, _ = compare_versions(VERSIONS, tolerance=0.06)
    assert v3.regressed == []  # exactly the tolerance: allowed
    _, _, v3, _ = compare_versions(VERSIONS, tolerance=0.0599)
    assert v3.regressed == ["ios"]


def test_the_configured_tier_order_orders_the_columns() -> None:
    (v,) = compare_versions([version(2, 1, V2, V1)], 0.02, tiers=["low", "mid", "high"])
    assert [c.cohort for c in v.cohorts][3:] == ["low", "mid", "high"]


def test_malformed_entries_compare_what_they_have() -> None:
    broken = [{"version": 5, "emitted": True, "metrics": {"accuracy": "high",
                                                          "by_platform": {"ios": 0.7}},
               "parent_metrics": {"by_platform": {"ios": 0.8}}},
              {"version": True, "metrics": None}]
    first, second = compare_versions(broken, tolerance=0.02)
    assert first.regressed == ["ios"] and _deltas(first)[OVERALL] is None
    assert second.version is None and not second.emitted and second.regressed == []
    assert compare_versions([version(3, 2, V3, V2)], 0.02)[0].parent_version == 2
