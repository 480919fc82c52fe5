"""Read a run folder written by `devicetune simulate` or `devicetune serve`, tolerantly.

A run that crashed leaves files missing or a last line cut off mid-write. Reading keeps
whatever is intact and records a note for the rest, so a report can show what is there;
only a folder that holds no run at all is an error.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devicetune.errors import DevicetuneError, RunFolderError
from devicetune.run_files import (
    CONFIG_FILE,
    DEVICES_FILE,
    METRICS_FILE,
    RUN_FILES,
    SUMMARY_FILE,
    VERSIONS_FILE,
    PersonalizationResult,
    read_device,
)


@dataclass
class Run:
    """What a run folder holds; ``None`` for a file that is absent or unreadable.

    Attributes:
        rounds: the rows of ``metrics.jsonl`` that parsed, one per round.
        notes: one sentence per thing missing, cut off or inconsistent.
    """

    path: Path
    rounds: list[dict[str, Any]] = field(default_factory=list)
    devices: list[PersonalizationResult] | None = None
    summary: dict[str, Any] | None = None
    versions: list[dict[str, Any]] | None = None
    config: Any | None = None  # a DevicetuneConfig when config.toml loads
    notes: list[str] = field(default_factory=list)

    @property
    def kind(self) -> str:
        """``server`` (it emitted versions), ``simulation`` (it personalised) or ``run``."""
        if self.versions is not None:
            return "server"
        if self.devices is not None or self.summary is not None:
            return "simulation"
        return "run"

    @property
    def name(self) -> str:
        """The config's model name, else the folder's name."""
        return getattr(self.config, "name", None) or self.path.resolve().name


def read_run(path: str | Path) -> Run:
    """Read every file of a run folder that is there and intact.

    Raises:
        RunFolderError: ``path`` is not a folder, or holds none of the files a run writes.
    """
    path = Path(path)
    if not path.is_dir():
        raise RunFolderError(f"{path}: no such folder; give the --out folder of "
                             "`devicetune simulate` or `devicetune serve`")
    if not any((path / name).is_file() for name in RUN_FILES):
        raise RunFolderError(f"{path} is not a run folder: it has none of "
                             f"{', '.join(RUN_FILES)}; give the --out folder of "
                             "`devicetune simulate` or `devicetune serve`")
    run = Run(path)
    run.config = _read_config(path / CONFIG_FILE, run.notes)
    run.rounds = _read_rounds(path / METRICS_FILE, run.notes)
    run.devices = _read_devices(path / DEVICES_FILE, run.notes)
    run.summary = _read_summary(path / SUMMARY_FILE, run.notes)
    if (path / VERSIONS_FILE).is_file():
        run.versions = _read_jsonl(path / VERSIONS_FILE, run.notes, what="version")
    _check_consistency(run)
    return run


def _read_config(path: Path, notes: list[str]) -> Any | None:
    if not path.is_file():
        notes.append(f"{CONFIG_FILE} is missing: the report cannot say how the run was "
                     "configured (privacy budget, regression tolerance use defaults).")
        return None
    from devicetune.config import load_config

    try:
        return load_config(path)
    except DevicetuneError as exc:
        notes.append(f"{CONFIG_FILE} does not load ({exc}); configured values are not "
                     "shown.")
        return None


def _read_jsonl(path: Path, notes: list[str], what: str) -> list[dict[str, Any]]:
    """Objects of a JSON-lines file; a line cut off by a crash is skipped with a note."""
    rows: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            where = "its last line" if number == len(lines) else f"line {number}"
            cut = " (cut off: the run stopped while writing it)" if number == len(lines) \
                else ""
            notes.append(f"{path.name}: {where} is not a JSON object{cut}; that {what} is "
                         "left out.")
            continue
        rows.append(row)
    return rows


def _read_rounds(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    if not path.is_file():
        notes.append(f"{METRICS_FILE} is missing: no per-round plots.")
        return []
    rows = [r for r in _read_jsonl(path, notes, what="round")
            if isinstance(r.get("round"), int)]
    # A resumed server may write a round again; its last record is the one that counted.
    by_round = {row["round"]: row for row in rows}
    if len(by_round) < len(rows):
        notes.append(f"{METRICS_FILE}: {len(rows) - len(by_round)} rounds appear more than "
                     "once (a resumed run?); the last record of each is shown.")
    if not by_round:
        notes.append(f"{METRICS_FILE} has no complete round yet.")
    return [by_round[k] for k in sorted(by_round)]


def _read_devices(path: Path, notes: list[str]) -> list[PersonalizationResult] | None:
    if not path.is_file():
        return None
    devices, bad = [], 0
    with path.open(newline="", encoding="utf-8", errors="replace") as handle:
        for row in csv.DictReader(handle):
            try:
                devices.append(read_device(row))
            except (KeyError, TypeError, ValueError):
                bad += 1
    if bad:
        notes.append(f"{DEVICES_FILE}: {bad} row{'s' if bad > 1 else ''} incomplete or "
                     "unreadable (cut off?), left out.")
    return devices


def _read_summary(path: Path, notes: list[str]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        notes.append(f"{SUMMARY_FILE} is not valid JSON; its headline numbers are not "
                     "shown.")
        return None
    if not isinstance(summary, dict):
        notes.append(f"{SUMMARY_FILE} is not a JSON object; not shown.")
        return None
    return summary


def _check_consistency(run: Run) -> None:
    """Notes for a run that stopped early or whose files disagree."""
    # A server writes no per-device results; a simulation without them stopped early.
    if run.kind != "server":
        if not (run.path / DEVICES_FILE).is_file():
            run.notes.append(f"{DEVICES_FILE} is missing: no per-device results (a "
                             "simulation that stopped before personalization finished?).")
        if not (run.path / SUMMARY_FILE).is_file():
            run.notes.append(f"{SUMMARY_FILE} is missing: the headline numbers a finished "
                             "simulation writes are not available.")
    planned = getattr(getattr(run.config, "server", None), "rounds", None)
    done = len(run.rounds)
    if planned and run.rounds and done < planned:
        run.notes.append(f"{METRICS_FILE} has {done} of the {planned} rounds configured: "
                         "the run stopped early or is still running.")
    mode = getattr(getattr(run.config, "privacy", None), "mode", "off")
    if mode != "off" and run.rounds and not any(
            key.startswith("epsilon") for row in run.rounds for key in row):
        run.notes.append(f"privacy.mode is {mode!r} but {METRICS_FILE} records no epsilon "
                         "per round; privacy spent is not shown.")
    if run.summary is not None and run.devices is not None:
        expected = run.summary.get("devices")
        if isinstance(expected, int) and expected != len(run.devices):
            run.notes.append(f"{SUMMARY_FILE} counts {expected} devices but {DEVICES_FILE} "
                             f"has {len(run.devices)}; plots use {DEVICES_FILE}.")
