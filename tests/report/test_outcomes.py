"""Who gained and who lost: counts, cohorts, the worst-served tenth."""

from __future__ import annotations

import pytest

from devicetune.report.outcomes import by_cohort, cohort_order, gain_counts, harmed, worst_decile
from devicetune.run_files import PersonalizationResult


def _device(device_id: int, before: float, after: float, platform: str = "android",
            tier: str = "mid") -> PersonalizationResult:
    return PersonalizationResult(device_id, platform, tier, n_train=10, n_test=10,
                                 acc_global=before, acc_personal=after, epochs=3,
                                 kept_global=before == after)


FLEET = [_device(i, 0.5 + i / 100, 0.5 + i / 100 + (i % 3 - 1) / 10,
                 platform="ios" if i % 2 else "android", tier=("high", "mid", "low")[i % 3])
         for i in range(25)]


def test_gains_are_counted_by_sign_with_ratios_that_tie() -> None:
    counts = gain_counts([_device(0, 0.6, 0.7), _device(1, 1 / 3, 2 / 6),
                          _device(2, 0.7, 0.6)])
    assert (counts.gained, counts.unchanged, counts.harmed, counts.total) == (1, 1, 1, 3)


def test_the_worst_decile_is_the_lowest_tenth_after_personalization() -> None:
    decile = worst_decile(FLEET)
    assert len(decile) == 3  # ceil(25 / 10)
    rest = [d for d in FLEET if d not in decile]
    assert max(d.acc_personal for d in decile) <= min(d.acc_personal for d in rest)
    assert [d.acc_personal for d in decile] == sorted(d.acc_personal for d in decile)
    assert worst_decile(FLEET[:1]) == FLEET[:1] and worst_decile([]) == []


def test_cohorts_are_means_over_their_devices() -> None:
    tiers = by_cohort(FLEET, "tier", configured=["high", "mid", "low"])
    assert [c.name for c in tiers] == ["high", "mid", "low"]
    assert sum(c.devices for c in tiers) == 25
    high = [d for d in FLEET if d.tier == "high"]
    assert tiers[0].mean_gain == pytest.approx(-0.1)  # i % 3 == 0: every one lost 10 points
    assert tiers[0].fraction_harmed == 1.0 and tiers[0].devices == len(high)
    assert tiers[0].acc_global == pytest.approx(sum(d.acc_global for d in high) / len(high))


def test_unknown_cohorts_sort_after_known_ones() -> None:
    assert cohort_order(["zeta", "low", "ios", "high", "alpha", "android"]) == \
        ["android", "ios", "high", "low", "alpha", "zeta"]


def test_harmed_lists_the_most_harmed_first() -> None:
    worst = harmed([_device(0, 0.9, 0.8), _device(1, 0.9, 0.5), _device(2, 0.5, 0.9)])
    assert [d.device_id for d in worst] == [1, 0]
