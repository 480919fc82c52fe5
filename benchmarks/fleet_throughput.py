"""Fleet simulation throughput: device-rounds per second and memory, side by side.

On the HAR fleet (one Android device per subject, the model of
simulations/har_build.toml, FedAvg, 1 local epoch), in one run:

- devicetune ``inline`` (each device runs model.tflite in LiteRT in turn),
  ``vectorized`` (a round's devices trained as one batch, same math) and ``flower``
  (Flower's Simulation Engine on Ray, the devicetune ServerApp and ClientApp);
- what a Flower user writes today: Keras ClientApps fine-tuning the head with
  ``model.fit`` (1 epoch, batch 32) in Flower's Simulation Engine, FedAvg;
- the same ``model.fit`` loop in one process without Flower;
- the compute floor: the summed time of the LiteRT calls of the inline run alone.

For devicetune's in-process engines it also prints where the rounds' time went
(generate, embed, local training, validation, aggregation, evaluation, other; the
vectorized engine's generation on its worker thread is shown apart, as overlapped).

Memory is the peak resident memory of the process tree (Ray workers included) above
what it was when the engine started. The Flower runs include Ray's start-up.

Run:  .venv/bin/python benchmarks/fleet_throughput.py [--rounds 20] [--keras-rounds 3]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss_bytes(root: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    family, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in family:
                family.add(pid)
                frontier.append(pid)
    total = 0
    for pid in family:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except OSError:
            continue
    return total


class PeakMemory:
    """Samples the process tree's memory while a block runs; ``peak`` is above start."""

    def __enter__(self) -> PeakMemory:
        self.start = tree_rss_bytes(os.getpid())
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, tree_rss_bytes(os.getpid()) - self.start)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss_bytes(os.getpid()) - self.start)


def fleet_config(build_config, rounds: int, devices_per_round: int):
    from devicetune.config import parse_config

    raw = build_config.model_dump(mode="json", exclude_none=True)
    raw.pop("source", None)
    raw["fleet"] = {"devices": 30, "platform_mix": {"android": 1.0}, "availability": 1.0,
                    "dropout": 0.0, "local_epochs": 1,
                    "data": {"source": "har", "test_fraction": 0.5}}
    raw["server"] = {"rounds": rounds, "devices_per_round": devices_per_round,
                     "strategy": "fedavg"}
    return parse_config(raw)


def run_engine(engine: str, config, artifacts: Path, data_dir: Path) -> dict:
    """Rounds only (no evaluation, no personalization): the federated part that scales."""
    from devicetune.device.litert import invocation_seconds
    from devicetune.device.runtime import LiteRTDevice
    from devicetune.fleet.flower_log import quiet_flower
    from devicetune.fleet.grid import InlineGrid
    from devicetune.fleet.messages import TrainInstructions
    from devicetune.fleet.population import Population
    from devicetune.fleet.stages import STAGES
    from devicetune.fleet.vectorized import VectorizedGrid
    from devicetune.server.loop import FederatedLoop
    from devicetune.server.strategies import make_strategy

    quiet_flower()
    rate = config.model.optimizer.learning_rate
    population = Population.from_config(config.fleet, config.seed, data_dir)
    runtime = LiteRTDevice(artifacts / "model.tflite", rate)
    if engine == "inline":
        grid = InlineGrid(population, {"android": runtime})
    else:
        from devicetune.artifacts.manifest import read_manifest

        activations = read_manifest(artifacts).tflite.head_activations
        grid = VectorizedGrid(population, runtime, activations, config.model.optimizer)
    loop = FederatedLoop(
        strategy=make_strategy(config.server), names=runtime.weight_names,
        weights=runtime.get_weights(), devices_per_round=config.server.devices_per_round,
        instructions=TrainInstructions(0, 1, rate), max_update_norm=1e9,
        evaluate=lambda weights: {}, seed=config.seed)
    floor_before = invocation_seconds()
    stages_before = STAGES.snapshot()
    device_rounds, start = 0, time.perf_counter()
    for server_round in range(1, config.server.rounds + 1):
        device_rounds += loop.run_round(grid, server_round).completed
    wall = time.perf_counter() - start
    return {"device_rounds": device_rounds, "wall_s": wall,
            "litert_s": invocation_seconds() - floor_before,
            "stages": STAGES.since(stages_before)}


