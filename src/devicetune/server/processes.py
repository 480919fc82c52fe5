"""Flower's processes: the SuperLink a server runs and the SuperNodes devices run.

Flower 1.42's SuperLink serves its Fleet, Control and Runtime APIs on one HTTP port
(``--host``/``--port``); ``--insecure`` serves plain HTTP, otherwise TLS with the
certificate, key and CA files given. A SuperExec launches the ServerApp of each
submitted run. Left to itself the SuperLink would launch the SuperExec; here
``devicetune serve`` launches both (``--isolation process``), each through
`_DIE_WITH_PARENT` (Linux's parent-death signal), so that a server killed with SIGKILL
leaves nothing behind to serve or write. (Flower's own parent watch polls with
``kill(pid, 0)``, which a zombie passes: where orphans are not reaped, as in containers
without an init, a SuperExec whose SuperLink died would live on.) The ServerApp watches
``serve`` itself (`devicetune.server.federation`).

Transport, from the ``[server]`` section:

- ``insecure = true``: plaintext, for local development on 127.0.0.1 only.
- otherwise TLS: ``server_certificate`` and ``server_private_key`` (PEM) for the
  SuperLink, ``root_certificate`` (the CA that signed it) for everyone who connects;
  the certificate must name the address devices dial (a SAN such as IP:127.0.0.1).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devicetune.errors import ConfigError, ServerError

# Exec the command, but first ask the kernel to SIGKILL it when this process dies
# (prctl PR_SET_PDEATHSIG; elsewhere than Linux the ServerApp's own parent watch remains).
_DIE_WITH_PARENT = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)
os.execv(sys.argv[2], sys.argv[2:])
"""
READY_TIMEOUT_S = 60.0
# The SuperLink keeps its state in SQLite, and every SuperNode poll is a write (it
# claims its messages with UPDATE ... RETURNING), as is every heartbeat and reply. With
# 20 devices on a loaded machine a write waited more than Flower's 5 s busy_timeout,
# failed with "database is locked", and when it was a device's reply the update was
# lost. Writers that wait longer lose nothing; the wait is bounded.
SQLITE_BUSY_TIMEOUT_MS = 120_000
# A device's reply is pushed in an object push session that expires 180 s after its last
# object (Flower's OBJECT_PUSH_SESSION_TTL_SECONDS). With writes that may each wait up to
# the busy timeout above, a loaded SuperLink let sessions expire mid-reply ("Failed to
# push object ... The push session may have expired"), losing the update; sessions now
# outlive several such waits.
OBJECT_PUSH_SESSION_TTL_S = 900
_SUPERLINK = f"""\
import sys
import flwr.supercore.corestate.in_memory_corestate as in_memory_corestate
import flwr.supercore.corestate.sql_corestate as sql_corestate
import flwr.supercore.sql_mixin as sql_mixin
sql_mixin.SQLITE_PRAGMAS = tuple(
    ("busy_timeout", "{SQLITE_BUSY_TIMEOUT_MS}") if name == "busy_timeout" else (name, value)
    for name, value in sql_mixin.SQLITE_PRAGMAS)
sql_corestate.OBJECT_PUSH_SESSION_TTL_SECONDS = {OBJECT_PUSH_SESSION_TTL_S}
in_memory_corestate.OBJECT_PUSH_SESSION_TTL_SECONDS = {OBJECT_PUSH_SESSION_TTL_S}
from flwr.superlink.cli import flower_superlink
sys.argv[0] = "flower-superlink"
sys.exit(flower_superlink())
"""
# A SuperNode's heartbeat call gives up after 5 s; on a loaded machine (20 devices on
# two cores) the SuperLink answered later than that, two missed heartbeats made the node
# "unavailable" and its update was lost. 20 s still leaves 2 x 30 s of patience.
HEARTBEAT_CALL_TIMEOUT_S = 20
# A SuperNode retries a SuperLink that stopped answering forever; ours give up after
# ``--max-wait-time`` (the device's patience) and say why in one line. The wrapper
# watches Flower's retry invoker: a give-up after the SuperLink had answered means it
# went away (the federation finished, or the server stopped); before, that none came.
# Flower's log colours are kept for terminals: off one, the stderr of the SuperNode and
# of what it starts (SuperExec, ClientApps) passes through a filter that drops them.
_SUPERNODE = f"""\
import os, re, sys, threading, time
_started = time.monotonic()
_filter = None
if not os.isatty(2):
    _read, _write = os.pipe()
    _stderr = os.dup(2)
    def _strip_colours():
        with os.fdopen(_read, "rb", buffering=0) as pipe:
            for line in iter(pipe.readline, b""):
                os.write(_stderr, re.sub(rb"\\x1b\\[[0-9;]*m", b"", line))
    _filter = threading.Thread(target=_strip_colours, daemon=True)
    _filter.start()
    os.dup2(_write, 2)
    os.close(_write)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
import flwr.supercore.heartbeat as heartbeat
import flwr.supernode.fleet_http_client as fleet_http_client
import flwr.supernode.fleet_http_connection as connection
heartbeat.HEARTBEAT_CALL_TIMEOUT = fleet_http_client.HEARTBEAT_CALL_TIMEOUT = \\
    {HEARTBEAT_CALL_TIMEOUT_S}
label, superlink, patience = sys.argv[1], sys.argv[2], float(sys.argv[3])
seen = {{"answered": False, "gave_up": False}}
_make_invoker = connection.make_simple_http_retry_invoker
def _watched_invoker():
    invoker = _make_invoker()
    on_success, on_giveup = invoker.on_success, invoker.on_giveup
    def success(state):
        seen["answered"] = True
        on_success(state)
    def giveup(state):
        seen["gave_up"] = True
        on_giveup(state)
    invoker.on_success, invoker.on_giveup = success, giveup
    return invoker
connection.make_simple_http_retry_invoker = _watched_invoker
from flwr.supernode.cli import flower_supernode
sys.argv = ["flower-supernode", *sys.argv[4:]]
try:
    code = flower_supernode()
except SystemExit as exc:
    code = exc.code
why = None
if seen["gave_up"] and seen["answered"]:
    why = (f"{{label}}: the SuperLink at {{superlink}} went away and did not come back "
           f"within {{patience:g}} s (the federation finished, or the server stopped); "
           "exiting")
    code = 0
elif seen["gave_up"] and time.monotonic() - _started < patience:
    # Given up before the patience ran out: the SuperLink answered with a refusal (an
    # unregistered or wrong key: Flower's message is above), not with silence.
    why = (f"{{label}}: the SuperLink at {{superlink}} refused this device (see Flower's "
           "error above: an unregistered or wrong --auth-key?); exiting")
    code = 3
elif seen["gave_up"]:
    why = (f"{{label}}: no SuperLink answered at {{superlink}} within {{patience:g}} s; "
           "exiting (start `devicetune serve` first, or wait longer with --patience-s)")
    code = 3
if _filter is not None:  # let what Flower wrote pass the filter first
    sys.stderr.flush()
    _filter.join(0.5)
if why:
    os.write(_stderr if _filter is not None else 2, (why + "\\n").encode())
    sys.stdout.flush()
    # Flower's threads (heartbeat, Runtime API) would keep the interpreter alive; its
    # SuperExec watches this process and follows it.
    os._exit(code)
sys.exit(code)
"""
DEFAULT_PATIENCE_S = 120.0


