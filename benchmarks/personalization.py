"""Personalization methods x scenarios where a person's past lacks classes.

Each scenario is a model built as `devicetune build` builds it (once per dataset and
fold, cached in ``--work``) and a set of devices that never took part in its
pretraining, each fine-tuning the shipped LiteRT artifact on the first half of its own
data (in time) and tested on the second half:

- ``synthetic label shift``: simulations/quickstart.toml's model; 40 synthetic devices
  whose past holds 2 of the 6 classes and whose future holds the other 4
  (``[fleet.data] label_shift = {past_classes = 2, future_overlap = 0.0}``);
- ``synthetic default``: the same model, 40 devices of the default generator;
- ``HAR unseen, time``: simulations/har_personalization.toml's model (pretrained on
  subjects 1-15); subjects 16-30 in recorded order;
- ``HAR unseen, class-grouped``: the same subjects, ``order = "class_grouped"`` (each
  person's activities one after another, so the past lacks the last ones);
- ``digits per speaker``: examples/spoken_digits/spoken_digits.toml's model, leave one
  speaker out (six builds); each held-out speaker's repetitions 0-24 of every digit
  train, 25-49 test;
- ``digits, recorded digit by digit``: the same folds, ``order = "class_grouped"``:
  a speaker records one digit 50 times, then the next.

Methods (all with ``epochs = 20``, the model's learning rate):

- ``global``: no personalization;
- ``naive``: every epoch on all local data, the personal head replaces the global one;
- ``gated_finetune``: the previous recipe (cross-validated epochs, a gate of 2 standard
  errors, unseen classes' classifier columns kept);
- ``seen_rerank``: the default: the personal head re-ranks only among the classes the
  device has seen, where the global top class is one of them; its output weight is
  0.5 plus half the global model's error rate on the device's past
  (``blend = "global_error"``); all epochs; a gate of 1 standard error on blocked
  cross-validation of the past;
- ``seen_rerank_ungated``: the same rule and blend without the gate;
- ``seen_rerank_cv``: the same rule, epochs and blend (0.25..1) chosen by
  cross-validation, gated;
- ``seen_knn``: the same rule, blend and gate, with a 10-nearest-neighbour vote over
  the past's embeddings (``embed``) as the personal output: no training (kNN-Per).

The global model is the built one (pretrained centrally, no federated rounds), so the
rows measure personalization alone; ``label_shift_federation.py`` measures global
accuracy before and after federated rounds on these scenarios.

Run:  .venv/bin/python benchmarks/personalization.py [--epochs 20] [--work DIR]
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = (
    "global",
    "naive",
    "gated_finetune",
    "seen_rerank",
    "seen_rerank_ungated",
    "seen_rerank_cv",
    "seen_knn",
)
SHIFT = {"past_classes": 2, "future_overlap": 0.0}
SYNTHETIC_DEVICES = 40
FSDD_SPEAKERS = 6


@dataclass
class Scenario:
    """A name, the builds it uses, and per build the fleet whose devices personalise."""

    name: str
    folds: list[tuple[dict[str, Any], dict[str, Any]]]  # (build config, fleet data)
    results: dict[str, list[tuple[float, float]]] = field(default_factory=dict)


def _toml(path: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / path).read_text())


def scenarios() -> list[Scenario]:
    """Every scenario's builds (raw configs) and fleets, in table order."""
    synthetic = _toml("simulations/quickstart.toml")
    synthetic["fleet"]["devices"] = SYNTHETIC_DEVICES
    har = _toml("simulations/har_personalization.toml")
    digits = _toml("examples/spoken_digits/spoken_digits.toml")
    unseen = {"source": "har", "subjects": list(range(16, 31)), "test_fraction": 0.5}

    def digit_folds(order: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        folds = []
        for held_out in range(FSDD_SPEAKERS):
            raw = json.loads(json.dumps(digits))
            others = [s for s in range(FSDD_SPEAKERS) if s != held_out]
            raw["seed"] = digits.get("seed", 0) + held_out  # as examples/spoken_digits
            raw["model"]["backbone"]["pretrain"]["subjects"] = others
            raw["fleet"]["data"]["subjects"] = others
            raw["name"] = f"digits-{held_out}"
            folds.append(
                (
                    raw,
                    {
                        "source": "fsdd",
                        "subjects": [held_out],
                        "test_fraction": 0.5,
                        "order": order,
                    },
                )
            )
        return folds

    syn = {"source": "synthetic", "windows_per_device": 60, "test_fraction": 0.5}
    return [
        Scenario("synthetic label shift", [(synthetic, {**syn, "label_shift": SHIFT})]),
        Scenario("synthetic default", [(synthetic, syn)]),
        Scenario("HAR unseen, time", [(har, {**unseen, "order": "recorded"})]),
        Scenario("HAR unseen, class-grouped", [(har, {**unseen, "order": "class_grouped"})]),
        Scenario("digits per speaker", digit_folds("recorded")),
        Scenario("digits, digit by digit", digit_folds("class_grouped")),
    ]


def built(raw: dict[str, Any], work: Path, data_dir: Path) -> Path:
    """The artifacts of ``raw``, built once into ``work`` and reused if their parity
    checks passed (a build whose artifacts disagree with TensorFlow writes the whole
    folder before it raises: reusing it would measure a model no app should ship)."""
    from devicetune.config import parse_config
    from devicetune.export.build import build

    key = json.dumps([raw["model"], raw.get("seed", 0)], sort_keys=True).encode()
    out = work / f"{raw['name']}-{hashlib.sha256(key).hexdigest()[:10]}"
    parity = out / "parity.json"
    if not ((out / "manifest.json").exists() and parity.exists()
            and json.loads(parity.read_text()).get("passed") is True):
        started = time.perf_counter()
        build(parse_config(raw), out, data_dir)
        print(
            f"  built {out.name} in {time.perf_counter() - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    return out


def method_configs(epochs: int) -> dict[str, Any]:
    from devicetune.config import PersonalizationConfig
    from devicetune.fleet.personalize import naive

    base = PersonalizationConfig(epochs=epochs)
    return {
        "naive": naive(base),
        "gated_finetune": base.model_copy(update={"method": "gated_finetune"}),
        "seen_rerank": base,
        "seen_rerank_ungated": base.model_copy(update={"gate": False, "validation_fraction": 0.0}),
        "seen_rerank_cv": base.model_copy(
            update={"blend": "cross_validated", "choose_epochs": True}
        ),
        "seen_knn": base.model_copy(update={"method": "seen_knn"}),
    }


def run_scenario(scenario: Scenario, work: Path, data_dir: Path, epochs: int) -> None:
    """Personalise every device of the scenario with every method; keep (global, after)."""
    from devicetune.artifacts.manifest import read_manifest
    from devicetune.config import parse_config
    from devicetune.device.runtime import LiteRTDevice
    from devicetune.fleet.personalize import personalize
    from devicetune.fleet.population import Population

    configs = method_configs(epochs)
    scenario.results = {m: [] for m in METHODS}
    for raw, fleet_data in scenario.folds:
        artifacts = built(raw, work, data_dir)
        devices = len(fleet_data.get("subjects", [])) or SYNTHETIC_DEVICES
        config = parse_config(
            {
                **raw,
                "fleet": {
                    **raw["fleet"],
                    "devices": devices,
                    "platform_mix": {"android": 1.0},
                    "data": {**raw["fleet"]["data"], **fleet_data},
                },
            }
        )
        fleet = config.fleet
        population = Population.from_config(
            fleet, config.seed, data_dir, class_names=config.model.classes
        )
        rate = config.model.optimizer.learning_rate
        runtime = LiteRTDevice(artifacts / "model.tflite", rate)
        activations = read_manifest(artifacts).tflite.head_activations
        weights = runtime.get_weights()
        for k in range(devices):
            data, profile = population.local_data(k), population.profile(k)
            for method, spec in configs.items():
                rng = np.random.default_rng(np.random.SeedSequence([config.seed, 9, k]))
                result = personalize(runtime, data, profile, weights, spec, rate, rng, activations)
                scenario.results[method].append((result.acc_global, result.acc_personal))
            scenario.results["global"].append((result.acc_global, result.acc_global))


def row(pairs: list[tuple[float, float]]) -> dict[str, float]:
    """Mean, p10 and worst accuracy after, fraction harmed, mean gain (points)."""
    before = np.array([p[0] for p in pairs])
    after = np.array([p[1] for p in pairs])
    gain = after - before
    return {
        "devices": len(pairs),
        "mean": 100 * after.mean(),
        "p10": 100 * np.percentile(after, 10),
        "worst": 100 * after.min(),
        "harmed": int((gain < -1e-9).sum()),
        "fraction_harmed": float((gain < -1e-9).mean()),
        "mean_gain": 100 * gain.mean(),
        "worst_gain": 100 * gain.min(),
    }


def format_table(table: dict[str, dict[str, dict[str, float]]]) -> str:
    lines = [
        "| scenario | method | mean % | p10 % | worst % | harmed | mean gain (pts) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for scenario, methods in table.items():
        for method, r in methods.items():
            lines.append(
                f"| {scenario} | {method} | {r['mean']:.1f} | {r['p10']:.1f} | "
                f"{r['worst']:.1f} | {r['harmed']}/{r['devices']} | "
                f"{r['mean_gain']:+.1f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "dt-bench-personal"
    )
    parser.add_argument(
        "--only", nargs="*", default=None, help="scenario names to run (default: all)"
    )
    args = parser.parse_args()
    from devicetune.config import resolve_data_dir

    data_dir = resolve_data_dir()
    args.work.mkdir(parents=True, exist_ok=True)
    table: dict[str, dict[str, dict[str, float]]] = {}
    started = time.perf_counter()
    for scenario in scenarios():
        if args.only and scenario.name not in args.only:
            continue
        t0 = time.perf_counter()
        print(f"{scenario.name}", file=sys.stderr, flush=True)
        run_scenario(scenario, args.work, data_dir, args.epochs)
        table[scenario.name] = {m: row(scenario.results[m]) for m in METHODS}
        print(f"  {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print(format_table(table))
    print(
        json.dumps(
            {
                "benchmark": "personalization",
                "epochs": args.epochs,
                "table": table,
                "wall_s": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
