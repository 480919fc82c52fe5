"""`devicetune simulate`: a fleet of phones federating and personalising the artifacts.

The run folder holds the files of `devicetune.run_files` (config.toml, metrics.jsonl,
devices.csv, summary.json) and ``artifacts/``, the build the devices run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from devicetune.atomic import atomic_write_bytes, atomic_write_json
from devicetune.config import DevicetuneConfig, PersonalizationConfig, to_toml
from devicetune.data.labeled import LabeledData
from devicetune.data.sources import FleetInput
from devicetune.device.runtime import DeviceRuntime, open_runtimes
from devicetune.errors import ConfigError, PrivacyBudgetExceeded
from devicetune.fleet.evaluation import global_evaluator, personalization_population
from devicetune.fleet.flower_log import quiet_flower
from devicetune.fleet.personalize import naive, personalization_method, personalize
from devicetune.fleet.population import DeviceProfile, LocalData, Population
from devicetune.run_files import (
    CONFIG_FILE,
    DEVICES_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    PersonalizationResult,
    personalization_summary,
    write_devices,
)

ENGINES = ("inline", "vectorized", "ray", "flower")


class Progress(Protocol):
    """Where a run reports what it is doing (the CLI draws progress bars)."""

    def stage(self, description: str, total: int | None) -> None: ...

    def advance(self, amount: int = 1) -> None: ...


class _Silent:
    def stage(self, description: str, total: int | None) -> None:
        pass

    def advance(self, amount: int = 1) -> None:
        pass


@dataclass(frozen=True)
class SimulationResult:
    out_dir: Path
    summary: dict[str, Any]
    devices: list[PersonalizationResult]


def simulate(config: DevicetuneConfig, out_dir: Path, data_dir: Path,
             engine: str = "inline", artifacts: Path | None = None,
             progress: Progress | None = None,
             ray_address: str | None = None, data: FleetInput | None = None,
             pretrain_data: LabeledData | None = None) -> SimulationResult:
    """Run the federated rounds and the personalization a config describes.

    Args:
        artifacts: a `devicetune build` folder to run; default: build into
            ``out_dir/artifacts``.
        ray_address: with the flower or ray engine, a running Ray cluster to use
            (HEAD:PORT); default: a local Ray on this machine's cores.
        data: the fleet's data instead of ``[fleet.data] source``: a `LabeledData`
            (split as ``partition`` says; ``personalization.subjects`` are its users) or
            any `DeviceDataSource`.
        pretrain_data: a team's arrays to pretrain on when building.

    Raises:
        ConfigError: a section is missing or inconsistent.
        DataError: the data is missing or malformed.
    """
    from devicetune.server.acceptance import acceptance_check
    from devicetune.server.loop import FederatedLoop
    from devicetune.server.private import private_setup
    from devicetune.server.strategies import make_strategy

    config.require("model", "fleet", command="devicetune simulate")
    assert config.model is not None and config.fleet is not None
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: allowed {', '.join(ENGINES)}")
    if engine == "flower" and data is not None:
        raise ConfigError("--engine flower runs devices in other processes, which cannot "
                          "receive data given in Python; name a data file in [fleet.data] "
                          "or use the inline or vectorized engine")
    progress = progress or _Silent()
    quiet_flower()
    started = time.perf_counter()
    if artifacts is not None:  # before anything is written: a flipped bit never runs
        from devicetune.artifacts.manifest import check_artifacts
        check_artifacts(artifacts)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out_dir / CONFIG_FILE, to_toml(config).encode())

    artifacts = _artifacts(config, out_dir, data_dir, artifacts, progress, data,
                           pretrain_data)
    population = Population.from_config(config.fleet, config.seed, data_dir, data=data,
                                        class_names=config.model.classes)
    _check_fits(population, artifacts)
    learning_rate = config.fleet.learning_rate or config.model.optimizer.learning_rate
    runtimes = open_runtimes(artifacts, config.fleet.platform_mix, learning_rate)
    reference = runtimes["android"] if "android" in runtimes else next(iter(runtimes.values()))
    initial = reference.get_weights()
    if config.server.initial_head == "fresh":
        from devicetune.model.head import fresh_like

        initial = fresh_like(initial, config.seed)

    progress.stage("preparing the evaluation devices", None)
    evaluate = global_evaluator(config, population, reference, data_dir, data)
    from devicetune.fleet.messages import TrainInstructions

    strategy, privacy = private_setup(config, make_strategy(config.server),
                                      population.devices, config.seed)
    loop = FederatedLoop(
        strategy=strategy, privacy=privacy, names=reference.weight_names,
        weights=initial, devices_per_round=config.server.devices_per_round,
        instructions=TrainInstructions(
            server_round=0, local_epochs=config.fleet.local_epochs,
            learning_rate=learning_rate, proximal_mu=config.server.proximal_mu,
            private=config.privacy.device.enabled, class_mask=config.server.class_mask),
        max_update_norm=config.server.max_update_norm, evaluate=evaluate, seed=config.seed,
        min_devices=config.server.min_devices,
        accept=acceptance_check(config, reference, data_dir,
                                tuple(population.source.example_shape), pretrain_data),
    )
    initial_accuracy = evaluate(initial)["accuracy"]
    metrics_path = out_dir / METRICS_FILE
    stopped: str | None = None
    if engine == "flower" and config.server.rounds > 0:
        final = _run_flower_engine(config, out_dir, artifacts, data_dir, population, progress,
                                   ray_address)
        loop.weights = final
    else:
        grid = _grid(engine, config, population, runtimes, artifacts, progress,
                     data_dir=data_dir, ray_address=ray_address)
        metrics_path.write_text("")
        for server_round in range(1, config.server.rounds + 1):
            progress.stage(f"round {server_round}/{config.server.rounds}",
                           min(config.server.devices_per_round, population.devices))
            try:
                record = loop.run_round(grid, server_round)
            except PrivacyBudgetExceeded as exc:  # the gate: training stops here
                stopped = str(exc)
                break
            with metrics_path.open("a") as handle:  # a crashed run keeps finished rounds
                handle.write(json.dumps(record.to_dict()) + "\n")
        if hasattr(grid, "close"):  # the ray engine's workers
            grid.close()
    rounds = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    device_rounds = sum(r["sampled"] for r in rounds)
    rounds_s = sum(r["wall_s"] for r in rounds)

    from devicetune.artifacts.manifest import read_manifest

    tflite = read_manifest(artifacts).tflite
    activations = tflite.head_activations if tflite is not None else None
    results = _personalize_fleet(config, population, runtimes, loop.weights, learning_rate,
                                 data_dir, progress, data, activations)
    write_devices(out_dir / DEVICES_FILE, results)
    summary = _summary(config, results, initial_accuracy, loop.weights, evaluate,
                       device_rounds, rounds_s, time.perf_counter() - started)
    summary["rounds_run"] = len(rounds)
    summary["stopped"] = stopped
    _withhold_gain_without_quorum(summary, rounds, config.server.min_devices)
    if loop.device_dp_steps:
        summary["device_privacy"] = _device_privacy(loop.device_dp_steps, artifacts,
                                                    config.privacy.delta)
    if privacy is not None:
        # From the rounds as recorded: the flower engine's ServerApp kept its own ledger.
        spent = [r for r in rounds if "epsilon_rdp" in r]
        summary["privacy"] = {"epsilon_rdp": spent[-1]["epsilon_rdp"] if spent else 0.0,
                              "epsilon_pld": spent[-1]["epsilon_pld"] if spent else 0.0,
                              "delta": config.privacy.delta,
                              "noise_multiplier": config.privacy.noise_multiplier,
                              "sampling_rate": privacy.sampling_rate}
        outcome = out_dir / "outcome.json"
        if stopped is None and outcome.exists():
            stopped = json.loads(outcome.read_text()).get("message") or None
            summary["stopped"] = stopped
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    np.savez(out_dir / "global_weights.npz",
             **dict(zip(loop.names, loop.weights, strict=True)))
    return SimulationResult(out_dir, summary, results)


def _grid(engine: str, config: DevicetuneConfig, population: Population,
          runtimes: dict[str, DeviceRuntime], artifacts: Path, progress: Progress,
          data_dir: Path | None = None, ray_address: str | None = None) -> Any:
    """The grid of an engine: each device's artifact in turn, all of a round's devices
    batched together, or batched in shards on Ray workers."""
    from devicetune.fleet.grid import InlineGrid

    assert config.model is not None
    timeout_s = config.server.round_timeout_s
    if engine == "inline":
        return InlineGrid(population, runtimes, round_timeout_s=timeout_s,
                          on_device=lambda _: progress.advance())
    from devicetune.artifacts.manifest import read_manifest
    from devicetune.device.runtime import LiteRTDevice
    from devicetune.fleet.vectorized import VectorizedGrid

    manifest = read_manifest(artifacts)
    assert manifest.tflite is not None
    embedder = runtimes.get("android")
    if not isinstance(embedder, LiteRTDevice):
        embedder = LiteRTDevice(artifacts / manifest.tflite.file,
                                config.model.optimizer.learning_rate)
    dp = (manifest.tflite.dp_clip_norm, manifest.tflite.dp_noise_multiplier)
    if engine == "ray":
        from devicetune.fleet.sharded import ShardedGrid

        assert data_dir is not None
        return ShardedGrid(config, artifacts, data_dir, embedder=embedder,
                           activations=manifest.tflite.head_activations,
                           ray_address=ray_address, dp=dp, population=population,
                           round_timeout_s=timeout_s, on_device=lambda _: progress.advance())
    return VectorizedGrid(population, embedder, manifest.tflite.head_activations,
                          config.model.optimizer, dp=dp, round_timeout_s=timeout_s,
                          on_device=lambda _: progress.advance())


def _device_privacy(steps: dict[int, tuple[int, int]], artifacts: Path, delta: float
                    ) -> dict[str, Any]:
    """Each phone's own sample-level epsilon from its DP-SGD steps over the whole run."""
    from devicetune.artifacts.manifest import read_manifest
    from devicetune.privacy.accounting import device_epsilons

    tflite = read_manifest(artifacts).tflite
    assert tflite is not None
    return device_epsilons(steps, tflite.dp_noise_multiplier, tflite.dp_clip_norm,
                           tflite.batch_size, delta)