@dataclass(frozen=True)
class Transport:
    """How clients reach the SuperLink: plaintext, or TLS with these PEM files."""

    insecure: bool
    certificate: Path | None = None
    private_key: Path | None = None
    root_certificate: Path | None = None

    @classmethod
    def for_server(cls, server: Any) -> Transport:
        """The SuperLink's transport; `ConfigError` if TLS lacks a file."""
        if server.insecure:
            return cls(True)
        files = {"server_certificate": server.server_certificate,
                 "server_private_key": server.server_private_key,
                 "root_certificate": server.root_certificate}
        _check_files(files, "serving with TLS")
        return cls(False, server.server_certificate, server.server_private_key,
                   server.root_certificate)

    @classmethod
    def for_device(cls, server: Any) -> Transport:
        """A SuperNode's transport: it needs only the CA certificate."""
        if server.insecure:
            return cls(True)
        _check_files({"root_certificate": server.root_certificate}, "connecting with TLS")
        return cls(False, root_certificate=server.root_certificate)

    def superlink_args(self) -> list[str]:
        if self.insecure:
            return ["--insecure"]
        return ["--ssl-certfile", str(self.certificate), "--ssl-keyfile",
                str(self.private_key), "--ssl-ca-certfile", str(self.root_certificate)]

    def supernode_args(self) -> list[str]:
        if self.insecure:
            return ["--insecure"]
        return ["--root-certificates", str(self.root_certificate)]

    def describe(self) -> str:
        return ("insecure: plaintext, for local development only" if self.insecure
                else f"TLS, certificate {self.certificate}")


def _check_files(files: dict[str, Path | None], purpose: str) -> None:
    missing = [k for k, v in files.items() if v is None]
    if missing:
        raise ConfigError(f"server.insecure = false: {purpose} needs server."
                          f"{', server.'.join(missing)} (PEM files); or set server.insecure "
                          "= true for local development")
    for key, path in files.items():
        if not Path(path).is_file():
            raise ConfigError(f"server.{key} = {str(path)!r}: no such file")


