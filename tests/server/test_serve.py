"""`devicetune serve` and `devicetune device` as real processes on 127.0.0.1: a SuperLink,
its ServerApp, and SuperNodes that are simulated phones running the artifact."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from devicetune.server.state import load_state
from tests.server.conftest import (
    Federation,
    inline_run,
    kill_tree,
    metrics_rows,
    port_is_free,
    saved_weights,
    serve_config,
    wait_for,
)


def _assert_weights_close(ours: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    # The same devices and seeds; only the order of summing replies may differ.
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_three_devices_complete_two_rounds_as_in_process(
        tmp_path: Path, federation: Federation, small_artifacts: Path,
        data_dir: Path) -> None:
    config_path, config = serve_config(tmp_path)
    out = tmp_path / "run"
    server = federation.serve_with_devices(config_path, config, out, small_artifacts)
    assert federation.wait(server) == 0, federation.output(server)
    stdout, _ = federation.output(server)
    assert "round 2/2: 3 of 3 devices aggregated" in stdout

    rows = metrics_rows(out)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["sampled"] == r["completed"] == 3 for r in rows)
    weights, accuracy = inline_run(config, small_artifacts, data_dir, rounds=2)
    _assert_weights_close(saved_weights(out), weights)
    assert [r["global_accuracy"] for r in rows] == pytest.approx(accuracy, abs=1e-6)
    state = load_state(out)
    assert state.round == 2
    _assert_weights_close(state.weights, weights)
    assert json.loads((out / "outcome.json").read_text())["status"] == "completed"
    assert port_is_free(config.server.port)  # the SuperLink is gone


@pytest.mark.parametrize("quorum_holds", [True, False])
def test_a_device_killed_mid_round(tmp_path: Path, federation: Federation,
                                   small_artifacts: Path, quorum_holds: bool) -> None:
    """Device 2 dies once round 1 is committed: with min_devices 2 round 2 completes
    with the other two; with min_devices 3 it fails its quorum twice (a retry) and the
    server stops cleanly at round 1, ready to resume."""
    server_settings = dict(min_devices=2, on_quorum_failure="stop") if quorum_holds \
        else dict(min_devices=3, on_quorum_failure="retry", max_retries=1)
    config_path, config = serve_config(tmp_path, round_timeout_s=20, **server_settings)
    out = tmp_path / "run"
    server = federation.serve(config_path, out, "--artifacts", str(small_artifacts))
    devices = [federation.device(config_path, config.server.port, k) for k in range(3)]
    wait_for(lambda: len(metrics_rows(out)) >= 1 or server.poll() is not None, "round 1")
    kill_tree(devices[2])
    code = federation.wait(server)
    stdout, stderr = federation.output(server)
    rows = metrics_rows(out)
    if quorum_holds:
        assert code == 0, (stdout, stderr)
        assert [r["round"] for r in rows] == [1, 2]
        assert rows[1]["completed"] == 2
        assert rows[1]["completed"] + rows[1]["dropped"] == rows[1]["sampled"]
        assert load_state(out).round == 2
    else:
        assert code == 2, (stdout, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: round 2 got at most 2 valid")
        assert "2 attempts" in lines[0] and "--resume" in lines[0]
        assert [r["round"] for r in rows] == [1]
        assert load_state(out).round == 1
        outcome = json.loads((out / "outcome.json").read_text())
        assert outcome["status"] == "stopped" and outcome["last_round"] == 1
    assert port_is_free(config.server.port)


def test_a_killed_server_resumes_where_it_committed(
        tmp_path: Path, federation: Federation, small_artifacts: Path,
        data_dir: Path) -> None:
    """SIGKILL the server once round 2 is committed; `--resume` continues at the next
    round with the committed weights: the result is the uninterrupted federation's."""
    config_path, config = serve_config(tmp_path, rounds=4)
    out = tmp_path / "run"
    server = federation.serve_with_devices(config_path, config, out, small_artifacts)

    def committed() -> int:
        try:
            return load_state(out).round
        except Exception:  # not written yet
            return 0

    wait_for(lambda: committed() >= 2 or server.poll() is not None, "round 2 committed")
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    at_kill = committed()
    assert 2 <= at_kill < 4
    # Its SuperLink dies with it (parent-death signal), freeing the port.
    wait_for(lambda: port_is_free(config.server.port), "the old SuperLink to exit", 30)

    resumed = federation.serve(config_path, out, "--resume", "--artifacts",
                               str(small_artifacts), log_name="resumed")
    assert federation.wait(resumed) == 0, federation.output(resumed)
    stdout, _ = federation.output(resumed)
    assert f"resuming at round {at_kill + 1} of 4" in stdout
    rows = metrics_rows(out)
    assert [r["round"] for r in rows] == [1, 2, 3, 4]  # none lost or doubled
    weights, accuracy = inline_run(config, small_artifacts, data_dir, rounds=4)
    # Round by round first, with what the server said, so a failure shows which round
    # parted from the uninterrupted run and how many devices it had (this test failed
    # twice under a loaded two-worker make test and passed alone, also under load).
    said = (f"killed after round {at_kill}; rows: {rows}; the resumed server said: "
            f"{stdout[-3000:]}; its log: {(out / 'server.log').read_text()[-3000:]}"
            if (out / "server.log").exists() else f"rows: {rows}; {stdout[-3000:]}")
    assert [r["global_accuracy"] for r in rows] == pytest.approx(accuracy, abs=1e-6), said
    for a, b in zip(saved_weights(out), weights, strict=True):
        assert np.allclose(a, b, rtol=1e-5, atol=1e-6), \
            f"weights {np.abs(a - b).max():.3g} apart; {said}"


