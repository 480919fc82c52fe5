"""The ServerApp's work: a whole federation, persistent and resumable.

`run_server` loads the config and the artifacts, starts afresh or resumes from the
committed state, waits for devices to join, then runs the rounds: each needs its quorum
(`devicetune.server.quorum`), goes through the plain loop or SecAgg+
(`devicetune.server.secagg`), appends its row to ``metrics.jsonl`` and commits the
state (`devicetune.server.state`). How the run ended goes into ``outcome.json``::

    {"status": "completed" | "stopped", "message": "...", "last_round": 4, "rounds": 4}
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from devicetune.atomic import atomic_write_json

if TYPE_CHECKING:
    from flwr.serverapp import Grid

    from devicetune.artifacts.emit import VersionEmitter
    from devicetune.config import DevicetuneConfig, ServerConfig
    from devicetune.server.apps import AppSettings
    from devicetune.server.loop import Evaluate, FederatedLoop, RoundRecord

log = logging.getLogger("devicetune.server")

OUTCOME_FILE = "outcome.json"
LOG_FILE = "server.log"
_finished = threading.Event()  # the outcome is written: `serve` may go
# A server killed a moment ago may still be exiting when its successor starts.
_LOCK_WAIT_S = 15.0
# After a (re)start, SuperNodes take a few seconds to reconnect: the first round waits
# up to this long for every known device before sampling (it goes on as soon as all are
# back). 10 s was too short on a loaded machine: a SuperNode's reconnect backoff outlasted
# it and a resumed round sampled 2 of 3 devices (the make test run of 2026-12-06).
# A resumed server also gives its devices this much longer to join: each reconnects and
# answers discovery again from a cold ClientApp process (47 s for 3 devices, measured on
# a loaded two-core machine, against a 60 s join timeout; past it, the settle wait cannot
# help, since it waits for devices already known: the likely cause of the resume test's
# two failures under make test, whose weights parted while every accuracy matched).
_SETTLE_S = 30.0


def run_server(grid: Grid, settings: AppSettings, announce: bool = False
               ) -> list[np.ndarray]:
    """Run the configured rounds over ``grid``; write metrics, state and the final
    weights into ``settings.out_dir``; return the final weights.

    With ``settings.resume`` the rounds continue after the committed one; otherwise the
    federation starts from the artifact's weights (overwriting a previous state: the
    ``serve`` command refuses that before it gets here). ``announce`` (a ServerApp
    of `flwr run` or `serve`, not one in a caller's process) logs each round into
    ``server.log`` and onto stderr.
    """
    if settings.serve_pid:
        _die_with(settings.serve_pid)
    if announce or settings.serve_pid:
        # server.log, and stderr: `serve` keeps it in superlink.log, `flwr run --stream`
        # shows it (joins, each round, versions, rejected updates).
        _log_to_run_folder(Path(settings.out_dir))
    try:
        return _run(grid, settings)
    except Exception:
        log.exception("the ServerApp failed")  # into server.log: Flower's copy is remote
        raise


def _run(grid: Grid, settings: AppSettings) -> list[np.ndarray]:
    from devicetune.artifacts.manifest import sha256_file
    from devicetune.config import load_config
    from devicetune.device.runtime import open_runtimes
    from devicetune.errors import PrivacyBudgetExceeded
    from devicetune.fleet.evaluation import global_evaluator
    from devicetune.fleet.flower_log import quiet_flower
    from devicetune.fleet.messages import TrainInstructions
    from devicetune.fleet.population import Population
    from devicetune.server.acceptance import acceptance_check
    from devicetune.server.device_keys import read_nodes
    from devicetune.server.fleet_grid import FleetGrid
    from devicetune.server.gateway_grid import GatewayGrid, start_gateway
    from devicetune.server.loop import FederatedLoop
    from devicetune.server.private import private_setup
    from devicetune.server.quorum import QuorumFailure, QuorumPolicy, run_round_with_quorum
    from devicetune.server.secagg import SecAggRound
    from devicetune.server.state import hold_run_folder
    from devicetune.server.strategies import make_strategy

    quiet_flower()
    config = load_config(settings.config)
    if hasattr(settings, "configured"):
        config = settings.configured(config)
    config.require("model", "fleet", command="the devicetune ServerApp")
    assert config.model is not None and config.fleet is not None
    check_serve_config(config)
    population = Population.from_config(config.fleet, config.seed, settings.data_dir,
                                        class_names=config.model.classes)
    rate = config.fleet.learning_rate or config.model.optimizer.learning_rate
    reference = next(iter(open_runtimes(settings.artifacts, {"android": 1.0}, rate).values()))
    evaluate = global_evaluator(config, population, reference, settings.data_dir)
    # A real server draws its DP noise from the operating system's entropy.
    strategy, privacy = private_setup(config, make_strategy(config.server),
                                      population.devices, seed=None)
    loop = FederatedLoop(
        strategy=strategy, privacy=privacy, names=reference.weight_names,
        weights=_initial_weights(config, reference.get_weights()),
        devices_per_round=config.server.devices_per_round,
        instructions=TrainInstructions(0, config.fleet.local_epochs, rate,
                                       config.server.proximal_mu,
                                       config.privacy.device.enabled,
                                       config.server.class_mask),
        max_update_norm=config.server.max_update_norm, evaluate=evaluate, seed=config.seed,
        round_timeout_s=config.server.round_timeout_s, min_devices=config.server.min_devices,
        accept=acceptance_check(config, reference, settings.data_dir,
                                tuple(population.source.example_shape)),
    )
    policy = QuorumPolicy.from_config(config.server)
    out = Path(settings.out_dir)
    artifact_sha256 = sha256_file(Path(settings.artifacts) / "model.tflite")
    with hold_run_folder(out, wait_s=_LOCK_WAIT_S), contextlib.ExitStack() as stack:
        resumed = bool(getattr(settings, "resume", False))
        first = _start(out, resumed, loop, config.server, artifact_sha256)
        supernodes = FleetGrid(grid, population, policy.round_timeout_s,
                               registered=read_nodes(out) if config.server.device_keys
                               else None)
        fleet: FleetGrid | GatewayGrid = supernodes
        if config.server.gateway.enabled:  # HTTP devices beside the SuperNodes
            fleet, gateway_server = start_gateway(config, out, Path(settings.artifacts),
                                                  loop.names, supernodes)
            stack.callback(gateway_server.stop)
            loop.over_selection = config.server.gateway.over_selection
        joined = fleet.wait_for_devices(
            min(config.server.devices_per_round, population.devices),
            policy.join_timeout_s + (_SETTLE_S if resumed else 0.0))
        log.info("%d devices joined; rounds %d to %d", joined, first, config.server.rounds)
        run_round = SecAggRound(loop) if config.server.secagg else None
        emitter = _emitter(config, settings, out, loop, evaluate)
        outcome = {"status": "completed", "message": "", "rounds": config.server.rounds,
                   "last_round": first - 1}
        for server_round in range(first, config.server.rounds + 1):
            try:
                result = run_round_with_quorum(
                    loop, fleet, server_round, policy, run_round,
                    settle_s=_SETTLE_S if server_round == first else 0.0)
            except PrivacyBudgetExceeded as exc:  # the gate: no more training, no emit
                outcome.update(status="stopped", message=str(exc))
                log.error("%s", exc)
                break
            if isinstance(result, QuorumFailure):
                outcome.update(status="stopped", message=result.describe())
                log.error("%s", result.describe())
                break
            if isinstance(fleet, GatewayGrid):  # refused reports, in the round's row
                result.extra.update(fleet.gateway.counters())
            _commit_round(out, result, loop, config.server.strategy, artifact_sha256)
            log.info("%s", describe_round(result.to_dict(), config.server.rounds))
            outcome["last_round"] = server_round
            if emitter is not None and server_round % config.emit.every_rounds == 0:
                _emit(emitter, config, loop, evaluate, server_round)
        np.savez(out / "global_weights.npz",
                 **dict(zip(loop.names, loop.weights, strict=True)))  # type: ignore[arg-type]
        atomic_write_json(out / OUTCOME_FILE, outcome)  # last: `serve` waits for it
        _finished.set()
    return loop.weights


def describe_round(row: dict[str, Any], rounds: int) -> str:
    """A round's line, as `serve` prints it and `flwr run --stream` shows it."""
    accuracy = row.get("global_accuracy")
    shown = "n/a" if accuracy is None else f"{accuracy:.3f}"
    retries = row.get("attempts", 1) - 1
    return (f"round {row['round']}/{rounds}: {row['completed']} of {row['sampled']} devices "
            f"aggregated, {row['dropped']} dropped, {row['rejected']} rejected"
            f"{f', after {retries} retries' if retries else ''}; global accuracy {shown} "
            f"({row['wall_s']:.1f} s)")


def check_serve_config(config: DevicetuneConfig) -> None:
    """Refuse what the served federation cannot honour (user errors, one line)."""
    from devicetune.errors import ConfigError
    from devicetune.server.secagg import check_secagg_config

    if config.server.rounds < 1:
        where = f"{config.source}: " if config.source is not None else ""
        raise ConfigError(f"{where}server.rounds = {config.server.rounds}: a served "
                          "federation needs at least one round (rounds = 0 is for "
                          "`devicetune simulate`, to personalise with no federation)")
    check_secagg_config(config.server)
    if config.server.secagg and config.privacy.mode != "off":
        # Central DP clips each device's update; under SecAgg+ the server never sees one.
        raise ConfigError("server.secagg = true hides each device's update, so the server "
                          "cannot clip it for privacy.mode = "
                          f"{config.privacy.mode!r}; use one or the other")
    if config.server.secagg and config.server.acceptance_tolerance is not None:
        raise ConfigError("server.acceptance_tolerance is not run on the SecAgg+ path; "
                          "remove it or set server.secagg = false")
    if config.server.gateway.enabled:
        from devicetune.server.gateway import read_enrollment_token

        if config.server.secagg:
            raise ConfigError("server.secagg = true runs Flower's SecAgg+ between "
                              "SuperNodes, which HTTP devices do not speak; turn off "
                              "server.gateway.enabled or server.secagg")
        if config.privacy.mode != "off":
            # DP-FedAvg divides by q x fleet.devices, the simulated fleet SuperNodes
            # play; HTTP devices would need q over the enrolled devices as well.
            raise ConfigError("server.gateway.enabled = true with privacy.mode = "
                              f"{config.privacy.mode!r} is not supported yet (the sampling "
                              "rate would not count HTTP devices); turn one of them off")
        if config.server.gateway.port == config.server.port:
            raise ConfigError(f"server.gateway.port = {config.server.gateway.port} is "
                              "the SuperLink's server.port; choose another")
        read_enrollment_token(config.server.gateway.enrollment_token_file)


def _initial_weights(config: DevicetuneConfig, artifact: list[np.ndarray]) -> list[np.ndarray]:
    """The artifact's head, or a fresh one when the federation learns it from scratch."""
    if config.server.initial_head == "fresh":
        from devicetune.model.head import fresh_like

        return fresh_like(artifact, config.seed)
    return artifact


def _start(out: Path, resume: bool, loop: FederatedLoop, server: ServerConfig,
           artifact_sha256: str) -> int:
    """Prepare ``out`` for the first round to run, and return its number."""
    from devicetune.run_files import METRICS_FILE
    from devicetune.server.state import (
        check_resumable,
        load_state,
        restore_optimizer_state,
        trim_metrics,
    )

    (out / OUTCOME_FILE).unlink(missing_ok=True)
    if not resume:
        (out / METRICS_FILE).write_text("")
        return 1
    state = load_state(out)
    check_resumable(state, strategy=server.strategy, names=loop.names,
                    shapes=[w.shape for w in loop.weights], artifact_sha256=artifact_sha256,
                    where=out / "server_state.npz")
    loop.weights = [np.asarray(w, np.float32) for w in state.weights]
    restore_optimizer_state(loop.strategy, state.optimizer)
    if loop.privacy is not None:
        _restore_privacy(loop, state.privacy, out)
    dropped = trim_metrics(out, state.round)
    log.info("resuming after round %d (%d uncommitted metrics rows dropped)", state.round,
             dropped)
    return state.round + 1


def _restore_privacy(loop: FederatedLoop, saved: dict[str, Any] | None, out: Path) -> None:
    """Continue the committed ledger, so epsilon never goes down across a crash."""
    from devicetune.errors import ServerError
    from devicetune.privacy.ledger import PrivacyLedger
    from devicetune.server.private import PrivacyGuard

    if saved is None:
        raise ServerError(f"{out / 'server_state.npz'}: this run was committed without a "
                          "privacy ledger but the config turns DP on; resume it with the "
                          "same [privacy] section, or start a new run folder")
    assert loop.privacy is not None
    ledger = PrivacyLedger.from_dict(saved["ledger"])
    loop.privacy = PrivacyGuard(loop.privacy.privacy, loop.privacy.sampling_rate, ledger)
    loop.dp_aggregation.restore(saved.get("aggregation", {}))


def _emitter(config: DevicetuneConfig, settings: AppSettings, out: Path,
             loop: FederatedLoop, evaluate: Evaluate) -> VersionEmitter | None:
    """The version emitter when ``[emit]`` is on (the build is published as version 1,
    measured with the weights the fleet starts from)."""
    if not config.emit.enabled:
        return None
    from devicetune.artifacts.emit import VersionEmitter
    from devicetune.device.runtime import LiteRTDevice

    start = LiteRTDevice(Path(settings.artifacts) / "model.tflite", 0.0).get_weights()
    return VersionEmitter(config, Path(settings.artifacts), out, evaluate(start))


def _emit(emitter: VersionEmitter, config: DevicetuneConfig, loop: FederatedLoop,
          evaluate: Evaluate, server_round: int) -> None:
    """Offer the round's global model as the next version: the privacy gate first."""
    from devicetune.artifacts.manifest import PrivacyEntry
    from devicetune.errors import DevicetuneError, PrivacyBudgetExceeded
    from devicetune.privacy.gate import check_emit

    refused, entry = None, None
    if loop.privacy is not None:
        try:
            spent = check_emit(config.privacy, loop.privacy.accountant)
        except PrivacyBudgetExceeded as exc:
            refused = str(exc)
        else:
            entry = PrivacyEntry(
                epsilon=spent.of(config.privacy.accountant), delta=config.privacy.delta,
                accountant=config.privacy.accountant,
                noise_multiplier=config.privacy.noise_multiplier,
                clip_norm=loop.dp_aggregation.clip_norm, rounds=loop.privacy.accountant.rounds,
                sampling_rate=loop.privacy.sampling_rate)
    try:
        outcome = emitter.emit(server_round, loop.weights, evaluate(loop.weights), entry,
                               refused=refused)
    except DevicetuneError as exc:  # a registry problem must not stop the federation
        log.error("round %d: emitting a version failed: %s", server_round, exc)
        return
    if outcome.emitted:
        log.info("round %d: emitted version %d", server_round, outcome.version)
    else:
        log.warning("round %d: version %d not emitted: %s", server_round, outcome.version,
                    outcome.reason)


def _commit_round(out: Path, record: RoundRecord, loop: FederatedLoop, strategy_name: str,
                  artifact_sha256: str) -> None:
    """Append the round's metrics, then commit the state: a crash in between leaves a
    row that `trim_metrics` drops on resume, never a committed round without its row."""
    from devicetune.run_files import METRICS_FILE
    from devicetune.server.state import (
        ServerState,
        commit_state,
        optimizer_state,
    )

    with (out / METRICS_FILE).open("a") as handle:
        handle.write(json.dumps(record.to_dict()) + "\n")
        handle.flush()
    commit_state(out, ServerState(
        round=record.round, strategy=strategy_name, names=list(loop.names),
        weights=[np.asarray(w, np.float32) for w in loop.weights],
        artifact_sha256=artifact_sha256, optimizer=optimizer_state(loop.strategy),
        privacy=None if loop.privacy is None else {
            "ledger": loop.privacy.ledger.to_dict(), "aggregation": loop.dp_aggregation.state()},
    ))


def _log_to_run_folder(out: Path) -> None:
    """Under ``serve``, say in ``server.log`` (and on stderr, which Flower keeps for
    ``flwr log``) what happens to each round: joins, rejected updates with their
    reasons, quorum failures, resumption."""
    logger = logging.getLogger("devicetune")
    if any(getattr(h, "devicetune_run", False) for h in logger.handlers):
        return
    out.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter("%(asctime)s devicetune %(levelname)s: %(message)s")
    for handler in (logging.FileHandler(out / LOG_FILE), logging.StreamHandler()):
        handler.setFormatter(formatter)
        handler.devicetune_run = True  # type: ignore[union-attr]
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _die_with(pid: int) -> None:
    """Exit this process at once when process ``pid`` (``devicetune serve``) is gone:
    a server killed with SIGKILL must not leave its ServerApp running, holding the run
    folder and writing into it. (Flower's own watch of the SuperExec cannot tell a dead
    parent from an unreaped zombie.) Exiting mid-commit is safe: commits are atomic."""

    def alive() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True  # no /proc: kill(pid, 0) is all there is
        return state not in ("Z", "X")

    def watch() -> None:
        while alive():
            time.sleep(0.2)
        if not _finished.is_set():
            log.error("devicetune serve (pid %d) is gone; the ServerApp exits", pid)
        os._exit(0 if _finished.is_set() else 70)

    threading.Thread(target=watch, name="serve-watchdog", daemon=True).start()


def read_outcome(out_dir: Path) -> dict[str, Any] | None:
    """How the last run in ``out_dir`` ended, or None if it did not get to say."""
    try:
        return json.loads((Path(out_dir) / OUTCOME_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
