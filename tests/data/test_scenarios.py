"""The label-shift scenarios: synthetic pasts that hold only some classes, and natural
datasets grouped by class within each person. Cheap: numpy only, no builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicetune.config import parse_config
from devicetune.data import LabeledData
from devicetune.data.inspect import inspect_config
from devicetune.data.synthetic import SyntheticFleet
from devicetune.errors import ConfigError
from devicetune.fleet.population import Population
from tests.conftest import SMALL, small_config


def _population(fleet_data: dict, devices: int = 12, **kwargs) -> Population:
    config = small_config(fleet={"devices": devices, "data": fleet_data})
    return Population.from_config(config.fleet, config.seed, Path("."), **kwargs)


@pytest.mark.parametrize("past_classes", [1, 2, 4])
def test_disjoint_label_shift_pasts_hold_k_classes_and_futures_only_others(
    past_classes: int,
) -> None:
    shift = {"past_classes": past_classes, "future_overlap": 0.0}
    pop = _population({"windows_per_device": 40, "test_fraction": 0.4, "label_shift": shift})
    pasts = []
    for k in range(pop.devices):
        local = pop.local_data(k)
        past, future = set(local.train.y.tolist()), set(local.test.y.tolist())
        assert len(past) <= past_classes
        assert past.isdisjoint(future)  # every future window is of a class the past lacks
        assert future  # the future adds classes
        pasts.append(frozenset(past))
    assert len(set(pasts)) > 1  # devices lack different classes


def test_future_overlap_mixes_past_classes_back_in() -> None:
    shift = {"past_classes": 2, "future_overlap": 0.5}
    pop = _population({"windows_per_device": 80, "label_shift": shift}, devices=20)
    shares = []
    for k in range(pop.devices):
        local = pop.local_data(k)
        assert len(set(local.train.y.tolist())) <= 2
        shares.append(np.isin(local.test.y, local.train.y).mean())
    assert 0.3 < np.mean(shares) < 0.7  # about half the future is the past's classes


def test_without_label_shift_the_generator_is_unchanged() -> None:
    plain = _population({"windows_per_device": 30}, devices=3)

    fleet = SyntheticFleet(3, seed=SMALL["seed"], windows_per_device=30)
    for k in range(3):
        np.testing.assert_array_equal(plain.source.device(k).x, fleet.device(k).x)


def test_label_shift_is_refused_where_it_cannot_apply(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="label_shift"):
        small_config(fleet={"data": {"source": "har", "label_shift": {"past_classes": 2}}})
    with pytest.raises(ConfigError, match="past_classes"):
        small_config(fleet={"data": {"label_shift": {"past_classes": 0}}})
    with pytest.raises(ConfigError, match="future_overlap"):
        small_config(fleet={"data": {"label_shift": {"past_classes": 2, "future_overlap": 1.5}}})
    # 6 classes: nothing left to add. Refused when the config is read, before a run
    # folder or a build is written, and by the generator itself for Python callers.
    with pytest.raises(ConfigError, match="past_classes = 6: the synthetic task has 6 "
                       "classes; use 1..5"):
        small_config(fleet={"data": {"label_shift": {"past_classes": 6}}})
    with pytest.raises(ConfigError, match="past_classes = 6"):
        SyntheticFleet(3, label_shift=(6, 0.0))
    with pytest.raises(ConfigError, match="order"):
        small_config(fleet={"data": {"order": "by_class"}})


def _recorded_users(users: int = 5, per_user: int = 60, classes: int = 4) -> LabeledData:
    """People who alternate between activities (every past holds every class)."""
    rng = np.random.default_rng(0)
    n = users * per_user
    y = np.tile(np.arange(n // users) % classes, users)
    return LabeledData.from_arrays(
        rng.normal(size=(n, 3)).astype(np.float32), y, np.repeat(np.arange(users), per_user)
    )


def test_class_grouped_order_makes_pasts_lack_the_last_classes() -> None:
    data = _recorded_users()
    recorded = _population({}, devices=5, data=data)  # a team's arrays, given in Python
    grouped = _population({"order": "class_grouped"}, devices=5, data=data)
    firsts = []
    for k in range(5):
        before, after = recorded.source.device(k), grouped.source.device(k)
        # The same rows, regrouped: each class one contiguous run.
        assert sorted(map(tuple, before.x.tolist())) == sorted(map(tuple, after.x.tolist()))
        assert (np.diff(after.y) != 0).sum() == 3
        for label in range(4):  # within a class, the recorded order is kept
            np.testing.assert_array_equal(before.x[before.y == label], after.x[after.y == label])
        assert set(recorded.local_data(k).train.y.tolist()) == {0, 1, 2, 3}
        local = grouped.local_data(k)
        assert len(set(local.train.y.tolist())) == 2
        assert set(local.train.y.tolist()).isdisjoint(local.test.y.tolist())
        firsts.append(int(after.y[0]))
    assert len(set(firsts)) > 1  # each person has their own order of classes


def test_inspect_reports_how_much_a_scenario_s_pasts_lack(tmp_path: Path) -> None:
    raw = {
        **SMALL,
        "fleet": {
            **SMALL["fleet"],
            "devices": 8,
            "data": {
                "windows_per_device": 40,
                "label_shift": {"past_classes": 3, "future_overlap": 0.0},
            },
        },
    }
    import tomli_w

    path = tmp_path / "shift.toml"
    path.write_bytes(tomli_w.dumps(raw).encode())
    parse_config(raw)  # valid as written
    report = inspect_config(path, tmp_path, None)
    assert "label shift: pasts hold 3 classes" in report.source
    assert report.users_past_lacks_future_class == 8
    assert report.future_rows_unseen["p10"] == 1.0  # disjoint: every future row unseen