def print_stages(results: dict[str, dict]) -> None:
    """Seconds per stage of the runs that time them, the rest of the wall as other
    (overlapped stages ran on a worker thread: shown, not subtracted from the wall)."""
    from devicetune.fleet.stages import is_overlapped, main_thread_seconds

    timed = {name: r for name, r in results.items() if "stages" in r}
    names = list(next(iter(timed.values()))["stages"])
    print(f"{'stage (s, % of wall)':24}" + "".join(f"{n:>28}" for n in timed))
    for stage in [*names, "other"]:
        cells = []
        for r in timed.values():
            seconds = r["wall_s"] - main_thread_seconds(r["stages"]) if stage == "other" \
                else r["stages"][stage]
            cells.append(f"{seconds:18.3f} {100 * seconds / r['wall_s']:7.1f} %")
        print(f"{stage:24}" + "".join(f"{c:>28}" for c in cells))
    if any(is_overlapped(stage) for stage in names):
        print("(overlapped: on a worker thread, hidden under the other stages' wall time; "
              "other = wall - the rest)")


def run_flower_engine(config, artifacts: Path, data_dir: Path, out: Path) -> dict:
    from flwr.simulation import run_simulation

    from devicetune.config import to_toml
    from devicetune.fleet.flower_log import quiet_flower
    from devicetune.server.apps import AppSettings, make_client_app, make_server_app

    quiet_flower()
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.toml").write_text(to_toml(config))
    settings = AppSettings(out / "config.toml", artifacts, data_dir, out)
    start = time.perf_counter()
    run_simulation(make_server_app(settings), make_client_app(settings),
                   num_supernodes=config.fleet.devices,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count() or 1,
                                                 "include_dashboard": False}})
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"device_rounds": sum(r["completed"] for r in rows), "wall_s": wall}


def keras_client_round(backbone_path: Path, head_weights, x, y) -> tuple[list, int]:
    """What a Flower user's ClientApp does: frozen backbone + Dense head, model.fit."""

    model = _keras_model(str(backbone_path), head_weights[1].shape[0])
    model.layers[-1].set_weights(head_weights)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0)
    return model.layers[-1].get_weights(), len(y)


_MODELS: dict = {}


def _keras_model(backbone_path: str, classes: int):
    import keras

    if backbone_path not in _MODELS:
        backbone = keras.saving.load_model(backbone_path, compile=False)
        backbone.trainable = False
        model = keras.Sequential([backbone, keras.layers.Dense(classes, activation="softmax")])
        model.compile(optimizer=keras.optimizers.Adam(1e-3),
                      loss="sparse_categorical_crossentropy")
        _MODELS[backbone_path] = model
    return _MODELS[backbone_path]


def run_keras_loop(config, backbone: Path, data_dir: Path, rounds: int) -> dict:
    from devicetune.fleet.population import Population

    population = Population.from_config(config.fleet, config.seed, data_dir)
    classes = len(config.model.classes)
    model = _keras_model(str(backbone), classes)
    weights = [w.copy() for w in model.layers[-1].get_weights()]
    rng = np.random.default_rng(0)
    device_rounds, start = 0, time.perf_counter()
    for _ in range(rounds):
        chosen = rng.choice(population.devices, config.server.devices_per_round, replace=False)
        results = []
        for device in chosen:
            train = population.local_data(int(device)).train
            results.append(keras_client_round(backbone, weights, train.x, train.y))
        total = sum(n for _, n in results)
        weights = [sum(w[i] * n for w, n in results) / total for i in range(2)]
        device_rounds += len(results)
    return {"device_rounds": device_rounds, "wall_s": time.perf_counter() - start}


