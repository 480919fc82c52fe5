"""`devicetune serve`: a federation of real Flower processes, run to its last round.

``serve`` checks everything a user can get wrong before it starts a process (config,
TLS files, port, artifacts, the state to resume), then starts a SuperLink on the
config's host and port and submits the devicetune ServerApp to it with ``flwr run``,
Flower's supported entry, as a Flower App generated in the run folder (its run config
names this run's files). It prints each round as the ServerApp commits it and returns
when the run ends. The run folder::

    config.toml          the resolved config the ServerApp runs
    artifacts/           the build devices run (unless --artifacts names one)
    metrics.jsonl        one row per committed round
    server_state.npz     the committed state (`devicetune.server.state`)
    outcome.json         how the run ended (completed, or stopped for want of devices)
    global_weights.npz   the final global weights
    server.log           the ServerApp's log: joins, rejected updates, quorum failures
    superlink.log        the SuperLink's log
    flower/              the generated Flower App, Flower's home, the SuperLink database

(``devicetune device`` is `devicetune.server.device`.)
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devicetune.errors import ServerError
from devicetune.run_files import CONFIG_FILE, METRICS_FILE, VERSIONS_FILE

CONNECTION = "devicetune"
APP_NAME = "devicetune-serve"
# How often `serve` asks Flower whether the run is still alive (the ServerApp's own
# outcome.json usually says it first).
_STATUS_EVERY_S = 10.0
# Consecutive unanswered status queries (one every _STATUS_EVERY_S) before `serve`
# gives up on a SuperLink that is alive but no longer answers.
_STATUS_TRIES = 6


@dataclass(frozen=True)
class ServeResult:
    out_dir: Path
    outcome: dict[str, Any]
    rounds: list[dict[str, Any]]


def serve(config_path: Path, out_dir: Path, data_dir: Path, *, resume: bool = False,
          artifacts: Path | None = None, say: Callable[[str], None] = print,
          client_app: str = "devicetune.server.apps:client_app") -> ServeResult:
    """Serve the federation a config describes until its rounds are done.

    Args:
        client_app: the ClientApp the SuperNodes run (tests substitute misbehaving
            devices; users keep the default).

    Raises:
        ConfigError: the config or its TLS files are unusable.
        ArtifactError: the artifacts, or the state to resume, are missing or corrupt.
        ServerError: the port is taken, the folder is in use, there is no state to
            resume (or one to overwrite), or the run stopped short of its rounds.
    """
    from devicetune.config import load_config, to_toml
    from devicetune.server.federation import check_serve_config
    from devicetune.server.processes import SuperLink, Transport, check_port_free
    from devicetune.server.state import hold_run_folder

    config = load_config(config_path)
    check_serve_config(config)  # before the sections: it names the field that is wrong
    config.require("model", "fleet", command="devicetune serve")
    transport = Transport.for_server(config.server)
    keys = None
    if config.server.device_keys is not None:
        from devicetune.server.device_keys import public_keys

        keys = public_keys(config.server.device_keys, config.fleet.devices)
    out_dir = Path(out_dir).resolve()
    with hold_run_folder(out_dir, wait_s=15.0):  # only checks: the ServerApp holds it
        first_round = _check_state(out_dir, resume, config.server.strategy)
    if first_round > config.server.rounds:
        say(f"nothing to do: all {config.server.rounds} rounds are committed in {out_dir}; "
            "raise server.rounds to continue")
        from devicetune.server.federation import read_outcome

        return ServeResult(out_dir, read_outcome(out_dir) or {}, _rows(out_dir / METRICS_FILE))
    check_port_free(config.server.host, config.server.port)
    if config.server.gateway.enabled:
        check_port_free(config.server.host, config.server.gateway.port)
    artifacts = _artifacts(config, out_dir, data_dir, artifacts, resume, say)
    if resume:
        _check_state_fits(out_dir, config.server.strategy, artifacts)
    (out_dir / CONFIG_FILE).write_text(to_toml(config))
    app_dir = _write_app(out_dir, client_app, {
        "config": str(out_dir / CONFIG_FILE), "artifacts": str(artifacts),
        "data": str(Path(data_dir).resolve()), "out": str(out_dir), "resume": resume,
        "serve-pid": os.getpid()})
    flwr_home = out_dir / "flower" / "home"
    from devicetune.server.federation import OUTCOME_FILE

    (out_dir / OUTCOME_FILE).unlink(missing_ok=True)
    superlink = SuperLink(config.server.host, config.server.port, transport,
                          out_dir / "flower" / "superlink.db", out_dir / "superlink.log",
                          flwr_home, supernode_auth=keys is not None)
    try:
        superlink.wait_until_ready()
        say(f"SuperLink on {superlink.address} ({transport.describe()})")
        if keys is not None:
            _register_devices(keys, out_dir, flwr_home, superlink.address, transport)
            say(f"SuperNode authentication: {len(keys)} device keys registered; devices "
                "join with --auth-key")
        say(f"devices join with: devicetune device {config_path} --superlink "
            f"{superlink.address} --device-id K")
        if config.server.gateway.enabled:
            scheme = "http" if config.server.insecure else "https"
            say(f"apps join over HTTP: {scheme}://{config.server.host}:"
                f"{config.server.gateway.port}/v1/enroll (protocol v1, described at /docs)")
        run_id = _submit(app_dir, flwr_home, superlink.address, transport)
        say(f"run {run_id}: {'resuming at' if resume else 'starting with'} round "
            f"{first_round} of {config.server.rounds}")
        return _follow(out_dir, superlink, run_id, flwr_home, config.server.rounds,
                       first_round - 1, say)
    finally:
        superlink.stop()


def _check_state(out_dir: Path, resume: bool, strategy: str) -> int:
    from devicetune.server.state import has_state, load_state

    if resume:
        state = load_state(out_dir)  # refuses a missing or corrupt state
        if state.strategy != strategy:
            raise ServerError(f"{out_dir} was served with strategy {state.strategy!r}, the "
                              f"config says {strategy!r}; resume with the same strategy")
        return state.round + 1
    if has_state(out_dir):
        state = load_state(out_dir)
        raise ServerError(f"{out_dir} already holds a federation at round {state.round}; "
                          "pass --resume to continue it, or choose another --out")
    return 1


def _check_state_fits(out_dir: Path, strategy: str, artifacts: Path) -> None:
    from devicetune.artifacts.manifest import read_manifest, sha256_file
    from devicetune.server.state import STATE_FILE, check_resumable, load_state

    state = load_state(out_dir)
    manifest = read_manifest(artifacts)
    names = manifest.tflite.weight_names if manifest.tflite else state.names
    check_resumable(state, strategy=strategy, names=names,
                    shapes=[w.shape for w in state.weights],
                    artifact_sha256=sha256_file(artifacts / "model.tflite"),
                    where=out_dir / STATE_FILE)


def _artifacts(config: Any, out_dir: Path, data_dir: Path, given: Path | None, resume: bool,
               say: Callable[[str], None]) -> Path:
    """The build devices run: ``given``, the run's own, or a new one in the run folder."""
    from devicetune.artifacts.manifest import check_artifacts
    from devicetune.errors import ArtifactError

    target = Path(given).resolve() if given is not None else out_dir / "artifacts"
    if given is not None or resume:
        check_artifacts(target)  # every file against the manifest's sha256
        if not (target / "model.tflite").is_file():
            raise ArtifactError(f"{target} has no model.tflite; devices run the TFLite "
                                "artifact, build with export.tflite = true")
        return target
    say(f"building the artifacts into {target}")
    from devicetune.export.build import build

    build(config, target, data_dir, progress=lambda step: say(f"  {step}"))
    return target


