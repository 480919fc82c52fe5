"""Fleet simulation at scale: the synthetic fleet of simulations/scale_10k.toml.

In one process, on prebuilt artifacts (``--artifacts``, else built once here):

1. scale_10k as ``devicetune simulate --engine vectorized`` runs it (10,000 devices,
   1,000 a round, 10 rounds): device-rounds/s of the rounds, against its own compute
   floor (the seconds of the backbone's LiteRT calls and the head's batched training
   measured in the same run), with the stage breakdown. With ``--baseline-src`` the same
   command also runs on another checkout (e.g. an older commit's ``src``) in a child
   process, on ``--baseline-artifacts`` when that code cannot read this build's manifest
   (build them with that checkout).
2. 1,000 devices a round with features cached (one warm-up round), 50 rounds: our
   stacked updates (one weighted-mean message per shard) beside the same engine
   answering with one Flower message per device (5 rounds), in this process, and the
   ``ray`` engine's shards on a local Ray of ``--ray-shards`` workers (Ray's start and
   the workers' warm-up round are outside the timed rounds).
3. Peak resident memory of a child process running 3 rounds of 200 devices from a
   fleet of 1,000 and from one of 10,000 (fresh processes, so neither sees the other's
   allocations).

Run:  .venv/bin/python benchmarks/fleet_scale.py [--artifacts DIR] [--baseline-src DIR
      [--baseline-artifacts DIR]] [--ray-shards N]
Prints tables and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCALE = ROOT / "simulations" / "scale_10k.toml"


def stage_table(title: str, stages: dict[str, float], wall_s: float) -> None:
    """Seconds per stage and the rest of the wall as other; an overlapped stage ran on
    a worker thread under the others, so it is shown but not subtracted."""
    from devicetune.fleet.stages import is_overlapped, main_thread_seconds

    print(f"\n{title}: where the {wall_s:.2f} s of the rounds went")
    other = wall_s - main_thread_seconds(stages)
    for name, seconds in [*stages.items(), ("other", other)]:
        print(f"  {name:22} {seconds:8.3f} s {100 * seconds / wall_s:6.1f} %")
    if any(is_overlapped(name) for name in stages):
        print("  (overlapped: on a worker thread, hidden under the other stages' wall "
              "time; other = wall - the rest)")


def run_scale_10k(artifacts: Path, data_dir: Path, out: Path) -> dict:
    from devicetune.config import load_config
    from devicetune.fleet.simulate import simulate
    from devicetune.fleet.stages import STAGES

    before = STAGES.snapshot()
    result = simulate(load_config(SCALE), out, data_dir, engine="vectorized",
                      artifacts=artifacts)
    stages = STAGES.since(before)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rounds_s = sum(r["wall_s"] for r in rows)
    floor_s = stages["embed"] + stages["local training"]
    return {"device_rounds": result.summary["device_rounds"], "rounds_s": rounds_s,
            "rate": result.summary["device_rounds_per_s"], "floor_s": floor_s,
            "stages": stages}


def run_baseline_scale_10k(src: Path, artifacts: Path, out: Path) -> dict:
    """The same command on another checkout's code, in a child process."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    subprocess.run([sys.executable, "-m", "devicetune", "simulate", str(SCALE), "--engine",
                    "vectorized", "--artifacts", str(artifacts), "--out", str(out)],
                   env=env, check=True, capture_output=True)
    summary = json.loads((out / "summary.json").read_text())
    return {"device_rounds": summary["device_rounds"],
            "rate": summary["device_rounds_per_s"]}


def cached_fleet_config(devices: int, per_round: int, rounds: int):
    from devicetune.config import load_config

    config = load_config(SCALE)
    return config.model_copy(update={
        "fleet": config.fleet.model_copy(update={"devices": devices, "availability": 1.0,
                                                 "dropout": 0.0}),
        "server": config.server.model_copy(update={"rounds": rounds,
                                                   "devices_per_round": per_round})})


