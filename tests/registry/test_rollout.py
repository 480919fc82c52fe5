from __future__ import annotations

import pytest
from pydantic import ValidationError

from devicetune.errors import NotInRegistry
from devicetune.registry.rollout import BUCKETS, RolloutArm, RolloutPolicy, assign, bucket

DEVICES = [f"device-{i}" for i in range(100_000)]


def shares(policy: RolloutPolicy, published: list[int]) -> dict[int, float]:
    counts: dict[int, int] = {}
    for device in DEVICES:
        version = assign(policy, "har", device, published).version
        counts[version] = counts.get(version, 0) + 1
    return {v: 100 * n / len(DEVICES) for v, n in counts.items()}


def test_buckets_cover_the_range_and_are_independent_between_models() -> None:
    seen = {bucket("har", d) for d in DEVICES}
    assert min(seen) == 0 and max(seen) == BUCKETS - 1
    # The first 10 % of one model's rollout is not the first 10 % of every model's.
    early_har = {d for d in DEVICES if bucket("har", d) < BUCKETS // 10}
    early_kws = {d for d in early_har if bucket("kws", d) < BUCKETS // 10}
    assert abs(100 * len(early_kws) / len(early_har) - 10) < 1


@pytest.mark.parametrize("percent", [1, 10, 33.33, 50, 90])
def test_share_is_within_one_point_of_the_percentage(percent: float) -> None:
    policy = RolloutPolicy(default_version=1, arms=[RolloutArm(version=2, percent=percent)])
    assert abs(shares(policy, [1, 2]).get(2, 0) - percent) < 1


def test_raising_the_percentage_keeps_earlier_devices_on_the_new_version() -> None:
    small = RolloutPolicy(default_version=1, arms=[RolloutArm(version=2, percent=10)])
    large = RolloutPolicy(default_version=1, arms=[RolloutArm(version=2, percent=50)])
    early = {d for d in DEVICES if assign(small, "har", d, [1, 2]).version == 2}
    later = {d for d in DEVICES if assign(large, "har", d, [1, 2]).version == 2}
    assert early < later


def test_ab_cohorts_split_as_set_and_name_the_cohort() -> None:
    policy = RolloutPolicy(default_version=1, arms=[
        RolloutArm(version=2, percent=25, cohort="A"),
        RolloutArm(version=3, percent=25, cohort="B")])
    got = shares(policy, [1, 2, 3])
    assert abs(got[2] - 25) < 1 and abs(got[3] - 25) < 1 and abs(got[1] - 50) < 1
    answer = assign(policy, "har", DEVICES[0], [1, 2, 3])
    assert answer.cohort == {1: None, 2: "A", 3: "B"}[answer.version]


def test_without_a_policy_everyone_gets_the_newest_version() -> None:
    assert {assign(RolloutPolicy(), "har", d, [1, 4, 2]).version for d in DEVICES[:1000]
            } == {4}
    with pytest.raises(NotInRegistry):
        assign(RolloutPolicy(), "har", "d", [])


@pytest.mark.parametrize("arms", [
    [{"version": 2, "percent": 60}, {"version": 3, "percent": 50}],
    [{"version": 2, "percent": 10.001}],
    [{"version": 2, "percent": 10, "cohort": "A"}, {"version": 3, "percent": 10,
                                                    "cohort": "A"}],
    [{"version": 2, "percent": 0}],
    [{"version": 2, "percent": 10, "cohort": "../x"}],
])
def test_impossible_policies_are_refused(arms: list[dict[str, object]]) -> None:
    with pytest.raises(ValidationError):
        RolloutPolicy.model_validate({"default_version": 1, "arms": arms})
