"""Federated rounds over phones whose pasts lack classes: global accuracy before and after.

HAR (UCI, 30 people): the backbone and a linear head are pretrained centrally on
subjects 1-15 (`simulations/har_build.toml`'s model); the head is then federated over
subjects 16-30, one phone each, for 20 rounds of 10 phones. Each phone trains on its
past and the global model is measured on every phone's future, so a method that
forgets the classes pasts lack loses exactly there. Two scenarios:

- **HAR class-skewed**: each person's windows grouped by class (the class order rotated
  per person); the past is the first third, so it holds about 2 of the 6 classes and
  the future the other 4.
- **HAR time-ordered**: each person's windows in recording order (the UCI protocol
  records one activity after another), past and future halves.

Methods: FedAvg, FedProx (mu 0.01), FedAvgM (server momentum 0.9), FedRS (the
restricted softmax, ``server.class_mask``), the server's acceptance check
(``server.acceptance_tolerance = 0.01``, on 2,048 windows of the pretraining subjects),
and the mask with the acceptance check. All phones are Android here (FedProx has no
Core ML form); an iPhone's masked update equals the TensorFlow step (parity-tested),
so the vectorized engine computes both platforms alike. One more row runs the mask
with 30% iPhones in the inline engine, where every phone runs its own artifact (LiteRT's
``train_masked``, or the Core ML model with its ``class_offset`` bias set). Prints a
table and a JSON line::

    PYTHONPATH=src python benchmarks/label_shift_federation.py
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FLEET_SUBJECTS = list(range(16, 31))
METHODS = {
    "FedAvg": {},
    "FedProx": {"proximal_mu": 0.01},
    "FedAvgM": {"strategy": "fedavgm", "server_momentum": 0.9},
    "FedRS mask": {"class_mask": True},
    "acceptance": {"acceptance_tolerance": 0.01},
    "mask + acceptance": {"class_mask": True, "acceptance_tolerance": 0.01},
}
# The mask again, with every phone running its own artifact (the inline engine): 30%
# iPhones train through the Core ML reference, the frozen class_offset bias set.
MIXED = "FedRS mask, 30% iOS"


class PersonPerDevice:
    """A `DeviceDataSource`: device ``k`` is subject ``FLEET_SUBJECTS[k]``, their windows
    in recording order, or grouped by class (``class_skewed``)."""

    def __init__(self, data, class_skewed: bool) -> None:
        self.data = data
        self.class_skewed = class_skewed
        self.devices = len(FLEET_SUBJECTS)
        self.class_names = data.class_names
        self.example_shape = data.example_shape

    def device(self, device_id: int):
        from devicetune import LabeledData

        subject = FLEET_SUBJECTS[device_id]
        person = self.data.for_users([subject])
        order = np.arange(len(person))
        if self.class_skewed:
            classes = len(self.class_names)
            order = np.argsort((person.y - device_id) % classes, kind="stable")
        return LabeledData.from_arrays(
            person.x[order],
            person.y[order],
            np.full(len(order), subject),
            class_names=self.class_names,
        )

    def user_of(self, device_id: int) -> str:
        return str(FLEET_SUBJECTS[device_id])


def past_coverage(source, test_fraction: float) -> float:
    """Mean number of classes a device's past (training part) holds."""
    held = []
    for k in range(source.devices):
        y = source.device(k).y
        held.append(len(np.unique(y[: int(round(len(y) * (1 - test_fraction)))])))
    return float(np.mean(held))


