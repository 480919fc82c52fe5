"""The headline numbers of a run, as tables both the terminal and the HTML page show.

A finished simulation's numbers come from ``summary.json`` as written, never recomputed,
so the report and the run agree to the last digit. A run without one (a server, a crash)
gets what its ``metrics.jsonl`` and ``versions.jsonl`` say, each cell naming its source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devicetune.report.runs import Run
from devicetune.report.versions import VersionComparison
from devicetune.run_files import METRICS_FILE, SUMMARY_FILE, VERSIONS_FILE


@dataclass(frozen=True)
class Cell:
    """One number, how to show it, and where it comes from (``summary.json:mean_gain``).

    Units: ``percent`` and ``points`` take a 0..1 value; ``count``, ``seconds``, ``rate``.
    """

    value: float | int | None
    unit: str
    source: str

    @property
    def text(self) -> str:
        v = self.value
        if v is None:
            return "–"
        return {
            "percent": lambda: f"{100 * v:.1f}%",
            "points": lambda: f"{100 * v:+.1f} pts",
            "count": lambda: f"{v:,}",
            "seconds": lambda: f"{v:,.1f} s",
            "rate": lambda: f"{v:,.1f}/s",
            "number": lambda: f"{v:.4g}",
        }[self.unit]()


@dataclass(frozen=True)
class Row:
    """A labelled row; ``card`` names it when its first number is also shown large, and
    ``tone`` says which way is good (``gain``: above zero, ``harm``: zero)."""

    label: str
    cells: tuple[Cell, ...]
    card: str = ""
    tone: str = ""


@dataclass(frozen=True)
class Table:
    title: str
    columns: tuple[str, ...]
    rows: tuple[Row, ...]


def headline(run: Run, versions: Sequence[VersionComparison] = ()) -> list[Table]:
    """The run's headline tables: personalization (from summary.json), the federation,
    and the server's versions, as far as the folder holds them."""
    tables = []
    if run.summary is not None:
        tables += _personalization(run.summary)
        tables.append(_federation_from_summary(run.summary))
        tables += _privacy(run.summary)
    elif run.rounds:
        tables.append(_federation_from_metrics(run.rounds))
    if run.versions is not None:
        tables.append(_versions(versions))
    return tables


def _get(summary: dict[str, Any], path: str) -> Any:
    value: Any = summary
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _cell(summary: dict[str, Any], path: str, unit: str) -> Cell:
    return Cell(_get(summary, path), unit, f"{SUMMARY_FILE}:{path}")


def _personalization(s: dict[str, Any]) -> list[Table]:
    spreads = [("global model", "accuracy_global"), ("personalised", "accuracy_personal")]
    if isinstance(s.get("naive"), dict):
        spreads.append(("naive fine-tuning", "naive.accuracy"))
    accuracy = Table(
        title="Accuracy on each device's future data",
        columns=("mean", "median", "p10"),
        rows=tuple(Row(label, tuple(_cell(s, f"{key}.{stat}", "percent")
                                    for stat in ("mean", "median", "p10")),
                       card="mean accuracy, personalised" if key == "accuracy_personal" else "")
                   for label, key in spreads),
    )
    rows = [Row("devices personalised", (_cell(s, "devices", "count"),)),
            Row("mean gain", (_cell(s, "mean_gain", "points"),),
                card="mean gain from personalization", tone="gain"),
            Row("devices harmed", (_cell(s, "fraction_harmed", "percent"),),
                card="of devices harmed", tone="harm"),
            Row("kept the global head", (_cell(s, "fraction_kept_global", "percent"),))]
    if isinstance(s.get("naive"), dict):
        rows += [Row("naive fine-tuning: mean gain", (_cell(s, "naive.mean_gain", "points"),)),
                 Row("naive fine-tuning: devices harmed",
                     (_cell(s, "naive.fraction_harmed", "percent"),))]
    return [accuracy, Table("Personalization", ("",), tuple(rows))]