def parse_address(address: str) -> tuple[str, int]:
    """``HOST:PORT`` as a pair; `ConfigError` if it is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--superlink {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9092")
    return host.strip("[]"), int(port)


def check_port_free(host: str, port: int) -> None:
    """`ServerError` if something already listens on ``host:port``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As the SuperLink will: a port in TIME_WAIT from a previous server is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServerError(f"cannot serve on {host}:{port}: {exc.strerror.lower()} (another "
                              "server?); stop it or set server.port to a free port") from None


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (for a SuperNode's local Runtime API)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def flower_executable(name: str) -> str:
    """The Flower command installed beside this Python (a venv need not be on PATH)."""
    beside = Path(sys.executable).with_name(name)
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ServerError(f"{name} is not installed; reinstall devicetune (it needs flwr)")
    return found


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment of a Flower process: its own home (app bundles, connections),
    Flower's commands on PATH (SuperLink and SuperNode start SuperExec by name), no
    dependency installation (devicetune is already installed where it runs)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION"] = "1"
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


# ----------------------------------------------------------------------------- SuperLink


class SuperLink:
    """A running ``flower-superlink`` and its SuperExec, killed with the process that
    started them.

    Args:
        host, port: where it serves (all of Flower's APIs share the port).
        transport: plaintext or TLS.
        database: SQLite file of its state; SuperNodes stay registered across a restart
            (an in-memory SuperLink forgets them, and they exit on its 401).
        log_file: the output of the SuperLink, the SuperExec and the ServerApp.
        flwr_home: Flower's home for the server side (app bundles).
        supernode_auth: accept only SuperNodes whose keys are registered
            (`devicetune.server.device_keys`).
    """

    def __init__(self, host: str, port: int, transport: Transport, database: Path,
                 log_file: Path, flwr_home: Path, supernode_auth: bool = False) -> None:
        self.host, self.port, self.transport = host, port, transport
        self.log_file = log_file
        log_file.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_file.open("ab")
        self._env = flower_env(flwr_home)
        flower_executable("flower-superlink")  # a clear error if Flower is missing
        self.process = self._start([
            sys.executable, "-c", _SUPERLINK, *transport.superlink_args(),
            "--host", host, "--port", str(port), "--database", str(database),
            "--isolation", "process", "--disable-runtime-dependency-installation",
            *(["--enable-supernode-auth"] if supernode_auth else [])])
        self.superexec: subprocess.Popen[bytes] | None = None

    def _start(self, command: list[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *command],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env=self._env, cwd=self.log_file.parent)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def wait_until_ready(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Block until the SuperLink answers on its port, then start its SuperExec;
        `ServerError` if the SuperLink exits first."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise ServerError(f"the SuperLink exited with code {self.process.returncode} "
                                  f"before serving; see {self.log_file}")
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() >= deadline:
                    raise ServerError(f"the SuperLink did not listen on {self.address} "
                                      f"within {timeout_s:g} s; see {self.log_file}") from None
                time.sleep(0.2)
        self.superexec = self._start([
            flower_executable("flower-superexec"), *self.transport.supernode_args(),
            "--runtime-api-address", self.address, "--parent-pid", str(os.getpid())])

    def alive(self) -> bool:
        return self.process.poll() is None and (
            self.superexec is None or self.superexec.poll() is None)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop gracefully (SIGTERM), then for sure (SIGKILL)."""
        for process in (self.superexec, self.process):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._log.close()


def write_connection(flwr_home: Path, name: str, address: str, transport: Transport) -> None:
    """A Flower config naming the SuperLink ``name`` for ``flwr run`` / ``flwr ls``."""
    lines = ["[superlink]", f"default = {json.dumps(name)}", "", f"[superlink.{name}]",
             f"address = {json.dumps(address)}"]
    if transport.insecure:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(transport.root_certificate))}")
    flwr_home.mkdir(parents=True, exist_ok=True)
    (flwr_home / "config.toml").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- SuperNode


def supernode_command(superlink: str, transport: Transport, node_config: dict[str, Any],
                      runtime_port: int, auth_key: Path | None = None,
                      patience_s: float = DEFAULT_PATIENCE_S, label: str = "device"
                      ) -> list[str]:
    """``flower-supernode`` connecting to ``superlink`` with this node config. Each
    SuperNode also serves a local Runtime API for its ClientApp; on one machine every
    SuperNode needs its own port for it. It exits, with a line starting ``label``, once
    the SuperLink has not answered for ``patience_s`` seconds: code 0 if it had answered
    before (the federation is over), 3 if it never did."""
    pairs = " ".join(f"{k}={json.dumps(v)}" for k, v in node_config.items())
    flower_executable("flower-supernode")  # a clear error if Flower is missing
    return [sys.executable, "-c", _SUPERNODE, label, superlink, f"{patience_s:g}",
            *transport.supernode_args(),
            "--superlink", superlink, "--node-config", pairs,
            "--host", "127.0.0.1", "--port", str(runtime_port),
            "--max-wait-time", f"{patience_s:g}",
            *(["--auth-supernode-private-key", str(auth_key)] if auth_key else [])]


def device_flwr_home(device_id: int) -> Path:
    """A Flower home of a device's own: SuperNodes on one machine would otherwise
    install the same app bundle into one folder at the same moment."""
    base = Path(os.environ.get("FLWR_HOME") or Path.home() / ".flwr")
    return base / "devicetune-devices" / str(device_id)
