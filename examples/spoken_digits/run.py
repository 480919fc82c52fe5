"""Spoken digits personalised per speaker: leave one speaker out, six times.

For each of the six FSDD speakers, ``spoken_digits.toml`` with that speaker held out:
the backbone is pretrained centrally on the other five and the head federated over
their five phones; then the held-out speaker's phone personalises the final global
model on the first half of their recordings (repetitions 0-24 of every digit) and is
tested on the second half (25-49). Each fold is one ``devicetune simulate`` run, in
``OUT/<speaker>/``; the table is read back from those runs' ``devices.csv`` and
``summary.json`` and written to ``OUT/speakers.json``.

    .venv/bin/python examples/spoken_digits/run.py --out out/spoken_digits
    .venv/bin/python examples/spoken_digits/run.py --out out/sd_quick --quick

``--quick`` (for the tests) holds out two speakers only, with fewer pretraining
epochs, rounds and personalization epochs; its numbers are not the example's results.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CONFIG = Path(__file__).resolve().with_name("spoken_digits.toml")
SPEAKERS = ("george", "jackson", "lucas", "nicolas", "theo", "yweweler")  # FSDD users 0-5
TABLE_FILE = "speakers.json"
MEAN_KEYS = ("acc_global_before_rounds", "acc_global", "acc_personal", "gain", "acc_naive")
QUICK_SPEAKERS = (0, 1)
# Small enough for a test on a shared 2-core machine, large enough to beat chance.
QUICK = {"pretrain_epochs": 10, "pretrain_learning_rate": 0.002, "pretrain_batch_size": 32,
         "rounds": 2, "personalization_epochs": 5, "parity_steps": 10}


def fold_raw(base: dict[str, Any], held_out: int, quick: bool, seed: int | None = None
             ) -> dict[str, Any]:
    """The config of the fold that holds ``held_out`` out, as a TOML mapping.

    The seed (the config's unless given) moves with the fold so that the held-out phone
    (device 0 of its one-device population) is not the same platform in every fold.
    """
    raw = json.loads(json.dumps(base))  # a deep copy of plain TOML values
    others = [s for s in range(len(SPEAKERS)) if s != held_out]
    raw["seed"] = (base.get("seed", 0) if seed is None else seed) + held_out
    raw["model"]["backbone"]["pretrain"]["subjects"] = others
    raw["fleet"]["devices"] = len(others)
    raw["fleet"]["data"]["subjects"] = others
    raw["fleet"]["personalization"]["subjects"] = [held_out]
    if quick:
        pretrain = raw["model"]["backbone"]["pretrain"]
        pretrain["epochs"] = QUICK["pretrain_epochs"]
        pretrain["learning_rate"] = QUICK["pretrain_learning_rate"]
        pretrain["batch_size"] = QUICK["pretrain_batch_size"]
        raw["server"]["rounds"] = QUICK["rounds"]
        raw["fleet"]["personalization"]["epochs"] = QUICK["personalization_epochs"]
        raw.setdefault("export", {})["parity_steps"] = QUICK["parity_steps"]
    return raw


def speaker_row(run_dir: Path, held_out: int) -> dict[str, Any]:
    """One speaker's line of the table, read from its fold's run folder."""
    with (run_dir / "devices.csv").open(newline="") as handle:
        (device,) = list(csv.DictReader(handle))  # the one held-out phone
    summary = json.loads((run_dir / "summary.json").read_text())
    acc_global, acc_personal = float(device["acc_global"]), float(device["acc_personal"])
    return {
        "speaker": SPEAKERS[held_out], "speaker_id": held_out,
        "platform": device["platform"],
        "n_train": int(device["n_train"]), "n_test": int(device["n_test"]),
        "acc_global": acc_global, "acc_personal": acc_personal,
        "gain": acc_personal - acc_global,
        "acc_naive": float(device["acc_naive"]) if device["acc_naive"] else None,
        "kept_global": device["kept_global"] == "True", "epochs": int(device["epochs"]),
        "acc_global_before_rounds": summary["global_accuracy_initial"],
        "run_dir": str(run_dir),
    }


def _mean(values: list[Any]) -> float | None:
    """The mean, or None when a value is missing (naive fine-tuning switched off)."""
    return None if any(v is None for v in values) else sum(values) / len(values)


def run(out_dir: Path, data_dir: Path, speakers: list[int], quick: bool = False,
        seed: int | None = None) -> dict[str, Any]:
    """Run one fold per held-out speaker; return (and write) the per-speaker table."""
    from devicetune.config import parse_config
    from devicetune.fleet.simulate import simulate

    base = tomllib.loads(CONFIG.read_text())
    seed = base.get("seed", 0) if seed is None else seed
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for k, held_out in enumerate(speakers, 1):
        started = time.perf_counter()
        print(f"fold {k}/{len(speakers)}: {SPEAKERS[held_out]} held out", file=sys.stderr,
              flush=True)
        config = parse_config(fold_raw(base, held_out, quick, seed), source=CONFIG)
        run_dir = out_dir / SPEAKERS[held_out]
        simulate(config, run_dir, data_dir)
        rows.append(speaker_row(run_dir, held_out))
        print(f"  {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    table = {"config": str(CONFIG), "quick": quick, "seed": seed, "speakers": rows,
             "mean": {key: _mean([r[key] for r in rows]) for key in MEAN_KEYS}}
    (out_dir / TABLE_FILE).write_text(json.dumps(table, indent=2) + "\n")
    return table


def format_table(table: dict[str, Any]) -> str:
    """The per-speaker table as Markdown: accuracy in percent on each speaker's second
    half of recordings, with the global model before the federated rounds, after them
    (what the phone starts from), personalised, and naively fine-tuned."""
    def pct(value: float | None) -> str:
        return "" if value is None else f"{100 * value:.1f}%"

    lines = ["| speaker | platform | n_train | n_test | global, before rounds "
             "| global model | personalised | gain | naive fine-tuning |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in table["speakers"]:
        lines.append(f"| {r['speaker']} | {r['platform']} | {r['n_train']} | {r['n_test']} "
                     f"| {pct(r['acc_global_before_rounds'])} | {pct(r['acc_global'])} "
                     f"| {pct(r['acc_personal'])} | {100 * r['gain']:+.1f} "
                     f"| {pct(r['acc_naive'])} |")
    mean = table["mean"]
    lines.append(f"| mean | | | | {pct(mean['acc_global_before_rounds'])} "
                 f"| {pct(mean['acc_global'])} | {pct(mean['acc_personal'])} "
                 f"| {100 * mean['gain']:+.1f} | {pct(mean['acc_naive'])} |")
    return "\n".join(lines)


def _speaker(value: str) -> int:
    if value.isdigit() and int(value) < len(SPEAKERS):
        return int(value)
    if value in SPEAKERS:
        return SPEAKERS.index(value)
    raise argparse.ArgumentTypeError(f"{value!r}: a speaker is 0-5 or one of "
                                     f"{', '.join(SPEAKERS)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/spoken_digits"))
    parser.add_argument("--quick", action="store_true",
                        help="two folds, few epochs and rounds (for tests)")
    parser.add_argument("--speakers", type=_speaker, nargs="+",
                        help="held-out speakers to run (default: all six; two with --quick)")
    parser.add_argument("--seed", type=int, help="base seed; the fold that holds speaker k out "
                        "runs with seed + k (default: the config's)")
    parser.add_argument("--data", type=Path, help="the datasets folder (default: "
                        "$DEVICETUNE_DATA or ../shared/datasets)")
    args = parser.parse_args()

    from devicetune.config import resolve_data_dir
    from devicetune.errors import DevicetuneError

    speakers = args.speakers or list(QUICK_SPEAKERS if args.quick else range(len(SPEAKERS)))
    try:
        table = run(args.out, resolve_data_dir(args.data), speakers, quick=args.quick,
                    seed=args.seed)
    except DevicetuneError as exc:
        sys.exit(f"error: {exc}")
    print(format_table(table))
    print(f"\nwritten to {args.out / TABLE_FILE}")


if __name__ == "__main__":
    main()