class PerDeviceMessages:
    """The grid answering with one Flower message per device (no stacked updates)."""

    def __init__(self, grid) -> None:
        self._grid = grid

    def __getattr__(self, name: str):
        if name == "train_round":
            raise AttributeError(name)
        return getattr(self._grid, name)


def run_rounds(config, artifacts: Path, data_dir: Path, *, per_device: bool,
               warm_rounds: int = 1, shards: int = 0) -> dict:
    """Rounds only (evaluation off), after ``warm_rounds`` that fill the feature cache."""
    from devicetune.artifacts.manifest import read_manifest
    from devicetune.device.runtime import LiteRTDevice
    from devicetune.fleet.flower_log import quiet_flower
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
    activations = read_manifest(artifacts).tflite.head_activations
    if shards:
        from devicetune.fleet.sharded import ShardedGrid

        grid = ShardedGrid(config, artifacts, data_dir, shards=shards,
                           embedder=runtime, activations=activations)
    else:
        grid = VectorizedGrid(population, runtime, activations, config.model.optimizer)
    if per_device:
        grid = PerDeviceMessages(grid)
    loop = FederatedLoop(
        strategy=make_strategy(config.server), names=runtime.weight_names,
        weights=runtime.get_weights(), devices_per_round=config.server.devices_per_round,
        instructions=TrainInstructions(0, 1, rate), max_update_norm=1e9,
        evaluate=lambda weights: {}, seed=config.seed)
    for server_round in range(1, warm_rounds + 1):
        loop.run_round(grid, server_round)
    before = STAGES.snapshot()
    device_rounds, start = 0, time.perf_counter()
    for server_round in range(warm_rounds + 1, warm_rounds + config.server.rounds + 1):
        device_rounds += loop.run_round(grid, server_round).completed
    wall = time.perf_counter() - start
    if shards:
        grid.close()
    return {"device_rounds": device_rounds, "wall_s": wall, "rate": device_rounds / wall,
            "stages": STAGES.since(before), "weights": loop.weights}


_MEMORY_CHILD = """
import json, os, resource, sys
from pathlib import Path
sys.path.insert(0, {bench!r})
import fleet_scale as bench
from devicetune.config import resolve_data_dir
config = bench.cached_fleet_config({devices}, 200, 3)
page = os.sysconf("SC_PAGE_SIZE")
import numpy, tensorflow  # noqa: F401  (imports are not the fleet's memory)
from devicetune.fleet import vectorized  # noqa: F401
start = int(Path("/proc/self/statm").read_text().split()[1]) * page
bench.run_rounds(config, Path({artifacts!r}), resolve_data_dir(), per_device=False,
                 warm_rounds=0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({{"peak_mib": (peak - start) / 2**20}}))
"""