def _run_flower_engine(config: DevicetuneConfig, out_dir: Path, artifacts: Path,
                       data_dir: Path, population: Population, progress: Progress,
                       ray_address: str | None = None) -> list[np.ndarray]:
    """The rounds through Flower's Simulation Engine (Ray): every device a virtual
    SuperNode running the devicetune ClientApp, the ServerApp running the same loop."""
    import os

    from flwr.simulation import run_simulation

    from devicetune.server.apps import AppSettings, make_client_app, make_server_app

    settings = AppSettings(config=out_dir / CONFIG_FILE, artifacts=Path(artifacts).resolve(),
                           data_dir=Path(data_dir).resolve(), out_dir=out_dir.resolve())
    progress.stage(f"{config.server.rounds} rounds in Flower's Simulation Engine (Ray)", None)
    # Ray workers are fresh processes: they find the data and import the same code.
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    # On a cluster, Ray is already running on every machine: connect to it (its size is
    # the cluster's); alone, start a local Ray with this machine's cores.
    init_args: dict[str, Any] = {"include_dashboard": False}
    if ray_address:
        init_args["address"] = ray_address
    else:
        init_args["num_cpus"] = os.cpu_count() or 1
    run_simulation(
        server_app=make_server_app(settings), client_app=make_client_app(settings),
        num_supernodes=population.devices,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": init_args},
    )
    weights_file = out_dir / "global_weights.npz"
    if not weights_file.exists():
        from devicetune.errors import ServerError

        raise ServerError("the Flower simulation ended without global weights; see the "
                          "log above for the ServerApp's error")
    with np.load(weights_file) as saved:
        return [saved[name] for name in saved.files]


