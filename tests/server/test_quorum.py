"""Quorum in process: a round below ``min_devices`` valid updates changes nothing, is
retried as configured, and gives up with a message that says what to do."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devicetune.device.runtime import LiteRTDevice
from devicetune.fleet.grid import InlineGrid
from devicetune.fleet.messages import TrainInstructions
from devicetune.fleet.population import Population
from devicetune.server.loop import FederatedLoop
from devicetune.server.quorum import QuorumFailure, QuorumPolicy, run_round_with_quorum
from devicetune.server.strategies import make_strategy
from tests.conftest import small_config


def _setup(small_artifacts: Path, data_dir: Path, min_devices: int, dropout: float):
    config = small_config(fleet={"devices": 6, "dropout": dropout},
                          server={"devices_per_round": 4, "min_devices": min_devices})
    population = Population.from_config(config.fleet, config.seed, data_dir)
    runtime = LiteRTDevice(small_artifacts / "model.tflite", 0.005)
    loop = FederatedLoop(
        strategy=make_strategy(config.server), names=runtime.weight_names,
        weights=runtime.get_weights(), devices_per_round=4,
        instructions=TrainInstructions(0, local_epochs=1, learning_rate=0.005),
        max_update_norm=50.0, evaluate=lambda w: {"accuracy": 0.5}, seed=1,
        min_devices=min_devices)
    return loop, InlineGrid(population, {"android": runtime})


def test_a_round_with_its_quorum_counts_at_once(small_artifacts: Path,
                                                data_dir: Path) -> None:
    loop, grid = _setup(small_artifacts, data_dir, min_devices=4, dropout=0.0)
    start = [w.copy() for w in loop.weights]
    record = run_round_with_quorum(loop, grid, 1, QuorumPolicy(4, 10.0, "retry", 2))
    assert not isinstance(record, QuorumFailure)
    assert record.completed == 4 and record.extra["attempts"] == 1
    assert any(not np.array_equal(a, b) for a, b in zip(loop.weights, start, strict=True))


def test_a_round_without_its_quorum_is_retried_then_given_up(small_artifacts: Path,
                                                             data_dir: Path) -> None:
    loop, grid = _setup(small_artifacts, data_dir, min_devices=4, dropout=0.6)
    start = [w.copy() for w in loop.weights]
    failure = run_round_with_quorum(loop, grid, 3, QuorumPolicy(4, 10.0, "retry", 2))
    assert isinstance(failure, QuorumFailure)
    assert len(failure.attempts) == 3  # the first try and two retries
    assert all(a.extra.get("quorum") is False and a.completed < 4 for a in failure.attempts)
    for ours, theirs in zip(loop.weights, start, strict=True):
        np.testing.assert_array_equal(ours, theirs)  # nothing below quorum is aggregated
    message = failure.describe()
    assert "round 3" in message and "3 attempts" in message and "--resume" in message

    stop = run_round_with_quorum(loop, grid, 3, QuorumPolicy(4, 10.0, "stop", 2))
    assert isinstance(stop, QuorumFailure) and len(stop.attempts) == 1
