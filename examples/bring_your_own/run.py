"""A team's own data end to end: a CSV in, the models an app ships and a simulated
fleet out, with nothing but the devicetune commands.

    .venv/bin/python examples/bring_your_own/run.py            # about 1 minute
    .venv/bin/python examples/bring_your_own/run.py --quick    # fewer people and rounds

0. team.csv    a team-style table: 40 people's phones, one row per 2.56 s window with 36
               summary features (mean, std, min, max of 9 sensor channels), the user, a
               text label and a timestamp, rows shuffled; made from the synthetic fleet
               generator that ships with devicetune, so no download is needed;
1. inspect     `devicetune data inspect` on the CSV;
2. build       the TFLite and Core ML models (a dense_small backbone pretrained on 20
               people), parity checked on the team's own rows;
3. simulate    10 phones federate the head, then 10 people no step saw personalise;
4. report      report.html for the run.

Outputs go to --out (default out/examples/bring_your_own, which must not exist yet);
`walkthrough.json` there holds the headline numbers.
"""

from __future__ import annotations

import argparse
import csv
import json
import shlex
import subprocess
import sys
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PEOPLE = 40

# --quick: the same steps on 24 people, shorter pretraining, fewer rounds, Android only
# (no Core ML model: the full run builds and runs both).
QUICK = {
    "model": {"backbone": {"pretrain": {"subjects": "0-11", "epochs": 10}}},
    "export": {"parity_steps": 10, "coreml": False},
    "fleet": {"devices": 6, "platform_mix": {"android": 1.0, "ios": 0.0},
              "data": {"subjects": "12-17"},
              "personalization": {"subjects": "18-23", "epochs": 5}},
    "server": {"rounds": 3, "devices_per_round": 5, "min_devices": 3},
}


def write_team_csv(path: Path, people: int, seed: int = 11) -> int:
    """A table as a team exports it from its app's logs; returns its row count."""
    sys.path.insert(0, str(ROOT / "src"))
    from devicetune.data import SyntheticFleet

    fleet = SyntheticFleet(people, seed=seed, windows_per_device=60)
    names = ("mean", "std", "min", "max")
    header = ["user", "label", "time", *(f"{stat}_{c}" for stat in names for c in range(9))]
    rows = []
    start = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)
    for person in range(people):
        data = fleet.device(person)
        stats = np.concatenate([data.x.mean(1), data.x.std(1), data.x.min(1),
                                data.x.max(1)], axis=1)
        began = start + timedelta(days=person)
        for i in range(len(data)):
            when = began + timedelta(seconds=2.56 * i)
            rows.append([f"user-{person:03d}", fleet.class_names[data.y[i]],
                         when.isoformat(), *(f"{v:.5f}" for v in stats[i])])
    np.random.default_rng(seed).shuffle(rows)  # exports are rarely in time order
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return len(rows)


def run(args: list[str], out: Path) -> str:
    """Run a devicetune command as a user would, echo it and what it printed."""
    print(f"\n$ devicetune {shlex.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "devicetune", *args], cwd=out,
                            capture_output=True, text=True)
    printed = "\n".join(line for line in (result.stdout + result.stderr).splitlines()
                        if "XNNPACK" not in line)
    print(printed, flush=True)
    if result.returncode != 0:
        raise SystemExit(f"devicetune {args[0]} failed with exit code {result.returncode}")
    return result.stdout


def merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out/examples/bring_your_own")
    parser.add_argument("--quick", action="store_true", help="fewer people and rounds")
    options = parser.parse_args()
    out = options.out.resolve()
    if out.exists():
        raise SystemExit(f"{out} exists; choose another --out or remove it")
    out.mkdir(parents=True)
    people = 24 if options.quick else PEOPLE
    rows = write_team_csv(out / "team.csv", people)
    print(f"wrote {out / 'team.csv'}: {rows} rows of {people} people")
    config = tomllib.loads((HERE / "team.toml").read_text())
    if options.quick:
        config = merge(config, QUICK)
    (out / "team.toml").write_text(tomli_w.dumps(config))

    run(["data", "inspect", "team.csv"], out)
    run(["build", "team.toml", "--out", "build"], out)
    run(["simulate", "team.toml", "--out", "run", "--artifacts", "build"], out)
    run(["report", "run"], out)

    summary = json.loads((out / "run" / "summary.json").read_text())
    parity = json.loads((out / "build" / "parity.json").read_text())
    headline = {
        "people": people, "rows": rows, "parity_passed": parity["passed"],
        "parity_inputs": parity["inputs"],
        "global_accuracy_initial": summary["global_accuracy_initial"],
        "global_accuracy_final": summary["global_accuracy_final"],
        "personal_mean": summary["accuracy_personal"]["mean"],
        "global_mean": summary["accuracy_global"]["mean"],
        "fraction_harmed": summary["fraction_harmed"],
        "naive": summary["naive"],
    }
    (out / "walkthrough.json").write_text(json.dumps(headline, indent=2))
    print(f"\nheadline: {json.dumps(headline)}")


if __name__ == "__main__":
    main()
