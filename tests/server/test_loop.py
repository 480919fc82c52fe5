"""The round loop with real devices behind an in-process grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicetune.device.runtime import LiteRTDevice
from devicetune.fleet.grid import InlineGrid, device_id
from devicetune.fleet.messages import (
    ARRAYS,
    METRICS,
    TrainInstructions,
    record_to_weights,
    weights_to_record,
)
from devicetune.fleet.population import Population
from devicetune.server.loop import FederatedLoop
from devicetune.server.state import optimizer_state
from devicetune.server.strategies import make_strategy
from tests.conftest import small_config


class RecordingGrid(InlineGrid):
    """The inline grid, keeping a copy of every reply it delivers."""

    tamper = staticmethod(lambda index, weights: weights)

    def send_and_receive(self, messages, *, timeout=None):
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for index, reply in enumerate(replies):
            names, weights = record_to_weights(reply.content[ARRAYS])
            weights = self.tamper(index, weights)
            reply.content[ARRAYS] = weights_to_record(names, weights)
        self.delivered = replies
        return replies


def make_loop(small_artifacts: Path, data_dir: Path, **fleet):
    config = small_config(fleet={"devices": 10, **fleet},
                          server={"devices_per_round": 6, "min_devices": 1})
    population = Population.from_config(config.fleet, config.seed, data_dir)
    runtime = LiteRTDevice(small_artifacts / "model.tflite", 0.005)
    loop = FederatedLoop(
        strategy=make_strategy(config.server), names=runtime.weight_names,
        weights=runtime.get_weights(), devices_per_round=6,
        instructions=TrainInstructions(0, local_epochs=1, learning_rate=0.005),
        max_update_norm=50.0, evaluate=lambda w: {"accuracy": 0.0}, seed=1)
    return loop, RecordingGrid(population, {"android": runtime})


def fedavg(replies) -> list[np.ndarray]:
    weights = [record_to_weights(r.content[ARRAYS])[1] for r in replies]
    counts = np.array([r.content[METRICS]["num-examples"] for r in replies])
    return [sum(c * w[i] for c, w in zip(counts, weights, strict=True)) / counts.sum()
            for i in range(len(weights[0]))]


def test_dropped_devices_are_counted_and_not_aggregated(small_artifacts: Path,
                                                        data_dir: Path) -> None:
    loop, grid = make_loop(small_artifacts, data_dir, dropout=0.5)
    record = loop.run_round(grid, 1)
    assert record.sampled == 6 and record.dropped == len(grid.dropped) > 0
    assert record.completed == len(grid.delivered) == 6 - record.dropped
    replied = {device_id(r.metadata.src_node_id) for r in grid.delivered}
    assert replied.isdisjoint(grid.dropped)
    for ours, expected in zip(loop.weights, fedavg(grid.delivered), strict=True):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", ["nan", "shape", "norm"])
def test_bad_updates_are_rejected_and_counted(small_artifacts: Path, data_dir: Path,
                                              bad: str) -> None:
    loop, grid = make_loop(small_artifacts, data_dir, dropout=0.0)
    start = [w.copy() for w in loop.weights]

    def tamper(index: int, weights: list[np.ndarray]) -> list[np.ndarray]:
        if index % 2:  # every other device misbehaves
            return weights
        if bad == "nan":
            weights[0] = weights[0].copy()
            weights[0][0, 0] = np.nan
        elif bad == "shape":
            weights[1] = np.zeros(weights[1].shape[0] + 1, np.float32)
        else:  # an update whose norm is 1000 times the bound of 50
            size = sum(x.size for x in start)
            weights = [s + np.float32(1000 * 50.0 / np.sqrt(size)) for s in start]
        return weights

    grid.tamper = staticmethod(tamper)
    record = loop.run_round(grid, 1)
    assert record.rejected == 3 and record.completed == 3
    honest = [r for i, r in enumerate(grid.delivered) if i % 2]
    for ours, expected in zip(loop.weights, fedavg(honest), strict=True):
        np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("strategy", ["fedadam", "fedavgm"])
def test_a_refused_round_leaves_no_trace_in_the_server_optimiser(
        small_artifacts: Path, data_dir: Path, strategy: str) -> None:
    """A round the acceptance check refuses is not committed, and its pseudo-gradient
    must not stay in FedAdam's moments or FedAvgM's momentum either: round 3 after a
    refused round 2 is round 3 run straight after round 1 (sampling, dropouts and
    FedAdam's bias correction are per round number, so the two are comparable)."""
    def run(rounds: list[int], refuse: set[int]) -> FederatedLoop:
        loop, grid = make_loop(small_artifacts, data_dir, dropout=0.0)
        loop.strategy = make_strategy(
            small_config(server={"strategy": strategy, "server_momentum": 0.9}).server)
        for server_round in rounds:
            loop.accept = lambda current, candidate, r=server_round: (r not in refuse, 0.5)
            loop.run_round(grid, server_round)
        return loop

    refused = run([1, 2, 3], refuse={2})
    skipped = run([1, 3], refuse=set())
    moved = run([1, 2, 3], refuse=set())
    for ours, expected in zip(refused.weights, skipped.weights, strict=True):
        np.testing.assert_allclose(ours, expected, rtol=1e-6, atol=1e-7)
    state, expected_state = optimizer_state(refused.strategy), optimizer_state(skipped.strategy)
    assert state and state.keys() == expected_state.keys()
    for slot, values in state.items():
        for name, value in values.items():
            np.testing.assert_allclose(value, expected_state[slot][name], rtol=1e-6,
                                       atol=1e-7)
    # And the comparison can fail: committing round 2 gives another round 3.
    assert any(not np.allclose(a, b) for a, b in zip(moved.weights, skipped.weights,
                                                     strict=True))