def config_for(
    test_fraction: float, rounds: int, local_epochs: int, server: dict, ios: float = 0.0
):
    from devicetune.config import load_config

    base = load_config(ROOT / "simulations" / "har_build.toml")
    raw = base.model_dump(mode="json", exclude_none=True)
    raw["fleet"] = {
        "devices": len(FLEET_SUBJECTS),
        "platform_mix": {"android": 1.0 - ios, "ios": ios} if ios else {"android": 1.0},
        "availability": 1.0,
        "dropout": 0.0,
        "local_epochs": local_epochs,
        "eval_devices": len(FLEET_SUBJECTS),
        "data": {"test_fraction": test_fraction},
        "personalization": {"epochs": 1, "compare_naive": False, "max_devices": 1},
    }
    raw["server"] = {"rounds": rounds, "devices_per_round": 10, "min_devices": 2, **server}
    from devicetune.config import parse_config

    return parse_config(raw)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument(
        "--artifacts",
        type=Path,
        default=None,
        help="a build of simulations/har_build.toml to reuse",
    )
    args = parser.parse_args()

    from devicetune.config import resolve_data_dir
    from devicetune.data.sources import load_dataset
    from devicetune.export.build import build
    from devicetune.fleet.simulate import simulate

    data_dir = resolve_data_dir()
    work = Path(tempfile.mkdtemp(prefix="bench-label-shift-"))
    artifacts = args.artifacts
    if artifacts is None:
        artifacts = work / "artifacts"
        build(config_for(0.5, 0, 1, {}), artifacts, data_dir)
    har = load_dataset("har", data_dir)
    scenarios = {
        "HAR class-skewed": (PersonPerDevice(har, True), 2 / 3),
        "HAR time-ordered": (PersonPerDevice(har, False), 0.75),
    }

    rows = []
    for scenario, (source, test_fraction) in scenarios.items():
        coverage = past_coverage(source, test_fraction)
        methods = {name: (server, 0.0, "vectorized") for name, server in METHODS.items()}
        methods[MIXED] = ({"class_mask": True}, 0.3, "inline")
        for method, (server, ios, engine) in methods.items():
            start = time.perf_counter()
            config = config_for(test_fraction, args.rounds, args.local_epochs, server, ios)
            out = work / f"{scenario}-{method}".replace(" ", "_")
            result = simulate(
                config, out, data_dir, engine=engine, artifacts=artifacts, data=source
            )
            rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            before = result.summary["global_accuracy_initial"]
            after = result.summary["global_accuracy_final"]
            rows.append(
                {
                    "scenario": scenario,
                    "past_classes": round(coverage, 2),
                    "method": method,
                    "before": round(before, 4),
                    "after": round(after, 4),
                    "change_points": round(100 * (after - before), 1),
                    "worst_round": round(min(r["global_accuracy"] for r in rounds), 4),
                    "rounds_refused": sum(1 for r in rounds if r.get("accepted") is False),
                    "seconds": round(time.perf_counter() - start, 1),
                }
            )
            print(rows[-1], file=sys.stderr, flush=True)

    print(
        f"\nHAR, pretrained on subjects 1-15, federated over subjects 16-30 "
        f"({args.rounds} rounds of 10 phones, {args.local_epochs} local epochs); global "
        "accuracy on every "
        "phone's future\n"
    )
    print(
        f"{'scenario':18} {'past classes':>12} {'method':20} {'before':>7} {'after':>7} "
        f"{'change':>7} {'worst round':>11} {'refused':>7}"
    )
    for r in rows:
        print(
            f"{r['scenario']:18} {r['past_classes']:>12.1f} {r['method']:20} "
            f"{100 * r['before']:>6.1f}% {100 * r['after']:>6.1f}% "
            f"{r['change_points']:>+7.1f} {100 * r['worst_round']:>10.1f}% "
            f"{r['rounds_refused']:>7d}"
        )
    # The target: after the rounds, at most 1 point below where they started.
    met = sorted(
        m
        for m in {r["method"] for r in rows}
        if all(r["change_points"] >= -1.0 for r in rows if r["method"] == m)
    )
    print(f"\nwithin 1 point of the start in every scenario: {'; '.join(met)}")
    print(
        json.dumps(
            {
                "benchmark": "label_shift_federation",
                "rounds": args.rounds,
                "local_epochs": args.local_epochs,
                "within_1_point_everywhere": met,
                "rows": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
