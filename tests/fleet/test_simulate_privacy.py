"""Differential privacy in a simulation: accounting, the budget gate, clipping, DP-SGD."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from devicetune.device.runtime import LiteRTDevice
from devicetune.fleet.grid import InlineGrid
from devicetune.fleet.messages import TrainInstructions
from devicetune.fleet.population import Population
from devicetune.fleet.simulate import simulate
from devicetune.privacy.accounting import device_epsilon, epsilon
from devicetune.server.loop import FederatedLoop
from devicetune.server.private import private_setup
from devicetune.server.strategies import make_strategy
from tests.conftest import small_config

DP = {"mode": "fixed", "noise_multiplier": 1.1, "clip_norm": 0.5}


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_epsilon_per_round_equals_dp_accounting(tmp_path: Path, data_dir: Path,
                                                small_artifacts: Path) -> None:
    config = small_config(fleet={"devices": 40}, server={"rounds": 4, "devices_per_round": 8},
                          privacy=DP)
    simulate(config, tmp_path, data_dir, artifacts=small_artifacts, engine="vectorized")
    q = 8 / 40
    for k, row in enumerate(rows(tmp_path), start=1):
        assert row["epsilon_rdp"] == epsilon(k, 1.1, q, 1e-5, "rdp")
        assert abs(row["epsilon_pld"] - epsilon(k, 1.1, q, 1e-5, "pld")) < 1e-9
        assert row["epsilon_pld"] < row["epsilon_rdp"]


def test_the_gate_stops_at_exactly_the_round_that_would_overspend(
        tmp_path: Path, data_dir: Path, small_artifacts: Path) -> None:
    q, budget = 10 / 40, 3.0
    allowed = max(k for k in range(1, 60) if epsilon(k, 1.1, q, 1e-5, "rdp") <= budget)
    config = small_config(fleet={"devices": 40},
                          server={"rounds": allowed + 5, "devices_per_round": 10},
                          privacy={**DP, "max_epsilon": budget})
    result = simulate(config, tmp_path, data_dir, artifacts=small_artifacts,
                      engine="vectorized")
    assert len(rows(tmp_path)) == allowed
    assert f"round {allowed + 1} would raise epsilon" in result.summary["stopped"]
    assert f"the budget allowed {allowed} rounds" in result.summary["stopped"]
    assert result.summary["privacy"]["epsilon_rdp"] <= budget


def test_every_aggregated_update_respects_the_clip_bound(data_dir: Path,
                                                         small_artifacts: Path) -> None:
    clip = 0.01  # far below the raw update norms, so every update is clipped
    config = small_config(fleet={"devices": 30, "dropout": 0.0, "availability": 1.0},
                          server={"devices_per_round": 10},
                          privacy={"mode": "fixed", "noise_multiplier": 0.0,
                                   "clip_norm": clip})
    population = Population.from_config(config.fleet, config.seed, data_dir)
    runtime = LiteRTDevice(small_artifacts / "model.tflite", 0.005)
    strategy, guard = private_setup(config, make_strategy(config.server), 30, seed=0)
    loop = FederatedLoop(strategy=strategy, privacy=guard, names=runtime.weight_names,
                         weights=runtime.get_weights(), devices_per_round=10,
                         instructions=TrainInstructions(0, 1, 0.005), max_update_norm=1e6,
                         evaluate=lambda w: {"accuracy": 0.0}, seed=0)
    grid = InlineGrid(population, {"android": runtime})
    for server_round in (1, 2, 3):
        before = [w.copy() for w in loop.weights]
        record = loop.run_round(grid, server_round)
        assert record.completed > 0
        step = np.sqrt(sum(np.sum((a.astype(np.float64) - b) ** 2)
                           for a, b in zip(loop.weights, before, strict=True)))
        # (sum of clipped updates) / expected devices: at most completed * C / 10.
        assert step <= record.completed * clip / 10 * (1 + 1e-4)
        assert strategy.last["unclipped_fraction"] == 0.0
        assert step > 0.5 * clip / 10  # the updates were not zeroed either


def test_devices_training_with_dp_sgd_report_their_epsilon(tmp_path: Path, data_dir: Path,
                                                           small_artifacts: Path) -> None:
    config = small_config(fleet={"devices": 6, "availability": 1.0, "dropout": 0.0,
                                 "local_epochs": 2},
                          server={"rounds": 3, "devices_per_round": 6},
                          privacy={"device": {"enabled": True}})
    result = simulate(config, tmp_path, data_dir, artifacts=small_artifacts)
    device = result.summary["device_privacy"]
    assert device["devices"] == 6
    # Every device trained in all 3 rounds: 3 rounds x 2 epochs x its batches.
    examples = [len(Population.from_config(config.fleet, config.seed, data_dir)
                    .local_data(k).train) for k in range(6)]
    expected = [device_epsilon(3 * 2 * -(-n // 8), 1.0, 8, n, 1e-5) for n in examples]
    assert abs(device["epsilon_max"] - max(expected)) < 1e-9
    assert abs(device["epsilon_median"] - float(np.median(expected))) < 1e-9
