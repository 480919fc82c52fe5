"""The files of a run folder: `simulate` and `serve` write them, `report` reads them.

    config.toml      the resolved config (every default filled in)
    metrics.jsonl    one line per round, written as the round ends
    devices.csv      per device: global vs personalised accuracy on its future data
    summary.json     accuracy before/after (mean, median, p10), gain, harm, throughput
    versions.jsonl   per emitted (or refused) version, for a server with [emit]
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

CONFIG_FILE = "config.toml"
METRICS_FILE = "metrics.jsonl"
DEVICES_FILE = "devices.csv"
SUMMARY_FILE = "summary.json"
VERSIONS_FILE = "versions.jsonl"
RUN_FILES = (METRICS_FILE, DEVICES_FILE, SUMMARY_FILE, VERSIONS_FILE, CONFIG_FILE)


def clear_run_folder(out: Path, *, overwrite: bool, keep: Path | None = None) -> None:
    """Make ``out`` ready for a new run: absent or empty as it is, or, with
    ``overwrite``, a previous run folder removed. The rule `serve` and `registry fetch`
    follow too: what is already there is never replaced silently.

    Raises:
        RunFolderError: ``out`` is a file, or holds something and ``overwrite`` is not
            set, or is not a run folder (``overwrite`` removes only a run), or holds
            ``keep`` (the artifacts about to be run).
    """
    import shutil

    from devicetune.errors import RunFolderError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out}: is a file; choose a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise RunFolderError(f"--out {out} is not empty (a previous run?); pass --overwrite "
                             "to replace it, or choose another --out")
    if not any((out / name).exists() for name in RUN_FILES):
        raise RunFolderError(f"--out {out} is not empty and holds no run (no "
                             f"{CONFIG_FILE}, {METRICS_FILE}); --overwrite replaces only a "
                             "run folder: choose another --out")
    if keep is not None and Path(keep).resolve().is_relative_to(out.resolve()):
        raise RunFolderError(f"--artifacts {keep} is inside --out {out}, which --overwrite "
                             "would remove; move the build or choose another --out")
    shutil.rmtree(out)


@dataclass(frozen=True)
class PersonalizationResult:
    """One device of ``devices.csv``: the global model vs its personalised one."""

    device_id: int
    platform: str
    tier: str
    n_train: int
    n_test: int
    acc_global: float
    acc_personal: float
    epochs: int
    kept_global: bool
    acc_naive: float | None = None
    user: str = ""  # the person's id in the data (subject, speaker, user column)
    blend: float | None = None  # seen_rerank: the personal output's weight (0 = global)

    @property
    def gain(self) -> float:
        """Personalised minus global accuracy on the device's future data (0..1 scale)."""
        return self.acc_personal - self.acc_global


def write_devices(path: Path, results: list[PersonalizationResult]) -> None:
    """``devices.csv``: one row per personalised device, accuracies to 6 decimals."""
    fields = list(PersonalizationResult.__dataclass_fields__)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        for result in results:
            row = asdict(result)
            row["acc_global"] = f"{result.acc_global:.6f}"
            row["acc_personal"] = f"{result.acc_personal:.6f}"
            if result.acc_naive is not None:
                row["acc_naive"] = f"{result.acc_naive:.6f}"
            writer.writerow(row)


def read_device(row: dict[str, str]) -> PersonalizationResult:
    """One row of ``devices.csv``.

    Raises:
        KeyError, TypeError, ValueError: the row is incomplete or not numbers.
    """
    naive = (row.get("acc_naive") or "").strip()
    blend = (row.get("blend") or "").strip()
    device = PersonalizationResult(
        device_id=int(row["device_id"]), platform=row["platform"], tier=row["tier"],
        n_train=int(row["n_train"]), n_test=int(row["n_test"]),
        acc_global=float(row["acc_global"]), acc_personal=float(row["acc_personal"]),
        epochs=int(row["epochs"]), kept_global=row["kept_global"].strip() == "True",
        acc_naive=float(naive) if naive else None, user=(row.get("user") or "").strip(),
        blend=float(blend) if blend else None,
    )
    if not all(math.isfinite(v) for v in (device.acc_global, device.acc_personal)):
        raise ValueError("accuracy is not a number")
    return device


def personalization_summary(results: list[PersonalizationResult]) -> dict[str, Any]:
    """The personalization part of ``summary.json``: accuracy before and after, gain,
    harm, and naive fine-tuning beside the recipe (None where no device was measured)."""
    before = np.array([r.acc_global for r in results])
    after = np.array([r.acc_personal for r in results])
    gain = after - before
    return {
        "devices": len(results),
        "accuracy_global": _spread(before) if results else None,
        "accuracy_personal": _spread(after) if results else None,
        "mean_gain": float(gain.mean()) if results else None,
        "fraction_harmed": float((gain < 0).mean()) if results else None,
        "fraction_kept_global": float(np.mean([r.kept_global for r in results]))
        if results else None,
        "naive": _naive_summary(results, before),
    }


def _spread(values: np.ndarray) -> dict[str, float]:
    return {"mean": float(values.mean()), "median": float(np.median(values)),
            "p10": float(np.percentile(values, 10))}


def _naive_summary(results: list[PersonalizationResult], before: np.ndarray
                   ) -> dict[str, Any] | None:
    """The same devices fine-tuned naively, for comparison with the recipe."""
    if not results or any(r.acc_naive is None for r in results):
        return None
    naive_acc = np.array([r.acc_naive for r in results])
    return {"accuracy": _spread(naive_acc), "mean_gain": float((naive_acc - before).mean()),
            "fraction_harmed": float((naive_acc < before).mean())}
