"""Seconds per round of a real Flower federation against its number of devices.

`devicetune serve` (a SuperLink, its SuperExec, the devicetune ServerApp) and N
`devicetune device` processes (each a SuperNode with its ClientApp running the build's
model.tflite in LiteRT) on this machine, over loopback, on the small synthetic model.
Every round samples all N devices and needs all N valid updates (min_devices = N), so a
lost update is a failed round, not a smaller one. Reported per N: seconds per round
(mean of the rounds after the first, which includes the ClientApps' cold start),
updates aggregated, and how often the SuperLink logged ``database is locked``.

Run:  .venv/bin/python benchmarks/serve_devices.py [--devices 5,10,20] [--rounds 3]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = """
name = "small"
seed = 3

[model]
classes = 6
input_shape = [128, 9]
batch_size = 8
[model.backbone]
architecture = "conv1d_small"
embedding_dim = 16
[model.backbone.pretrain]
dataset = "synthetic"
synthetic_devices = 40
epochs = 2
[model.optimizer]
name = "adam"
learning_rate = 0.005

[export]
parity_steps = 10

[fleet]
devices = {devices}
platform_mix = {{ android = 1.0 }}
availability = 1.0
dropout = 0.0
[fleet.data]
windows_per_device = 24

[server]
rounds = {rounds}
devices_per_round = {devices}
min_devices = {devices}
port = {port}
insecure = true
round_timeout_s = 600
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "devicetune", *args]


def run_federation(base: Path, artifacts: Path, devices: int, rounds: int) -> dict:
    folder = base / f"n{devices}"
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = folder / "serve.toml"
    config.write_text(CONFIG.format(devices=devices, rounds=rounds, port=port))
    out = folder / "run"
    env = {**os.environ, "FLWR_HOME": str(folder / "flwr-home")}
    started = time.monotonic()
    with contextlib.ExitStack() as files:
        code = _serve_and_join(files, folder, config, out, artifacts, port, devices, env)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()] \
        if (out / "metrics.jsonl").exists() else []
    superlink_log = (out / "superlink.log").read_text(errors="replace") \
        if (out / "superlink.log").exists() else ""
    steady = [r["wall_s"] for r in rows[1:]] or [r["wall_s"] for r in rows]
    return {"devices": devices, "exit": code, "rounds_done": len(rows),
            "completed": [r["completed"] for r in rows],
            "s_per_round": round(sum(steady) / len(steady), 1) if steady else None,
            "first_round_s": round(rows[0]["wall_s"], 1) if rows else None,
            "database_locked": superlink_log.count("database is locked"),
            "wall_s": round(time.monotonic() - started, 1)}


def _serve_and_join(files: contextlib.ExitStack, folder: Path, config: Path, out: Path,
                    artifacts: Path, port: int, devices: int, env: dict) -> int:
    def log(name: str):  # noqa: ANN202
        return files.enter_context(open(folder / f"{name}.log", "wb"))  # noqa: SIM115

    server = subprocess.Popen(cli("serve", str(config), "--out", str(out), "--artifacts",
                                  str(artifacts)), stdout=log("serve"),
                              stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                              start_new_session=True)
    phones = [subprocess.Popen(
        cli("device", str(config), "--superlink", f"127.0.0.1:{port}", "--device-id",
            str(device_id)), stdout=log(f"device-{device_id}"), stderr=subprocess.STDOUT,
        env=env, cwd=ROOT, start_new_session=True) for device_id in range(devices)]
    try:
        return server.wait(timeout=3600)
    finally:
        for process in [*phones, server]:  # each in its own session: end the groups
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", default="5,10,20")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    base = args.out or Path(tempfile.mkdtemp(prefix="serve-devices-"))
    artifacts = base / "artifacts"
    base.mkdir(parents=True, exist_ok=True)
    if not (artifacts / "manifest.json").exists():
        (base / "build.toml").write_text(CONFIG.format(devices=1, rounds=1, port=9092))
        subprocess.run(cli("build", str(base / "build.toml"), "--out", str(artifacts)),
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    results = [run_federation(base, artifacts, int(n), args.rounds)
               for n in args.devices.split(",")]
    print(f"{'devices':>7} {'exit':>4} {'rounds':>6} {'s/round':>8} {'1st round s':>11} "
          f"{'locked':>6}  updates per round")
    for r in results:
        print(f"{r['devices']:>7} {r['exit']:>4} {r['rounds_done']:>6} "
              f"{r['s_per_round'] or float('nan'):>8.1f} "
              f"{r['first_round_s'] or float('nan'):>11.1f} {r['database_locked']:>6}  "
              f"{r['completed']}")
    print(json.dumps({"benchmark": "serve_devices", "results": results}))


if __name__ == "__main__":
    main()
