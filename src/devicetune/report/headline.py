"""The headline numbers of a run, as tables both the terminal and the HTML page show.

A finished simulation's numbers come from ``summary.json`` as written, never recomputed,
so the report and the run agree to the last digit. A run without one (a server, a crash)
gets what its ``metrics.jsonl`` and ``versions.jsonl`` say, each cell naming its source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from devicetune.report.intervals import Intervals, device_intervals
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
    interval: tuple[float, float] | None = None

    @property
    def text(self) -> str:
        v = self.value
        if self.interval is not None:
            lo, hi = self.interval
            return (f"{100 * lo:.1f}–{100 * hi:.1f}%" if self.unit == "percent"
                    else f"{100 * lo:+.1f} to {100 * hi:+.1f} pts")
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
        tables += _personalization(run.summary, device_intervals(run.devices or []))
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


INTERVAL_COLUMN = "95% interval"
INTERVAL_SOURCE = "devices.csv: bootstrap over devices, 2000 resamples"


def _ci(intervals: Intervals | None, key: str, unit: str) -> tuple[Cell, ...]:
    """The interval cell of ``key``, or none when there are no intervals."""
    if intervals is None:
        return ()
    found = intervals.get(key)
    return (Cell(None, unit, INTERVAL_SOURCE, found),) if found else \
        (Cell(None, unit, INTERVAL_SOURCE),)


def _personalization(s: dict[str, Any], intervals: Intervals | None = None) -> list[Table]:
    spreads = [("global model", "accuracy_global"), ("personalised", "accuracy_personal")]
    naive = isinstance(s.get("naive"), dict)
    if naive:
        spreads.append(("naive fine-tuning", "naive.accuracy"))
    ci_column = (INTERVAL_COLUMN,) if intervals is not None else ()
    accuracy = Table(
        title="Accuracy on each device's future data",
        columns=("mean", *ci_column, "median", "p10"),
        rows=tuple(Row(label, (_cell(s, f"{key}.mean", "percent"),
                               *_ci(intervals, f"{key}.mean", "percent"),
                               *(_cell(s, f"{key}.{stat}", "percent")
                                 for stat in ("median", "p10"))),
                       card="mean accuracy, personalised" if key == "accuracy_personal" else "")
                   for label, key in spreads),
    )
    rows = [Row("devices personalised", (_cell(s, "devices", "count"),
                                         *((Cell(None, "count", ""),) if ci_column else ()))),
            Row("mean gain", (_cell(s, "mean_gain", "points"),
                              *_ci(intervals, "mean_gain", "points")),
                card="mean gain from personalization", tone="gain"),
            Row("devices harmed", (_cell(s, "fraction_harmed", "percent"),
                                   *_ci(intervals, "fraction_harmed", "percent")),
                card="of devices harmed", tone="harm"),
            Row("kept the global head", (_cell(s, "fraction_kept_global", "percent"),
                                         *((Cell(None, "count", ""),) if ci_column else ())))]
    if naive:
        rows += [Row("naive fine-tuning: mean gain",
                     (_cell(s, "naive.mean_gain", "points"),
                      *_ci(intervals, "naive.mean_gain", "points"))),
                 Row("naive fine-tuning: devices harmed",
                     (_cell(s, "naive.fraction_harmed", "percent"),
                      *_ci(intervals, "naive.fraction_harmed", "percent")))]
    return [accuracy, Table("Personalization", ("", *ci_column), tuple(rows))]


def tradeoff(summary: dict[str, Any] | None, intervals: Intervals | None) -> str | None:
    """The trade-off a run measures, in one sentence a product lead can act on: naive
    fine-tuning against devicetune's recipe, accuracy against the share of devices
    harmed. None when the run did not measure naive fine-tuning."""
    s = summary or {}
    acc, harmed = _get(s, "accuracy_personal.mean"), _get(s, "fraction_harmed")
    n_acc, n_harmed = _get(s, "naive.accuracy.mean"), _get(s, "naive.fraction_harmed")
    if None in (acc, harmed, n_acc, n_harmed):
        return None

    def shown(value: float, key: str) -> str:
        found = intervals.get(key) if intervals is not None else None
        text = f"{100 * value:.1f}%"
        return text + (f" (95% interval {100 * found[0]:.1f}–{100 * found[1]:.1f}%)"
                       if found else "")

    if n_acc > acc and n_harmed > harmed:
        verdict = (f"Naive's mean is {100 * (n_acc - acc):.1f} points higher, and it harms "
                   f"{100 * (n_harmed - harmed):.1f} points more of the devices: the recipe "
                   "gives up that mean so that fewer people get a worse model.")
    elif n_acc <= acc and n_harmed >= harmed:
        verdict = "The recipe is at least as accurate and harms no more devices."
    else:
        verdict = ("Here the recipe harms more devices than naive fine-tuning: look at the "
                   "harmed devices below before shipping it.")
    method = (s.get("personalization_method") or {}).get("name", "gated_finetune")
    return (f"The trade-off measured: naive fine-tuning on each device's own data reached "
            f"{shown(n_acc, 'naive.accuracy.mean')} mean accuracy and lowered accuracy on "
            f"{shown(n_harmed, 'naive.fraction_harmed')} of devices; devicetune's recipe "
            f"({RECIPES.get(method, method)}) reached {shown(acc, 'accuracy_personal.mean')} "
            f"and lowered it on {shown(harmed, 'fraction_harmed')}. {verdict}")


# What each personalization method does, in the words of the trade-off sentence.
RECIPES = {
    "seen_rerank": "the personal head only re-ranks among the classes a device has seen, "
                   "so no unseen class's output changes, and only where it wins clearly on "
                   "the device's past",
    "seen_knn": "a nearest-neighbour vote on the device's past re-ranks only among the "
                "classes it has seen, and only where it wins clearly",
    "gated_finetune": "epochs chosen by cross-validation, the global head kept unless "
                      "fine-tuning wins clearly",
}


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
