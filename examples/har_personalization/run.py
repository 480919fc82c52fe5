"""The three jobs end to end on UCI HAR, with the devicetune command a team would type.

    .venv/bin/python examples/har_personalization/run.py                # about 2 minutes
    .venv/bin/python examples/har_personalization/run.py --quick        # about 1 minute

1. build      the TFLite and Core ML models from har.toml (backbone pretrained on
              subjects 1-15), with their parity report;
2. simulate   15 phones federate the head, then subjects 16-30 (never seen) personalise;
3. report     report.html for the simulation;
4. keys       the release key pair;
5. serve      the federated server and three phones (subjects 16-18) as real Flower
              processes on 127.0.0.1; each round's model passes the privacy and quality
              gates and is published, signed, into a registry;
6. registry   the registry over HTTP, and a phone fetching the version the rollout gives
              it: every file checked, the signature verified;
7. verify     the downloaded folder checked again, as a release pipeline would;
8. the app    the downloaded model.tflite run in LiteRT on subject 19, whom no step saw.

Every step prints the command and what it printed. Outputs go to --out (default
out/examples/har_personalization, which must not exist yet); `walkthrough.json` there
holds the headline numbers. The datasets are read from $DEVICETUNE_DATA (default
../shared/datasets).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "har.toml"
ROOT = HERE.parents[1]
MODEL_NAME = "har"
APP_DEVICE_ID = "phone-16"
UNSEEN_SUBJECT = 19

# --quick: the same steps with less pretraining, fewer phones, rounds and epochs.
QUICK = {
    "model": {"backbone": {"pretrain": {"epochs": 2}}},
    "export": {"parity_steps": 20},
    "fleet": {"devices": 5, "data": {"subjects": "1-5"},
              "personalization": {"subjects": "16-20", "epochs": 5}},
    "server": {"rounds": 2, "devices_per_round": 5},
}
# The live federation: three new people's phones as real processes, a version per round.
# Its fleet replaces the simulation's whole.
SERVE = {
    "fleet": {"devices": 3, "platform_mix": {"android": 1.0}, "availability": 1.0,
              "dropout": 0.0, "local_epochs": 2,
              "data": {"source": "har", "subjects": "16-18", "test_fraction": 0.5}},
    "server": {"rounds": 3, "devices_per_round": 3, "min_devices": 2,
               "round_timeout_s": 120, "on_quorum_failure": "retry", "max_retries": 2,
               "host": "127.0.0.1", "insecure": True},
    "emit": {"enabled": True, "every_rounds": 1, "max_regression": 0.02},
}
SERVE_QUICK = {"server": {"rounds": 2}}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` applied key by key, nested tables merged."""
    out = dict(base)
    for key, value in changes.items():
        out[key] = merged(out.get(key, {}), value) if isinstance(value, dict) \
            and isinstance(out.get(key), dict) else value
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Walkthrough:
    """Runs each step's command, shows it, and stops at the first that fails."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True)
        self.env = {**os.environ, "FLWR_HOME": str(out / "flwr-home"),
                    "PYTHONUNBUFFERED": "1"}
        self.background: list[subprocess.Popen[bytes]] = []
        self.step = 0

    def title(self, text: str) -> None:
        self.step += 1
        print(f"\n== {self.step}. {text}", flush=True)

    def show(self, args: list[str]) -> None:
        shown = [str(Path(a).relative_to(ROOT)) if a.startswith(str(ROOT)) else a
                 for a in args]
        print(f"$ devicetune {shlex.join(shown)}", flush=True)

    def run(self, *args: str) -> None:
        """Run ``devicetune ARGS`` in the foreground, its output on ours."""
        self.show(list(args))
        result = subprocess.run([sys.executable, "-m", "devicetune", *args], env=self.env,
                                cwd=ROOT, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            sys.exit(f"step {self.step} failed (exit {result.returncode})")

    def start(self, log_name: str, *args: str) -> subprocess.Popen[bytes]:
        """Start ``devicetune ARGS`` in the background, in its own process group (so it
        ends with everything it started), its output in logs/."""
        self.show(list(args))
        with (self.logs / f"{log_name}.log").open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "devicetune", *args],
                                       env=self.env, cwd=ROOT, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        self.background.append(process)
        return process

    def stop_background(self) -> None:
        for process in self.background:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.background:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.background.clear()


def write_config(raw: dict[str, Any], path: Path) -> Path:
    path.write_text(tomli_w.dumps(raw))
    return path


def wait_for_http(url: str, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the registry exited with {process.returncode}; see its log")
        try:
            httpx.get(url, timeout=2).raise_for_status()
            return
        except httpx.HTTPError:
            time.sleep(0.3)
    sys.exit(f"the registry did not answer at {url} within {timeout_s:.0f} s")


def app_accuracy(model_file: Path, data_dir: Path, subject: int) -> tuple[float, int]:
    """What the app's model gets right on every window of one subject."""
    from devicetune.data.har import load_har
    from devicetune.device.litert import LiteRTModel

    data = load_har(data_dir)
    person = data.select(data.user == subject)
    model = LiteRTModel(model_file)
    predicted = np.argmax(model.infer(person.x), axis=1)
    return float(np.mean(predicted == person.y)), len(person)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "examples" /
                        "har_personalization", help="a new folder for every output")
    parser.add_argument("--quick", action="store_true",
                        help="fewer phones, rounds and epochs (what the tests run)")
    args = parser.parse_args(argv)
    from devicetune.config import resolve_data_dir

    out = args.out.resolve()
    if out.exists():
        sys.exit(f"{out} exists; remove it or pass another --out")
    data_dir = resolve_data_dir()
    walk = Walkthrough(out)
    base = tomllib.loads(CONFIG.read_text())
    if args.quick:
        base = merged(base, QUICK)
    config = write_config(base, out / "har.toml")
    try:
        walk.title("build the models the apps ship")
        walk.run("build", str(config), "--out", str(out / "build"))

        walk.title("simulate the fleet: federate, then personalise people never seen")
        walk.run("simulate", str(config), "--out", str(out / "simulate"), "--artifacts",
                 str(out / "build"))

        walk.title("report the simulation")
        walk.run("report", str(out / "simulate"))

        walk.title("generate the release key pair")
        walk.run("keys", "generate", "--out", str(out / "keys"))

        walk.title("serve: a federated server and three phones as real processes")
        port = free_port()
        without_fleet = {k: v for k, v in base.items() if k != "fleet"}
        serve = merged(merged(without_fleet, SERVE), SERVE_QUICK if args.quick else {})
        serve = merged(serve, {"server": {"port": port},
                               "emit": {"registry": str(out / "registry"),
                                        "private_key": str(out / "keys" / "private_key.pem")}})
        serve_config = write_config(serve, out / "serve.toml")
        server = walk.start("serve", "serve", str(serve_config), "--out", str(out / "serve"),
                            "--artifacts", str(out / "build"))
        for device_id in range(serve["fleet"]["devices"]):
            walk.start(f"device-{device_id}", "device", str(serve_config), "--superlink",
                       f"127.0.0.1:{port}", "--device-id", str(device_id))
        code = server.wait()
        print((walk.logs / "serve.log").read_text(errors="replace").rstrip(), flush=True)
        walk.stop_background()
        if code != 0:
            sys.exit(f"step {walk.step} failed: the server exited with {code}")

        walk.title("the registry over HTTP; a phone fetches its version and verifies it")
        registry_port = free_port()
        registry = walk.start("registry", "registry", "serve", "--root",
                              str(out / "registry"), "--port", str(registry_port),
                              "--public-key", str(out / "keys" / "public_key.pem"))
        url = f"http://127.0.0.1:{registry_port}"
        wait_for_http(f"{url}/v1/models", registry)
        walk.run("registry", "fetch", MODEL_NAME, "--url", url, "--device-id",
                 APP_DEVICE_ID, "--platform", "android", "--public-key",
                 str(out / "keys" / "public_key.pem"), "--out", str(out / "app"))
        walk.stop_background()

        walk.title("verify the downloaded folder, as a release pipeline would")
        walk.run("verify", str(out / "app"), "--public-key", str(out / "keys" / "public_key.pem"))

        walk.title(f"the app: the downloaded model.tflite on subject {UNSEEN_SUBJECT}, "
                   "whom no step saw")
        accuracy, windows = app_accuracy(out / "app" / "model.tflite", data_dir,
                                         UNSEEN_SUBJECT)
        print(f"LiteRT infer on {windows} windows: accuracy {accuracy:.1%}", flush=True)
    finally:
        walk.stop_background()

    summary = json.loads((out / "simulate" / "summary.json").read_text())
    versions = [json.loads(line) for line in
                (out / "serve" / "versions.jsonl").read_text().splitlines()]
    fetched = json.loads((out / "app" / "manifest.json").read_text())
    headline = {
        "quick": args.quick,
        "parity_passed": json.loads((out / "build" / "parity.json").read_text())["passed"],
        "simulation": {k: summary[k] for k in ("devices", "rounds", "accuracy_global",
                                               "accuracy_personal", "mean_gain",
                                               "fraction_harmed")},
        "versions": [{k: v.get(k) for k in ("version", "round", "emitted", "reason")}
                     for v in versions],
        "fetched_version": fetched["version"],
        "app_accuracy_unseen_subject": accuracy,
    }
    (out / "walkthrough.json").write_text(json.dumps(headline, indent=2) + "\n")
    print(f"\nheadline numbers: {out / 'walkthrough.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