def _federation_from_summary(s: dict[str, Any]) -> Table:
    return Table("Federation", ("",), (
        Row("rounds", (_cell(s, "rounds", "count"),)),
        *([Row("rounds run", (_cell(s, "rounds_run", "count"),))]
          if "rounds_run" in s else []),
        *([Row("rounds that reached quorum", (_cell(s, "rounds_aggregated", "count"),))]
          if "rounds_aggregated" in s else []),
        Row("global accuracy before round 1", (_cell(s, "global_accuracy_initial", "percent"),)),
        Row("global accuracy after the last round",
            (_cell(s, "global_accuracy_final", "percent"),),
            card="global model accuracy, last round"),
        Row("device rounds", (_cell(s, "device_rounds", "count"),)),
        Row("device rounds per second", (_cell(s, "device_rounds_per_s", "rate"),)),
        Row("wall time", (_cell(s, "wall_s", "seconds"),)),
    ))


def _privacy(s: dict[str, Any]) -> list[Table]:
    """What the run spent: user-level DP at the server, DP-SGD on the devices."""
    rows = []
    if isinstance(s.get("privacy"), dict):
        rows += [Row(f"server: {label}", (_cell(s, f"privacy.{key}", "number"),))
                 for label, key in (("epsilon (RDP)", "epsilon_rdp"),
                                    ("epsilon (PLD)", "epsilon_pld"), ("delta", "delta"),
                                    ("noise multiplier", "noise_multiplier"),
                                    ("sampling rate q", "sampling_rate"))]
    if isinstance(s.get("device_privacy"), dict):
        rows += [Row(f"devices: {label}", (_cell(s, f"device_privacy.{key}", unit),))
                 for label, key, unit in (
                     ("DP-SGD devices", "devices", "count"),
                     ("epsilon, worst device", "epsilon_max", "number"),
                     ("epsilon, median device", "epsilon_median", "number"),
                     ("delta", "delta", "number"),
                     ("noise multiplier", "noise_multiplier", "number"),
                     ("clip norm", "clip_norm", "number"))]
    return [Table("Privacy spent", ("",), tuple(rows))] if rows else []


def _federation_from_metrics(rounds: list[dict[str, Any]]) -> Table:
    def total(key: str) -> Cell:
        values = [r[key] for r in rounds if isinstance(r.get(key), int)]
        return Cell(sum(values) if values else None, "count", f"{METRICS_FILE}:sum of {key}")

    accuracies = [(r["round"], r.get("global_accuracy")) for r in rounds
                  if isinstance(r.get("global_accuracy"), int | float)]
    first = accuracies[0] if accuracies else (None, None)
    last = accuracies[-1] if accuracies else (None, None)
    return Table("Federation", ("",), (
        Row("rounds recorded", (Cell(len(rounds), "count", f"{METRICS_FILE}:rounds"),),
            card="rounds recorded"),
        Row(_after("global accuracy", first[0]),
            (Cell(first[1], "percent", f"{METRICS_FILE}:round {first[0]} global_accuracy"),)),
        Row(_after("global accuracy", last[0]),
            (Cell(last[1], "percent", f"{METRICS_FILE}:round {last[0]} global_accuracy"),),
            card="global model accuracy, last round"),
        Row("device rounds", (total("sampled"),)),
        Row("dropouts", (total("dropped"),)),
        Row("rejected updates", (total("rejected"),)),
    ))


def _after(label: str, server_round: int | None) -> str:
    return f"{label} after round {server_round}" if server_round is not None else label


def _versions(versions: Sequence[VersionComparison]) -> Table:
    emitted = [v for v in versions if v.emitted]
    return Table("Model versions", ("",), (
        Row("emitted", (Cell(len(emitted), "count", f"{VERSIONS_FILE}:emitted"),),
            card="versions emitted"),
        Row("refused", (Cell(len(versions) - len(emitted), "count",
                             f"{VERSIONS_FILE}:refused"),)),
        Row("emitted with a cohort regression",
            (Cell(sum(bool(v.regressed) for v in emitted), "count",
                  f"{VERSIONS_FILE}:emitted and regressed"),),
            card="emitted with a cohort regression", tone="harm"),
    ))
