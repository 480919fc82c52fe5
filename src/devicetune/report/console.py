"""Tables printed in the terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from devicetune.data.summary import FleetSummary, Spread

if TYPE_CHECKING:
    from devicetune.export.build import BuildResult

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
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    console.print(f"time: {timing}")