def _artifacts(config: DevicetuneConfig, out_dir: Path, data_dir: Path,
               given: Path | None, progress: Progress, data: FleetInput | None,
               pretrain_data: LabeledData | None) -> Path:
    if given is not None:
        from devicetune.artifacts.manifest import read_manifest

        read_manifest(given)  # refuses a folder that is not a build
        return Path(given)
    from devicetune.export.build import build

    target = out_dir / "artifacts"
    build(config, target, data_dir, progress=lambda step: progress.stage(step, None),
          pretrain_data=pretrain_data, fleet_data=data)
    return target


def _check_fits(population: Population, artifacts: Path) -> None:
    from devicetune.artifacts.manifest import read_manifest

    manifest = read_manifest(artifacts)
    if len(manifest.classes) != len(population.class_names):
        raise ConfigError(f"the artifacts in {artifacts} have {len(manifest.classes)} classes "
                          f"but the fleet's data has {len(population.class_names)}")
    if tuple(manifest.input_shape) != tuple(population.source.example_shape):
        raise ConfigError(f"the artifacts in {artifacts} take examples of shape "
                          f"{manifest.input_shape}, the fleet's data has "
                          f"{list(population.source.example_shape)}")


def _personalize_fleet(config: DevicetuneConfig, fleet_population: Population,
                       runtimes: dict[str, DeviceRuntime], weights: list[np.ndarray],
                       learning_rate: float, data_dir: Path, progress: Progress,
                       data: FleetInput | None = None,
                       activations: list[str] | None = None) -> list[PersonalizationResult]:
    assert config.fleet is not None
    spec = config.fleet.personalization
    population, device_ids = personalization_population(config, fleet_population, data_dir,
                                                        data)
    progress.stage("personalising", len(device_ids))
    results = []
    for device_id in device_ids:
        profile = population.profile(device_id)
        runtime = runtimes.get(profile.platform) or next(iter(runtimes.values()))
        data = population.local_data(device_id)
        rate = spec.learning_rate or learning_rate
        result = _personalize_device(runtime, data, profile, weights, spec, rate, config.seed,
                                     activations)
        if spec.compare_naive:
            baseline = _personalize_device(runtime, data, profile, weights, naive(spec), rate,
                                           config.seed, activations)
            result = replace(result, acc_naive=baseline.acc_personal)
        results.append(replace(result, user=population.user_of(device_id)))
        progress.advance()
    return results


