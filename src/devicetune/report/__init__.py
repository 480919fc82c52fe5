"""Metrics, plots and reports: `write_report` turns a run folder into report.html."""

from devicetune.report.runs import Run, read_run
from devicetune.report.versions import VersionComparison, compare_versions
from devicetune.report.write import REPORT_FILE, Report, write_report

__all__ = [
    "REPORT_FILE",
    "Report",
    "Run",
    "VersionComparison",
    "compare_versions",
    "read_run",
    "write_report",
]
