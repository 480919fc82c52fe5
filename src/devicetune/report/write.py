"""`devicetune report RUN_DIR`: read the run, draw its figures, write report.html."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from devicetune.atomic import atomic_write_bytes
from devicetune.errors import RunFolderError
from devicetune.report import html, sections
from devicetune.report.headline import Table, headline, tradeoff
from devicetune.report.intervals import device_intervals
from devicetune.report.runs import Run, read_run

REPORT_FILE = "report.html"


@dataclass(frozen=True)
class Report:
    """What a report wrote, and the headline it shows.

    Attributes:
        images: each section's figure, by section id (the PNGs beside the page).
        verdict: the one-sentence who-gained-who-lost, when the run has devices.
        tradeoff: what the run measures (naive fine-tuning against the recipe: accuracy
            against devices harmed), when it measured naive fine-tuning.
    """

    run: Run
    html: Path
    images: dict[str, Path]
    tables: list[Table]
    verdict: str | None
    seconds: float
    tradeoff: str | None = None


def write_report(run_dir: str | Path) -> Report:
    """Write ``report.html`` and its PNGs into a run folder.

    Raises:
        RunFolderError: the folder is not a run folder, or the report cannot be written
            into it.
    """
    started = time.perf_counter()
    run = read_run(run_dir)
    try:
        shown = sections.build_sections(run, run.path)
        tables = headline(run, sections.comparisons(run))
        verdict = sections.verdict(run.devices) if run.devices else None
        measured = tradeoff(run.summary, device_intervals(run.devices or []))
        page = html.render(run, tables, shown, verdict, measured)
        target = atomic_write_bytes(run.path / REPORT_FILE, page.encode("utf-8"))
    except PermissionError as exc:
        raise RunFolderError(f"{run.path}: cannot write the report there "
                             f"({exc.strerror}); copy the run folder somewhere writable") \
            from None
    return Report(run=run, html=target,
                  images={s.id: s.image for s in shown if s.image is not None},
                  tables=tables, verdict=verdict, seconds=time.perf_counter() - started,
                  tradeoff=measured)
