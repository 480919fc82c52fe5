"""The server's committed state: round trips, refusals, and resuming a strategy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devicetune.device.runtime import LiteRTDevice
from devicetune.errors import ArtifactError, ServerError
from devicetune.fleet.grid import InlineGrid
from devicetune.fleet.messages import TrainInstructions
from devicetune.fleet.population import Population
from devicetune.server.loop import FederatedLoop
from devicetune.server.state import (
    STATE_FILE,
    ServerState,
    check_resumable,
    commit_state,
    hold_run_folder,
    load_state,
    optimizer_state,
    restore_optimizer_state,
    trim_metrics,
)
from devicetune.server.strategies import make_strategy
from tests.conftest import small_config


def _state(round_: int = 3) -> ServerState:
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(16, 6)).astype(np.float32), rng.normal(size=6).astype(np.float32)]
    return ServerState(
        round=round_, strategy="fedadam", names=["kernel", "bias"], weights=weights,
        artifact_sha256="ab" * 32,
        optimizer={"m_t": {"kernel": weights[0] * 0.1, "bias": weights[1] * 0.1},
                   "v_t": {"kernel": weights[0] ** 2, "bias": weights[1] ** 2}},
        privacy={"format": "devicetune.privacy-ledger/1", "entries": []})


def test_a_committed_state_loads_back_exactly(tmp_path: Path) -> None:
    state = _state()
    commit_state(tmp_path, state)
    loaded = load_state(tmp_path)
    assert (loaded.round, loaded.strategy, loaded.names) == (3, "fedadam", ["kernel", "bias"])
    assert loaded.privacy == state.privacy and loaded.artifact_sha256 == state.artifact_sha256
    for ours, theirs in zip(loaded.weights, state.weights, strict=True):
        np.testing.assert_array_equal(ours, theirs)
    for slot in ("m_t", "v_t"):
        for name in ("kernel", "bias"):
            np.testing.assert_array_equal(loaded.optimizer[slot][name],
                                          state.optimizer[slot][name])
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temporary file left


@pytest.mark.parametrize("damage", ["truncated", "flipped", "foreign", "empty"])
def test_a_damaged_state_is_refused_with_one_line(tmp_path: Path, damage: str) -> None:
    commit_state(tmp_path, _state())
    path = tmp_path / STATE_FILE
    data = bytearray(path.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "flipped":  # inside the first weight array's payload
        data[len(data) // 2] ^= 0xFF
    elif damage == "foreign":
        import io

        buffer = io.BytesIO()
        np.savez(buffer, weights=np.zeros(3))
        data = bytearray(buffer.getvalue())
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as error:
        load_state(tmp_path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_resuming_without_a_state_says_so(tmp_path: Path) -> None:
    with pytest.raises(ServerError, match="no server state to resume"):
        load_state(tmp_path)


@pytest.mark.parametrize("change", ["strategy", "shape", "artifact"])
def test_a_state_of_another_run_is_refused(tmp_path: Path, change: str) -> None:
    state = _state()
    expected = dict(strategy="fedadam", names=["kernel", "bias"], shapes=[(16, 6), (6,)],
                    artifact_sha256="ab" * 32, where=tmp_path / STATE_FILE)
    check_resumable(state, **expected)  # the matching run is accepted
    if change == "strategy":
        expected["strategy"] = "fedavg"
    elif change == "shape":
        expected["shapes"] = [(32, 6), (6,)]
    else:
        expected["artifact_sha256"] = "cd" * 32
    with pytest.raises(ServerError):
        check_resumable(state, **expected)


def test_metrics_rows_past_the_committed_round_are_dropped(tmp_path: Path) -> None:
    rows = [json.dumps({"round": r, "completed": 3}) for r in (1, 2, 3)]
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"round": 4, "compl')
    assert trim_metrics(tmp_path, 2) == 2
    kept = [json.loads(line)["round"] for line in
            (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert kept == [1, 2]
    assert trim_metrics(tmp_path, 2) == 0


def test_the_folder_is_held_until_its_holder_dies(tmp_path: Path) -> None:
    code = ("import sys, time; from devicetune.server.state import hold_run_folder\n"
            "with hold_run_folder(sys.argv[1]):\n"
            "    print('held', flush=True); time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ServerError, match="in use by another devicetune server"), \
                hold_run_folder(tmp_path):
            pass
        holder.kill()  # SIGKILL: no cleanup runs, the kernel releases the lock
        holder.wait()
        with hold_run_folder(tmp_path, wait_s=5):
            pass
    finally:
        holder.kill()
        holder.wait()


def _loop(small_artifacts: Path, strategy: str) -> FederatedLoop:
    config = small_config(server={"strategy": strategy, "server_learning_rate": 0.05})
    runtime = LiteRTDevice(small_artifacts / "model.tflite", 0.005)
    return FederatedLoop(
        strategy=make_strategy(config.server), names=runtime.weight_names,
        weights=runtime.get_weights(), devices_per_round=4,
        instructions=TrainInstructions(0, local_epochs=1, learning_rate=0.005),
        max_update_norm=50.0, evaluate=lambda w: {"accuracy": 0.0}, seed=1)


@pytest.mark.parametrize(("strategy", "slots"), [("fedadam", {"m_t", "v_t"}),
                                                  ("fedavgm", {"momentum_vector"})])
def test_a_resumed_server_optimiser_continues_as_if_never_stopped(
        tmp_path: Path, data_dir: Path, small_artifacts: Path, strategy: str,
        slots: set[str]) -> None:
    """FedAdam's moments and FedAvgM's momentum are part of the state: three rounds
    straight and one round, commit, a fresh strategy restored from the file, two more
    rounds agree (FedAvgM's momentum was not saved before 2026-12-06)."""
    config = small_config()
    population = Population.from_config(config.fleet, config.seed, data_dir)
    runtime = LiteRTDevice(small_artifacts / "model.tflite", 0.005)
    straight = _loop(small_artifacts, strategy)
    for server_round in (1, 2, 3):
        straight.run_round(InlineGrid(population, {"android": runtime}), server_round)

    first = _loop(small_artifacts, strategy)
    first.run_round(InlineGrid(population, {"android": runtime}), 1)
    assert set(optimizer_state(first.strategy)) == slots
    commit_state(tmp_path, ServerState(1, strategy, first.names, first.weights, "x" * 64,
                                       optimizer_state(first.strategy)))
    state = load_state(tmp_path)
    resumed = _loop(small_artifacts, strategy)
    resumed.weights = state.weights
    restore_optimizer_state(resumed.strategy, state.optimizer)
    for server_round in (2, 3):
        resumed.run_round(InlineGrid(population, {"android": runtime}), server_round)
    for ours, theirs in zip(resumed.weights, straight.weights, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)

    forgetful = _loop(small_artifacts, strategy)  # the same, without the moments
    forgetful.weights = state.weights
    for server_round in (2, 3):
        forgetful.run_round(InlineGrid(population, {"android": runtime}), server_round)
    assert max(float(np.abs(a - b).max())
               for a, b in zip(forgetful.weights, straight.weights, strict=True)) > 1e-4
