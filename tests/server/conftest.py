"""Real federations on 127.0.0.1 for the server tests: a `devicetune serve` process,
SuperNodes as `devicetune device` processes (or misbehaving ones), free ports, and
the in-process run the real one must reproduce."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from devicetune.config import DevicetuneConfig, to_toml
from tests.conftest import PROJECT_ROOT, small_config

# Hang guards for waits on real processes: generous, never a speed assertion.
WAIT_S = 300.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def serve_config(tmp_path: Path, name: str = "serve.toml", privacy: dict | None = None,
                 emit: dict | None = None, **server: Any) -> tuple[Path, DevicetuneConfig]:
    """The small config as a local federation of 3 devices on a free port."""
    sections = {"fleet": {"devices": server.pop("devices", 3)},
                **({"privacy": privacy} if privacy else {}),
                **({"emit": emit} if emit else {}),
                "server": {"rounds": 2, "devices_per_round": 3, "min_devices": 2,
                           "port": free_port(), "insecure": True, "round_timeout_s": 60,
                           **server}}
    config = small_config(**sections)
    path = tmp_path / name
    path.write_text(to_toml(config))
    return path, config


def wait_for(condition: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def metrics_rows(out: Path) -> list[dict[str, Any]]:
    path = out / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found, from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process and everything it started (a phone losing power: a SuperNode
    with its SuperExec and ClientApp)."""
    for pid in [*descendants(process.pid), process.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait()


class Federation:
    """The processes of one test federation, all ended (by pid) when the test ends."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"),
                    "PYTHONPATH": os.pathsep.join(
                        [str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}

    def _start(self, argv: list[str], log_name: str,
               env: dict[str, str] | None = None) -> subprocess.Popen:
        stdout = (self.tmp_path / f"{log_name}.out").open("ab")
        stderr = (self.tmp_path / f"{log_name}.err").open("ab")
        process = subprocess.Popen(argv, stdout=stdout, stderr=stderr,
                                   stdin=subprocess.DEVNULL, env=env or self.env,
                                   cwd=PROJECT_ROOT)
        process.log_name = log_name  # type: ignore[attr-defined]
        self.processes.append(process)
        return process

    def serve(self, config: Path, out: Path, *args: str, log_name: str = "serve"
              ) -> subprocess.Popen:
        return self._start([sys.executable, "-m", "devicetune", "serve", str(config),
                            "--out", str(out), *args], log_name)

    def serve_with_client_app(self, config: Path, out: Path, artifacts: Path,
                              client_app: str) -> subprocess.Popen:
        """`serve` through the library, with devices running another ClientApp."""
        code = ("import sys; from pathlib import Path\n"
                "from devicetune.config import resolve_data_dir\n"
                "from devicetune.server.serve import serve\n"
                "serve(Path(sys.argv[1]), Path(sys.argv[2]), resolve_data_dir(),\n"
                "      artifacts=Path(sys.argv[3]), client_app=sys.argv[4],\n"
                "      say=lambda line: print(line, flush=True))\n")
        return self._start([sys.executable, "-c", code, str(config), str(out),
                            str(artifacts), client_app], "serve")

    def serve_with_devices(self, config_path: Path, config: DevicetuneConfig, out: Path,
                           artifacts: Path, *args: str, devices: int = 3
                           ) -> subprocess.Popen:
        """`serve` on a prebuilt ``artifacts`` folder, and devices 0..devices-1 joining it."""
        server = self.serve(config_path, out, "--artifacts", str(artifacts), *args)
        for device_id in range(devices):
            self.device(config_path, config.server.port, device_id)
        return server

    def device(self, config: Path, port: int, device_id: int) -> subprocess.Popen:
        return self._start([sys.executable, "-m", "devicetune", "device", str(config),
                            "--superlink", f"127.0.0.1:{port}", "--device-id",
                            str(device_id)], f"device-{device_id}")

    def supernode(self, port: int, node_config: dict[str, Any], name: str
                  ) -> subprocess.Popen:
        """A bare SuperNode with this node config (for misbehaving devices)."""
        from devicetune.server.processes import Transport, flower_env, supernode_command
        from devicetune.server.processes import free_port as runtime_port

        argv = supernode_command(f"127.0.0.1:{port}", Transport(True), node_config,
                                 runtime_port())
        home = self.tmp_path / f"flwr-home-{name}"
        home.mkdir(exist_ok=True)
        env = {**flower_env(home), "PYTHONPATH": self.env["PYTHONPATH"]}
        return self._start(argv, name, env)

    def output(self, process: subprocess.Popen) -> tuple[str, str]:
        name = process.log_name  # type: ignore[attr-defined]
        return ((self.tmp_path / f"{name}.out").read_text(),
                (self.tmp_path / f"{name}.err").read_text())

    def wait(self, process: subprocess.Popen, timeout_s: float = WAIT_S) -> int:
        try:
            return process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            out, err = self.output(process)
            raise AssertionError(f"{process.args[:4]} did not end within {timeout_s:g} s\n"
                                 f"{out[-2000:]}\n{err[-2000:]}") from None

    def close(self) -> None:
        for process in self.processes:
            kill_tree(process)


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    fed = Federation(tmp_path)
    try:
        yield fed
    finally:
        fed.close()


def inline_run(config: DevicetuneConfig, artifacts: Path, data_dir: Path, rounds: int
               ) -> tuple[list[np.ndarray], list[float]]:
    """The same federation in this process (InlineGrid): final weights and accuracy per
    round, which the real processes must reproduce when every device is sampled."""
    from devicetune.device.runtime import LiteRTDevice
    from devicetune.fleet.evaluation import global_evaluator
    from devicetune.fleet.flower_log import quiet_flower
    from devicetune.fleet.grid import InlineGrid
    from devicetune.fleet.messages import TrainInstructions
    from devicetune.fleet.population import Population
    from devicetune.server.loop import FederatedLoop
    from devicetune.server.strategies import make_strategy

    quiet_flower()
    population = Population.from_config(config.fleet, config.seed, data_dir)
    rate = config.fleet.learning_rate or config.model.optimizer.learning_rate
    runtime = LiteRTDevice(artifacts / "model.tflite", rate)
    evaluate = global_evaluator(config, population, LiteRTDevice(artifacts / "model.tflite",
                                                                 rate), data_dir)
    loop = FederatedLoop(
        strategy=make_strategy(config.server), names=runtime.weight_names,
        weights=runtime.get_weights(), devices_per_round=config.server.devices_per_round,
        instructions=TrainInstructions(0, config.fleet.local_epochs, rate,
                                       config.server.proximal_mu),
        max_update_norm=config.server.max_update_norm, evaluate=evaluate, seed=config.seed)
    grid = InlineGrid(population, {"android": runtime})
    accuracy = [loop.run_round(grid, r).global_accuracy for r in range(1, rounds + 1)]
    return loop.weights, accuracy


def saved_weights(out: Path) -> list[np.ndarray]:
    with np.load(out / "global_weights.npz") as saved:
        return [saved[name] for name in saved.files]


def tls_files(folder: Path, host: str = "127.0.0.1") -> dict[str, str]:
    """A CA and a server certificate for ``host`` (PEM files), as [server] keys."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def certificate(subject: str, key, issuer: str, issuer_key, ca: bool):  # noqa: ANN001, ANN202
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
                   .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(host)), x509.DNSName("localhost")]),
                critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), \
        ec.generate_private_key(ec.SECP256R1())
    ca = certificate("devicetune test CA", ca_key, "devicetune test CA", ca_key, True)
    server = certificate(host, server_key, "devicetune test CA", ca_key, False)
    folder.mkdir(parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    (folder / "ca.pem").write_bytes(ca.public_bytes(pem))
    (folder / "server.pem").write_bytes(server.public_bytes(pem))
    (folder / "server.key").write_bytes(server_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return {"root_certificate": str(folder / "ca.pem"),
            "server_certificate": str(folder / "server.pem"),
            "server_private_key": str(folder / "server.key")}