def test_the_privacy_ledger_survives_a_killed_server(
        tmp_path: Path, federation: Federation, small_artifacts: Path) -> None:
    """With DP on, the ledger is committed with every round: after a SIGKILL and
    `--resume` the committed entries are unchanged and epsilon only grows."""
    from devicetune.privacy.accounting import epsilon

    config_path, config = serve_config(
        tmp_path, rounds=4, privacy={"mode": "fixed", "noise_multiplier": 1.5,
                                     "clip_norm": 1.0})
    out = tmp_path / "run"
    server = federation.serve_with_devices(config_path, config, out, small_artifacts)

    def ledger() -> list[dict]:
        try:
            return load_state(out).privacy["ledger"]["entries"]
        except Exception:  # not written yet
            return []

    wait_for(lambda: len(ledger()) >= 2 or server.poll() is not None, "round 2 committed")
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    before = ledger()
    assert len(before) >= 2
    wait_for(lambda: port_is_free(config.server.port), "the old SuperLink to exit", 30)
    resumed = federation.serve(config_path, out, "--resume", "--artifacts",
                               str(small_artifacts), log_name="resumed")
    assert federation.wait(resumed) == 0, federation.output(resumed)
    after = ledger()
    assert [e["round"] for e in after] == [1, 2, 3, 4]
    assert after[:len(before)] == before  # nothing committed changed
    epsilons = [e["epsilon_rdp"] for e in after]
    assert epsilons == sorted(epsilons)
    # q = 3 devices per round / 3 devices: every round is the full-participation event.
    assert epsilons[-1] == pytest.approx(epsilon(4, 1.5, 1.0, 1e-5, "rdp"), rel=1e-9)
    assert [r["epsilon_rdp"] for r in metrics_rows(out)] == epsilons