def memory_of_fleet(devices: int, artifacts: Path) -> float:
    code = _MEMORY_CHILD.format(bench=str(ROOT / "benchmarks"), devices=devices,
                                artifacts=str(artifacts))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                         text=True, env={**os.environ}).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=None)
    parser.add_argument("--baseline-src", type=Path, default=None,
                        help="another checkout's src/ to run scale_10k on (e.g. main)")
    parser.add_argument("--baseline-artifacts", type=Path, default=None,
                        help="a build made by the baseline's code (default: --artifacts)")
    parser.add_argument("--ray-shards", type=int, default=2,
                        help="Ray workers for the ray engine's cached row (0: skip it)")
    parser.add_argument("--cached-rounds", type=int, default=50)
    parser.add_argument("--per-round", type=int, default=1000)
    parser.add_argument("--per-device-rounds", type=int, default=5,
                        help="rounds of the (slow) one-message-per-device comparison")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["scale", "cached", "memory"])
    args = parser.parse_args()

    from devicetune.config import load_config, resolve_data_dir

    data_dir = resolve_data_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    artifacts = args.artifacts
    if artifacts is None:
        from devicetune.export.build import build

        artifacts = work / "artifacts"
        build(load_config(SCALE), artifacts, data_dir)
    report: dict = {"benchmark": "fleet_scale"}

    if "scale" not in args.skip:
        ours = run_scale_10k(artifacts, data_dir, work / "scale")
        print("\nscale_10k (10,000 devices, 1,000 a round, 10 rounds, --engine vectorized)\n")
        print(f"{'run':34} {'device-rounds/s':>16} {'vs floor':>9}")
        floor_rate = ours["device_rounds"] / ours["floor_s"]
        print(f"{'this code':34} {ours['rate']:16.1f} {ours['rounds_s'] / ours['floor_s']:8.2f}x")
        print(f"{'compute floor (embed + head)':34} {floor_rate:16.1f}")
        report["scale_10k"] = {"device_rounds_per_s": round(ours["rate"], 1),
                               "floor_device_rounds_per_s": round(floor_rate, 1),
                               "vs_floor": round(ours["rounds_s"] / ours["floor_s"], 3),
                               "stages_s": {k: round(v, 3) for k, v in ours["stages"].items()}}
        if args.baseline_src is not None:
            base = run_baseline_scale_10k(args.baseline_src,
                                          args.baseline_artifacts or artifacts, work / "base")
            print(f"{'baseline: ' + str(args.baseline_src):34} {base['rate']:16.1f}")
            print(f"\nthis code / baseline = {ours['rate'] / base['rate']:.2f}x")
            report["scale_10k"]["baseline_device_rounds_per_s"] = round(base["rate"], 1)
            report["scale_10k"]["vs_baseline"] = round(ours["rate"] / base["rate"], 2)
        stage_table("scale_10k", ours["stages"], ours["rounds_s"])

    if "cached" not in args.skip:
        config = cached_fleet_config(args.per_round, args.per_round, args.cached_rounds)
        runs = {
            "stacked updates": run_rounds(config, artifacts, data_dir, per_device=False),
            "one Flower message per device": run_rounds(
                cached_fleet_config(args.per_round, args.per_round, args.per_device_rounds),
                artifacts, data_dir, per_device=True),
        }
        if args.ray_shards:
            runs[f"ray engine: {args.ray_shards} shards, local Ray"] = run_rounds(
                config, artifacts, data_dir, per_device=False, shards=args.ray_shards)
        print(f"\n{args.per_round} devices a round, features cached, {args.cached_rounds} "
              "rounds (vectorized)\n")
        print(f"{'engine answering with':34} {'device-rounds/s':>16}")
        for name, run in runs.items():
            print(f"{name:34} {run['rate']:16.1f}")
        ratio = runs["stacked updates"]["rate"] / runs["one Flower message per device"]["rate"]
        report["cached_1000"] = {name: round(run["rate"], 1) for name, run in runs.items()}
        report["cached_1000"]["stacked_vs_per_device"] = round(ratio, 2)
        print(f"\nstacked / per-device messages = {ratio:.2f}x")
        sharded = [run for name, run in runs.items() if name.startswith("ray")]
        if sharded:
            gap = max(float(np.abs(a - b).max()) for a, b in zip(
                sharded[0]["weights"], runs["stacked updates"]["weights"], strict=True))
            print(f"ray shards vs one process after {args.cached_rounds} rounds: largest "
                  f"weight difference {gap:.1e}")
            report["cached_1000"]["ray_vs_single_max_abs"] = gap
        stage_table("stacked updates", runs["stacked updates"]["stages"],
                    runs["stacked updates"]["wall_s"])

    if "memory" not in args.skip:
        small, large = memory_of_fleet(1_000, artifacts), memory_of_fleet(10_000, artifacts)
        print("\npeak memory above start, 3 rounds of 200 devices (child processes)\n")
        print(f"  fleet of  1,000: {small:7.1f} MiB\n  fleet of 10,000: {large:7.1f} MiB"
              f"\n  ratio: {large / small:.2f}")
        report["memory_mib"] = {"1000": round(small, 1), "10000": round(large, 1),
                                "ratio": round(large / small, 3)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