def _personalize_device(runtime: DeviceRuntime, data: LocalData, profile: DeviceProfile,
                        weights: list[np.ndarray], recipe: PersonalizationConfig,
                        learning_rate: float, seed: int,
                        activations: list[str] | None = None) -> PersonalizationResult:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 9, profile.device_id]))
    return personalize(runtime, data, profile, weights, recipe, learning_rate, rng,
                       activations)


def _summary(config: DevicetuneConfig, results: list[PersonalizationResult],
             initial_accuracy: float, weights: list[np.ndarray], evaluate: Callable,
             device_rounds: int, rounds_s: float, wall_s: float) -> dict[str, Any]:
    personal = personalization_summary(results)
    return {
        "devices": personal.pop("devices"),
        "rounds": config.server.rounds,
        "global_accuracy_initial": initial_accuracy,
        "global_accuracy_final": evaluate(weights)["accuracy"],
        **personal,
        "personalization_method": personalization_method(config.fleet.personalization),
        "device_rounds": device_rounds,
        "device_rounds_per_s": device_rounds / rounds_s if rounds_s > 0 else None,
        "wall_s": round(wall_s, 3),
    }


def _withhold_gain_without_quorum(summary: dict[str, Any], rounds: list[dict[str, Any]],
                                  min_devices: int) -> None:
    """A run none of whose rounds was aggregated federated nothing: its "gain" compares
    personal heads with an untouched global model, so none is reported."""
    summary["rounds_aggregated"] = sum(1 for r in rounds if r.get("quorum", True))
    if rounds and summary["rounds_aggregated"] == 0:
        summary["mean_gain"] = None
        summary["stopped"] = summary["stopped"] or (
            f"no round reached its quorum of {min_devices} valid updates (every update "
            "rejected or missing; see metrics.jsonl), so no gain is reported")
