"""Federated rounds over devices whose pasts lack classes: the restricted softmax
(``server.class_mask``, FedRS) in both engines, FedAvgM, and the server's acceptance
check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from devicetune.config import parse_config
from devicetune.data.labeled import LabeledData
from devicetune.data.synthetic import SyntheticFleet
from devicetune.errors import ConfigError
from devicetune.fleet.simulate import simulate
from devicetune.server.acceptance import AcceptanceCheck
from devicetune.server.strategies import make_strategy
from tests.conftest import SMALL, small_config

LACKED = 5  # no device holds this class


class NoFives:
    """Synthetic users, each one's windows grouped by class (their past holds few
    classes), and class 5 dropped: a class every device lacks."""

    def __init__(self, devices: int) -> None:
        self.fleet = SyntheticFleet(devices, seed=3, windows_per_device=40)
        self.devices = devices
        self.class_names = self.fleet.class_names
        self.example_shape = self.fleet.example_shape

    def device(self, device_id: int) -> LabeledData:
        data = self.fleet.device(device_id)
        keep = np.flatnonzero(data.y != LACKED)
        order = keep[np.argsort((data.y[keep] - device_id) % 6, kind="stable")]
        return LabeledData.from_arrays(
            data.x[order],
            data.y[order],
            np.full(len(order), device_id),
            class_names=self.class_names,
        )


def _config(**server):
    return small_config(
        fleet={
            "devices": 8,
            "platform_mix": {"android": 0.5, "ios": 0.5},
            "local_epochs": 2,
            "personalization": {"epochs": 1, "compare_naive": False},
        },
        server={"rounds": 2, "devices_per_round": 6, **server},
    )


def _last_layer(path: Path) -> np.ndarray:
    with np.load(path) as weights:
        names = sorted(weights.files)
        kernel = [n for n in names if n.endswith("kernel")][-1]
        bias = [n for n in names if n.endswith("bias")][-1]
        return np.concatenate([weights[kernel][:, LACKED], weights[bias][[LACKED]]])


def test_class_mask_runs_alike_in_both_engines_and_keeps_a_lacked_class(
    tmp_path: Path, data_dir: Path, small_artifacts: Path
) -> None:
    source = NoFives(8)
    runs = {}
    for engine in ("inline", "vectorized"):
        runs[engine] = simulate(
            _config(class_mask=True),
            tmp_path / engine,
            data_dir,
            engine=engine,
            artifacts=small_artifacts,
            data=source,
        )
    simulate(
        _config(),
        tmp_path / "plain",
        data_dir,
        engine="vectorized",
        artifacts=small_artifacts,
        data=source,
    )
    rows = {
        e: [json.loads(line) for line in (tmp_path / e / "metrics.jsonl").read_text().splitlines()]
        for e in runs
    }
    for ours, theirs in zip(rows["vectorized"], rows["inline"], strict=True):
        assert ours["completed"] == theirs["completed"] > 0
        assert abs(ours["mean_local_loss"] - theirs["mean_local_loss"]) < 1e-4
        assert abs(ours["global_accuracy"] - theirs["global_accuracy"]) < 1e-4
    with (
        np.load(tmp_path / "inline" / "global_weights.npz") as a,
        np.load(tmp_path / "vectorized" / "global_weights.npz") as b,
    ):
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a.files) < 1e-4
        moved = max(float(np.abs(a[k] - w).max()) for k, w in _initial(small_artifacts))
        assert moved > 1e-3  # the rounds did train
    # Android (train_masked) and iOS (the frozen class_offset bias) devices alike left
    # the class no device holds where it was; without the mask every round pushed it.
    start = np.concatenate([w for _, w in _initial(small_artifacts, LACKED)])
    for engine in runs:
        np.testing.assert_allclose(
            _last_layer(tmp_path / engine / "global_weights.npz"), start, atol=1e-6
        )
    assert np.abs(_last_layer(tmp_path / "plain" / "global_weights.npz") - start).max() > 1e-3


def _initial(artifacts: Path, column: int | None = None):
    from devicetune.device.litert import LiteRTModel

    weights = LiteRTModel(artifacts / "model.tflite").get_weights()
    if column is None:
        return list(weights.items())
    kernel = sorted(n for n in weights if n.endswith("kernel"))[-1]
    bias = sorted(n for n in weights if n.endswith("bias"))[-1]
    return [(kernel, weights[kernel][:, column]), (bias, weights[bias][[column]])]


def test_acceptance_commits_only_rounds_that_keep_the_servers_accuracy(
    tmp_path: Path, data_dir: Path, small_artifacts: Path
) -> None:
    """Plain rounds on these pasts lower the server's accuracy: with no tolerance none
    is committed and the global model stays bit for bit. Masked rounds keep it within a
    point, and those are committed."""
    start = dict(_initial(small_artifacts))
    runs = {}
    for name, server in {
        "plain": {"acceptance_tolerance": 0.0},
        "masked": {"acceptance_tolerance": 0.01, "class_mask": True},
    }.items():
        simulate(
            _config(rounds=3, **server),
            tmp_path / name,
            data_dir,
            engine="vectorized",
            artifacts=small_artifacts,
            data=NoFives(8),
        )
        rows = [
            json.loads(line)
            for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]
        with np.load(tmp_path / name / "global_weights.npz") as final:
            moved = max(float(np.abs(final[k] - w).max()) for k, w in start.items())
        runs[name] = ([r["accepted"] for r in rows], [r["server_accuracy"] for r in rows], moved)
    accepted, _, moved = runs["plain"]
    assert accepted == [False, False, False] and moved == 0.0
    accepted, scores, moved = runs["masked"]
    assert True in accepted and moved > 1e-3
    best = max(s for s, a in zip(scores, accepted, strict=True) if a)
    assert all(s < best - 0.01 for s, a in zip(scores, accepted, strict=True) if not a)


def test_acceptance_check_holds_to_the_best_committed_accuracy() -> None:
    scores = {"start": 0.80, "better": 0.85, "slightly_worse": 0.84, "worse": 0.83}
    check = AcceptanceCheck(lambda w: scores[w[0]], tolerance=0.015)
    assert check(["start"], ["better"]) == (True, 0.85)
    assert check(["better"], ["slightly_worse"]) == (True, 0.84)
    # 0.83 is within the tolerance of the last round (0.84) but not of the best (0.85).
    assert check(["slightly_worse"], ["worse"]) == (False, 0.83)
    assert check.best == 0.85


def test_fedavgm_and_the_refusals_of_the_new_options() -> None:
    from flwr.serverapp.strategy import FedAvgM

    strategy = make_strategy(
        small_config(server={"strategy": "fedavgm", "server_momentum": 0.7}).server
    )
    assert isinstance(strategy, FedAvgM) and strategy.server_momentum == 0.7
    with pytest.raises(ConfigError, match="server.class_mask.*privacy.device"):
        small_config(
            server={"class_mask": True},
            privacy={"device": {"enabled": True}},
            fleet={**SMALL["fleet"], "platform_mix": {"android": 1.0}},
        )
    no_pretraining = {
        **SMALL["model"],
        "backbone": {"architecture": "conv1d_small", "embedding_dim": 16},
    }
    with pytest.raises(ConfigError, match="acceptance_tolerance.*pretrain"):
        parse_config({**SMALL, "model": no_pretraining, "server": {"acceptance_tolerance": 0.01}})
    with pytest.raises(ConfigError, match="acceptance_tolerance"):
        small_config(server={"acceptance_tolerance": 1.5})
    from devicetune.server.federation import check_serve_config

    with pytest.raises(ConfigError, match="acceptance_tolerance.*SecAgg"):
        check_serve_config(small_config(server={"secagg": True, "acceptance_tolerance": 0.01}))