def run_keras_in_flower(config, backbone: Path, data_dir: Path, rounds: int) -> dict:
    """Flower's Simulation Engine with Keras ClientApps and Flower's FedAvg."""
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from devicetune.fleet.flower_log import quiet_flower
    from devicetune.fleet.population import Population

    quiet_flower()
    fleet, seed = config.fleet, config.seed
    classes = len(config.model.classes)
    per_round = config.server.devices_per_round
    client = ClientApp()

    @client.train()
    def train(message: Message, context: Context) -> Message:
        population = Population.from_config(fleet, seed, data_dir)
        data = population.local_data(int(context.node_config["partition-id"])).train
        weights = message.content["arrays"].to_numpy_ndarrays()
        new, n = keras_client_round(backbone, weights, data.x, data.y)
        return Message(RecordDict({"arrays": ArrayRecord(new),
                                   "metrics": MetricRecord({"num-examples": n})}),
                       reply_to=message)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        head = _keras_model(str(backbone), classes).layers[-1].get_weights()
        strategy = FedAvg(fraction_train=per_round / fleet.devices, fraction_evaluate=0.0,
                          min_available_nodes=fleet.devices)
        strategy.start(grid=grid, initial_arrays=ArrayRecord(head), num_rounds=rounds)

    start = time.perf_counter()
    run_simulation(server, client, num_supernodes=fleet.devices,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": os.cpu_count() or 1,
                                                 "include_dashboard": False}})
    return {"device_rounds": rounds * per_round, "wall_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--keras-rounds", type=int, default=3)
    parser.add_argument("--devices-per-round", type=int, default=10)
    args = parser.parse_args()

    from devicetune.config import load_config, resolve_data_dir
    from devicetune.export.build import build

    data_dir = resolve_data_dir()
    build_config = load_config(ROOT / "simulations" / "har_build.toml")
    work = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    from devicetune.errors import ParityError

    try:
        build(build_config.model_copy(update={"export": build_config.export.model_copy(
            update={"coreml": False})}), work / "artifacts", data_dir)
    except ParityError as exc:  # the folder is complete; throughput does not depend on it
        print(f"warning: the build's parity check failed ({exc}); measuring anyway")
    artifacts = work / "artifacts"
    config = fleet_config(build_config, args.rounds, args.devices_per_round)
    keras_config = fleet_config(build_config, args.keras_rounds, args.devices_per_round)

    results: dict[str, dict] = {}
    for name, run in [
        ("devicetune inline", lambda: run_engine("inline", config, artifacts, data_dir)),
        ("devicetune vectorized",
         lambda: run_engine("vectorized", config, artifacts, data_dir)),
        ("devicetune flower (Ray)",
         lambda: run_flower_engine(config, artifacts, data_dir, work / "flower")),
        ("Keras model.fit loop, one process",
         lambda: run_keras_loop(keras_config, artifacts / "backbone.keras", data_dir,
                                args.keras_rounds)),
        ("Keras ClientApps in Flower (Ray)",
         lambda: run_keras_in_flower(keras_config, artifacts / "backbone.keras", data_dir,
                                     args.keras_rounds)),
    ]:
        with PeakMemory() as memory:
            result = run()
        result["peak_mib"] = memory.peak / 2**20
        result["rate"] = result["device_rounds"] / result["wall_s"]
        results[name] = result

    inline = results["devicetune inline"]
    floor_rate = inline["device_rounds"] / inline["litert_s"]
    keras_flower = results["Keras ClientApps in Flower (Ray)"]["rate"]
    keras_loop = results["Keras model.fit loop, one process"]["rate"]
    print(f"\nHAR fleet: 30 devices, {args.devices_per_round} per round, 1 local epoch; "
          f"devicetune {args.rounds} rounds, Keras {args.keras_rounds} rounds\n")
    print(f"{'engine':38} {'device-rounds/s':>16} {'vs Keras+Flower':>16} "
          f"{'vs Keras loop':>14} {'peak MiB':>9}")
    for name, result in results.items():
        print(f"{name:38} {result['rate']:16.1f} {result['rate'] / keras_flower:16.1f} "
              f"{result['rate'] / keras_loop:14.1f} {result['peak_mib']:9.0f}")
    print(f"{'compute floor (LiteRT calls of inline)':38} {floor_rate:16.1f}")
    print(f"\ninline wall / LiteRT time = {inline['wall_s'] / inline['litert_s']:.2f}x "
          "(overhead above the compute floor)\n")
    print_stages(results)
    print()
    print(json.dumps({
        "benchmark": "fleet_throughput",
        "device_rounds_per_s": {k: round(v["rate"], 2) for k, v in results.items()},
        "peak_mib": {k: round(v["peak_mib"], 1) for k, v in results.items()},
        "compute_floor_device_rounds_per_s": round(floor_rate, 2),
        "inline_vs_floor": round(inline["wall_s"] / inline["litert_s"], 3),
        "stages_s": {k: {s: round(v, 3) for s, v in r["stages"].items()}
                     for k, r in results.items() if "stages" in r},
        "inline_vs_keras_flower": round(inline["rate"] / keras_flower, 2),
        "inline_vs_keras_loop": round(inline["rate"] / keras_loop, 2),
        "vectorized_vs_keras_flower": round(results["devicetune vectorized"]["rate"]
                                            / keras_flower, 2),
        "vectorized_vs_keras_loop": round(results["devicetune vectorized"]["rate"]
                                          / keras_loop, 2),
    }))


if __name__ == "__main__":
    main()
