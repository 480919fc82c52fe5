"""Tables printed in the terminal."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from devicetune.data.summary import FleetSummary, Spread

if TYPE_CHECKING:
    from devicetune.data.inspect import Inspection
    from devicetune.export.build import BuildResult
    from devicetune.fleet.simulate import SimulationResult
    from devicetune.report.write import Report

console = Console()


def _fmt(spread: Spread, digits: int = 2) -> tuple[str, str, str]:
    return (f"{spread.p10:.{digits}f}", f"{spread.median:.{digits}f}",
            f"{spread.p90:.{digits}f}")


def print_fleet_summary(summary: FleetSummary, title: str) -> None:
    """The fleet's size and how much its devices differ, as one table."""
    table = Table(title=f"{title}: {summary.devices} devices, {summary.windows} windows")
    for column in ("per device", "p10", "median", "p90"):
        table.add_column(column, justify="left" if column == "per device" else "right")
    table.add_row("windows", *_fmt(summary.windows_per_device, 0))
    table.add_row("classes seen", *_fmt(summary.classes_seen, 0))
    table.add_row("label mix distance (TV)", *_fmt(summary.label_mix_distance))
    for name, spread in summary.style.items():
        table.add_row(f"style: {name}", *_fmt(spread))
    console.print(table)
    console.print(
        f"channel means: std across devices {summary.channel_mean_between_std:.3f}, "
        f"std within a device {summary.channel_mean_within_std:.3f}"
    )


def print_build(result: BuildResult) -> None:
    """What a build wrote, and its parity checks."""
    manifest = result.manifest
    console.print(f"[bold]{manifest.name}[/] v{manifest.version} -> {result.out_dir}")
    files = Table("file", "bytes", "sha256")
    for name, digest in sorted(manifest.files.items()):
        files.add_row(name, f"{(result.out_dir / name).stat().st_size:,}", digest[:16])
    console.print(files)
    checks = Table("parity check", "max |diff|", "tolerance", "passed")
    for check in result.parity.checks:
        checks.add_row(check.name, f"{check.max_abs_diff:.2e}", f"{check.tolerance:.2e}",
                       "[green]yes[/]" if check.passed else "[red]NO[/]")
    console.print(checks)
    console.print(f"parity inputs: {result.parity.inputs}")
    if result.head_source:
        console.print(f"head started from: {result.head_source}")
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    console.print(f"time: {timing}")


STAGE_WIDTH = 40  # a stage's name beyond this is cut, so the bar, counts and time fit


def stage_name(description: str, width: int = STAGE_WIDTH) -> str:
    """``description`` cut to ``width`` characters, an ellipsis marking the cut."""
    return description if len(description) <= width else description[:width - 1] + "…"


class RichProgress:
    """Progress of a run's stages (rounds, devices), on stderr: a bar per stage on a
    terminal; elsewhere (a log file, a pipe) one plain line as each stage ends."""

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(stderr=True)
        self._plain = not self._console.is_terminal
        self._progress = Progress(
            SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
            MofNCompleteColumn(), TimeElapsedColumn(),
            console=self._console, transient=False, disable=self._plain,
        )
        self._task: TaskID | None = None
        self._stage: tuple[str, int | None, int, float] | None = None

    def __enter__(self) -> RichProgress:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._finish()
        self._progress.__exit__(*exc)

    def stage(self, description: str, total: int | None) -> None:
        self._finish()
        self._stage = (description, total, 0, time.perf_counter())
        self._task = self._progress.add_task(stage_name(description), total=total)

    def advance(self, amount: int = 1) -> None:
        if self._stage is not None:
            name, total, done, started = self._stage
            self._stage = (name, total, done + amount, started)
        if self._task is not None:
            self._progress.advance(self._task, amount)

    def _finish(self) -> None:
        if self._stage is not None and self._plain:
            name, total, done, started = self._stage
            counts = f"{done}/{total}, " if total is not None else ""
            self._console.print(f"{name}: {counts}{time.perf_counter() - started:.1f} s",
                                highlight=False, markup=False, soft_wrap=True)
        self._stage = None
        if self._task is not None:
            task = self._progress.tasks[-1]
            self._progress.update(self._task, total=task.completed or 1,
                                  completed=task.completed or 1)
            self._task = None


