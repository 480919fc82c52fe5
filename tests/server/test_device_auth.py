"""SuperNode authentication with per-device keys, and a device id bound to its node."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from devicetune.errors import ConfigError
from devicetune.server.device_keys import generate_device_keys, read_nodes
from tests.conftest import run_cli, small_config
from tests.server.conftest import Federation, metrics_rows, serve_config, tls_files, wait_for


def test_only_registered_devices_join_and_a_claimed_id_is_refused(
        tmp_path: Path, federation: Federation, small_artifacts: Path) -> None:
    keys = tmp_path / "keys"
    generate_device_keys(keys, 4)
    config_path, config = serve_config(
        tmp_path, rounds=1, devices=4, insecure=False, device_keys=str(keys),
        devices_per_round=3, min_devices=2, **tls_files(tmp_path / "tls"))
    out = tmp_path / "run"
    server = federation.serve(config_path, out, "--artifacts", str(small_artifacts))
    wait_for(lambda: (out / "flower" / "device_nodes.json").exists(), "the registered keys")
    nodes = read_nodes(out)
    assert sorted(nodes) == [0, 1, 2, 3] and len(set(nodes.values())) == 4
    for device_id in range(3):
        federation._start([sys.executable, "-m", "devicetune", "device", str(config_path),
                           "--superlink", f"127.0.0.1:{config.server.port}", "--device-id",
                           str(device_id), "--auth-key", str(keys / f"device-{device_id}")],
                          f"device-{device_id}")
    # Device 3's key, claiming to be device 1: registered, so it connects; refused.
    federation._start([sys.executable, "-m", "devicetune", "device", str(config_path),
                       "--superlink", f"127.0.0.1:{config.server.port}", "--device-id", "1",
                       "--auth-key", str(keys / "device-3")], "rogue-keyed")
    # A SuperNode with a key of its own (not registered): the SuperLink refuses it.
    stranger = tmp_path / "stranger"
    generate_device_keys(stranger, 1)
    federation._start([sys.executable, "-m", "devicetune", "device", str(config_path),
                       "--superlink", f"127.0.0.1:{config.server.port}", "--device-id", "0",
                       "--auth-key", str(stranger / "device-0")], "rogue-stranger")
    assert federation.wait(server) == 0, federation.output(server)
    log = (out / "server.log").read_text()
    assert f"refused node {nodes[3]}: it claims device 1, which is bound to node " \
           f"{nodes[1]}" in log, log[-3000:]
    (row,) = metrics_rows(out)
    assert row["completed"] == 3
    superlink_log = (out / "superlink.log").read_text()
    assert "SuperNode authentication is disabled" not in superlink_log
    _, stranger_err = federation.output(federation.processes[-1])
    # Never admitted: Flower's activation fails, and the device says so in one line.
    assert "Failed to activate SuperNode" in stranger_err, stranger_err[-2000:]
    assert stranger_err.strip().splitlines()[-1].startswith(
        "device 0: the SuperLink at 127.0.0.1:"), stranger_err[-2000:]
    assert "refused this device" in stranger_err


def test_device_keys_need_tls_and_a_key_per_device(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_device_keys(keys, 2)
    with pytest.raises(ConfigError, match="device_keys needs insecure = false"):
        small_config(server={"insecure": True, "device_keys": str(keys)})
    config_path, _ = serve_config(tmp_path, name="tls.toml", devices=3, insecure=False,
                                  device_keys=str(keys), **tls_files(tmp_path / "tls"))
    result = run_cli("serve", str(config_path), "--out", str(tmp_path / "run"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "device-2.pub is missing" in result.stderr
    device = run_cli("device", str(config_path), "--superlink", "127.0.0.1:9", "--device-id",
                     "0")
    assert device.returncode == 2 and "--auth-key" in device.stderr, device.stderr
    again = run_cli("keys", "devices", "--out", str(keys), "--devices", "2")
    assert again.returncode == 2 and "already exists" in again.stderr