def _write_app(out_dir: Path, client_app: str, run_config: dict[str, Any]) -> Path:
    """A Flower App whose components are devicetune's, with this run's settings as its
    run config. It bundles no code: SuperExec imports devicetune where it is installed."""
    import tomli_w

    app_dir = out_dir / "flower" / APP_NAME
    app_dir.mkdir(parents=True, exist_ok=True)
    project = {
        "build-system": {"requires": ["hatchling"], "build-backend": "hatchling.build"},
        "project": {"name": APP_NAME, "version": "1.0.0", "dependencies": [],
                    "description": "devicetune serve, generated for one run folder"},
        "tool": {"flwr": {"app": {
            "publisher": "devicetune",
            "components": {"serverapp": "devicetune.server.apps:server_app",
                           "clientapp": client_app},
            "config": run_config,
        }}},
    }
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(project))
    return app_dir


def _flwr(args: list[str], flwr_home: Path, timeout_s: float = 120.0) -> dict[str, Any]:
    """Run a ``flwr`` CLI command with ``--format json`` and return its answer."""
    from devicetune.server.processes import flower_env, flower_executable

    try:
        done = subprocess.run([flower_executable("flwr"), *args, "--format", "json"],
                              capture_output=True, text=True, timeout=timeout_s,
                              env=flower_env(flwr_home), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ServerError(f"`flwr {args[0]}` did not answer within {timeout_s:g} s") from None
    try:
        answer = json.loads(done.stdout[done.stdout.index("{"):])
    except ValueError:
        answer = {}
    if done.returncode != 0 or not answer.get("success", False):
        reason = answer.get("error-message") or (done.stderr or done.stdout).strip()
        raise ServerError(f"`flwr {args[0]}` failed: {' '.join(str(reason).split())[:300]}")
    return answer


def _register_devices(keys: dict[int, Path], out_dir: Path, flwr_home: Path,
                      address: str, transport: Any) -> None:
    """Register each device's public key with the SuperLink; record its node id."""
    from devicetune.server.device_keys import read_nodes, write_nodes
    from devicetune.server.processes import write_connection

    write_connection(flwr_home, CONNECTION, address, transport)
    nodes = read_nodes(out_dir)  # a resumed run's SuperLink database keeps its keys
    for device_id, path in sorted(keys.items()):
        if device_id not in nodes:
            answer = _flwr(["supernode", "register", str(path), CONNECTION], flwr_home)
            nodes[device_id] = int(answer["node-id"])
    write_nodes(out_dir, nodes)


def _submit(app_dir: Path, flwr_home: Path, address: str, transport: Any) -> int:
    from devicetune.server.processes import write_connection

    write_connection(flwr_home, CONNECTION, address, transport)
    return int(_flwr(["run", str(app_dir), CONNECTION], flwr_home)["run-id"])


def _run_status(run_id: int, flwr_home: Path) -> tuple[str, str]:
    answer = _flwr(["ls", CONNECTION, "--run-id", str(run_id)], flwr_home)
    run = answer["runs"][0]
    return str(run.get("status", "")), str(run.get("status-details", ""))


def _follow(out_dir: Path, superlink: Any, run_id: int, flwr_home: Path, rounds: int,
            committed: int, say: Callable[[str], None]) -> ServeResult:
    """Print each round the ServerApp commits (after the ``committed`` ones) until it
    says how the run ended."""
    from devicetune.server.federation import read_outcome

    metrics, seen = out_dir / METRICS_FILE, committed
    versions, versions_seen = out_dir / VERSIONS_FILE, len(_rows(out_dir / VERSIONS_FILE))
    next_status = time.monotonic() + _STATUS_EVERY_S
    unanswered = 0
    while True:
        rows = _rows(metrics)
        for row in rows[seen:]:
            say(_describe_round(row, rounds))
        seen = max(seen, len(rows))
        decisions = _rows(versions)
        for decision in decisions[versions_seen:]:
            say(_describe_version(decision))
        versions_seen = max(versions_seen, len(decisions))
        outcome = read_outcome(out_dir)
        if outcome is not None:
            break
        if not superlink.alive():
            raise ServerError(f"the SuperLink exited (code {superlink.process.returncode}) "
                              f"during the run; see {superlink.log_file}")
        if time.monotonic() >= next_status:
            next_status = time.monotonic() + _STATUS_EVERY_S
            try:
                status, details = _run_status(run_id, flwr_home)
                unanswered = 0
            except ServerError:
                # A SuperLink that is alive but slow to answer (20 devices on two
                # cores) is not a failed run; one that stops answering for good is.
                unanswered += 1
                if unanswered >= _STATUS_TRIES:
                    raise
                continue
            if status.startswith("finished") and read_outcome(out_dir) is None:
                details = details.removeprefix("ServerApp failed with exception: ")
                raise ServerError(f"the ServerApp ended ({status}) before finishing: "
                                  f"{' '.join(details.split())}; see {out_dir / 'server.log'}")
        time.sleep(0.5)
    rows = _rows(metrics)
    for row in rows[seen:]:
        say(_describe_round(row, rounds))
    for decision in _rows(versions)[versions_seen:]:
        say(_describe_version(decision))
    _wait_finished(run_id, flwr_home)
    if outcome["status"] != "completed":
        raise ServerError(outcome["message"])
    say(f"done: round {outcome['last_round']} of {rounds} committed in {out_dir}")
    return ServeResult(out_dir, outcome, rows)


def _wait_finished(run_id: int, flwr_home: Path, timeout_s: float = 30.0) -> None:
    """Give the ServerApp, its outcome written, a moment to report to the SuperLink
    before the SuperLink stops (bounded: the outcome is what counts)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if _run_status(run_id, flwr_home)[0].startswith("finished"):
                return
        except ServerError:
            return
        time.sleep(1.0)


def _rows(metrics: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        text = metrics.read_text()
    except FileNotFoundError:
        return rows
    for line in text.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            break  # a row being written
    return rows


def _describe_version(decision: dict[str, Any]) -> str:
    accuracy = (decision.get("metrics") or {}).get("accuracy")
    shown = "" if accuracy is None else f", global accuracy {accuracy:.3f}"
    if decision.get("emitted"):
        parent = decision.get("parent_version")
        return (f"version {decision['version']} emitted"
                f"{f' (parent v{parent})' if parent else ' (the build)'}{shown}")
    return f"version {decision['version']} not emitted: {decision.get('reason')}"


def _describe_round(row: dict[str, Any], rounds: int) -> str:
    from devicetune.server.federation import describe_round

    return describe_round(row, rounds)