def print_simulation(result: SimulationResult) -> None:
    """The headline of a simulation: personalization before/after, federation."""
    s = result.summary
    table = Table(title=f"{s['devices']} devices personalised after {s['rounds']} rounds")
    for column in ("accuracy on future data", "mean", "median", "p10"):
        table.add_column(column, justify="left" if column.startswith("acc") else "right")
    for label, key in (("global model", "accuracy_global"),
                       ("personalised", "accuracy_personal")):
        if s[key]:
            table.add_row(label, *(f"{100 * s[key][k]:.1f}%" for k in ("mean", "median", "p10")))
    console.print(table)
    if s["mean_gain"] is not None:
        console.print(f"mean gain {100 * s['mean_gain']:+.1f} points, "
                      f"{100 * s['fraction_harmed']:.0f}% of devices harmed, "
                      f"{100 * s['fraction_kept_global']:.0f}% kept the global head")
    if s.get("stopped"):
        console.print(f"[yellow]stopped early:[/] {s['stopped']}")
    if s.get("privacy"):
        p = s["privacy"]
        console.print(f"user-level DP: epsilon {p['epsilon_rdp']:.3g} (RDP) / "
                      f"{p['epsilon_pld']:.3g} (PLD) at delta {p['delta']:g}, noise "
                      f"multiplier {p['noise_multiplier']:g}, q = {p['sampling_rate']:.3g}")
    if s.get("device_privacy"):
        d = s["device_privacy"]
        console.print(f"on-device DP-SGD: per-device epsilon up to {d['epsilon_max']:.3g} "
                      f"(median {d['epsilon_median']:.3g}) at delta {d['delta']:g}")
    rounds = s.get("rounds_run", s["rounds"])
    console.print(f"global accuracy {100 * s['global_accuracy_initial']:.1f}% -> "
                  f"{100 * s['global_accuracy_final']:.1f}% over {rounds} rounds; "
                  f"{s['device_rounds_per_s'] or 0:.1f} device-rounds/s; "
                  f"wall {s['wall_s']:.0f}s; run folder {result.out_dir}")


def print_report(report: Report) -> None:
    """The headline tables of a report, its notes, and where the page is."""
    for headline in report.tables:
        console.print(f"[bold]{headline.title}[/]", highlight=False)
        table = Table(show_header=any(headline.columns))
        table.add_column("")
        for column in headline.columns:
            table.add_column(column, justify="right")
        for row in headline.rows:
            table.add_row(row.label, *(cell.text for cell in row.cells))
        console.print(table)
    if report.tradeoff:
        console.print(report.tradeoff, highlight=False)
    if report.verdict:
        console.print(report.verdict)
    for note in report.run.notes:
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    console.print(f"report: {report.html} ({len(report.images)} figures, "
                  f"{report.seconds:.1f}s)", highlight=False)


def print_inspection(result: Inspection) -> None:
    """`devicetune data inspect`: the dataset per user, and the personalization split."""
    table = Table(title=f"{result.source}", show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value")
    r = result.rows_per_user
    table.add_row("users", f"{result.users:,}")
    table.add_row("rows", f"{result.rows:,} (per user: min {r['min']:.0f}, median "
                  f"{r['median']:.0f}, max {r['max']:.0f})")
    table.add_row("example shape", str(result.example_shape))
    table.add_row("classes", ", ".join(f"{name} {count:,}" for name, count
                                       in zip(result.classes, result.class_counts,
                                              strict=True)))
    d = result.label_mix_distance
    table.add_row("label mix vs overall", f"total variation p10 {d['p10']:.2f}, median "
                  f"{d['median']:.2f}, p90 {d['p90']:.2f}")
    table.add_row("missing values", ", ".join(f"{k}: {v:,}" for k, v in result.missing.items())
                  or "none")
    table.add_row("constant columns", ", ".join(result.constant) or "none")
    u = result.future_rows_unseen
    table.add_row(f"past lacks a future class (test fraction {result.test_fraction:g})",
                  f"{result.users_past_lacks_future_class} of {result.users} users; share of "
                  f"future rows in classes the past lacks: p10 {100 * u['p10']:.0f}%, median "
                  f"{100 * u['median']:.0f}%, p90 {100 * u['p90']:.0f}%")
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}")