def test_serve_emits_a_signed_version_that_an_app_downloads_and_runs(
        tmp_path: Path, federation: Federation, small_artifacts: Path) -> None:
    """End to end: rounds over real processes, a version emitted into the registry,
    served over HTTP, fetched and verified by a client, and its TFLite model run."""
    from devicetune.artifacts.keys import generate_key_pair
    from devicetune.device.litert import LiteRTModel
    from devicetune.registry import Registry, RegistryClient, RegistryServer

    keys = generate_key_pair(tmp_path / "keys")
    config_path, config = serve_config(
        tmp_path, rounds=2, emit={"enabled": True, "registry": str(tmp_path / "registry"),
                                  "private_key": str(keys.private_key),
                                  "every_rounds": 2, "max_regression": 1.0})
    out = tmp_path / "run"
    server = federation.serve_with_devices(config_path, config, out, small_artifacts)
    assert federation.wait(server) == 0, federation.output(server)
    versions = [json.loads(line) for line in (out / "versions.jsonl").read_text()
                .splitlines()]
    assert [(v["version"], v["emitted"], v["round"]) for v in versions] == [
        (1, True, 0), (2, True, 2)]
    stdout, _ = federation.output(server)
    assert "version 1 emitted (the build)" in stdout and \
        "version 2 emitted (parent v1), global accuracy" in stdout, stdout
    with RegistryServer(Registry(tmp_path / "registry"), token=None) as registry:
        client = RegistryClient(registry.url)
        latest = client.latest("small", device_id="phone-1", platform="android")
        assert latest.version == 2
        manifest = client.fetch("small", 2, tmp_path / "app", public_key=keys.public_key)
    assert manifest.parent_version == 1
    lite = LiteRTModel(tmp_path / "app" / "model.tflite")
    served = saved_weights(out)
    stored = lite.get_weights()
    for name, expected in zip(sorted(stored, key=lambda n: (int(n[5:n.index("_")]),
                                                            n.endswith("bias"))),
                              served, strict=True):
        np.testing.assert_array_equal(stored[name], expected)
    probabilities = lite.infer(np.zeros((1, 128, 9), np.float32))
    assert probabilities.shape == (1, 6)


def test_bad_updates_from_real_devices_are_rejected_and_counted(
        tmp_path: Path, federation: Federation, small_artifacts: Path) -> None:
    """Four SuperNodes: one honest, one sending NaN, one a wrong shape, one an update
    1000 times the norm bound. Only the honest update is aggregated."""
    config_path, config = serve_config(tmp_path, devices=4, rounds=1, devices_per_round=4,
                                       min_devices=1)
    out = tmp_path / "run"
    server = federation.serve_with_client_app(config_path, out, small_artifacts,
                                              "tests.server.faulty_devices:client_app")
    faults = {0: "", 1: "nan", 2: "shape", 3: "norm"}
    for device_id, fault in faults.items():
        node_config = {"device-id": device_id, "fault": fault,
                       "max-update-norm": config.server.max_update_norm}
        federation.supernode(config.server.port, node_config, f"device-{device_id}")
    assert federation.wait(server) == 0, federation.output(server)
    (row,) = metrics_rows(out)
    assert (row["sampled"], row["completed"], row["rejected"]) == (4, 1, 3)
    log = (out / "server.log").read_text()
    for device_id, reason in ((1, "NaN"), (2, "shape"), (3, "exceeds the bound")):
        assert any(f"rejected the update of device {device_id} " in line and reason in line
                   for line in log.splitlines()), reason


def test_a_federation_over_tls(tmp_path: Path, federation: Federation,
                               small_artifacts: Path) -> None:
    """The same federation with ``insecure = false``: the SuperLink serves TLS with the
    configured certificate, devices and Flower's CLI trust the configured CA."""
    from tests.server.conftest import tls_files

    config_path, config = serve_config(tmp_path, rounds=1, insecure=False,
                                       **tls_files(tmp_path / "tls"))
    out = tmp_path / "run"
    server = federation.serve_with_devices(config_path, config, out, small_artifacts)
    assert federation.wait(server) == 0, federation.output(server)
    stdout, _ = federation.output(server)
    assert "(TLS, certificate" in stdout
    (row,) = metrics_rows(out)
    assert row["completed"] == 3
