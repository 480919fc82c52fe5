"""Metrics, plots and reports: `write_report` turns a run folder into report.html.

``devicetune.report(run_dir)`` is the public way to call it. Importing a submodule
(``devicetune.report.write``) makes Python rebind the name ``devicetune.report`` to this
package, so the package itself is callable too and does the same thing.
"""

import sys
import types

from devicetune.report.runs import Run, read_run
from devicetune.report.versions import VersionComparison, compare_versions
from devicetune.report.write import REPORT_FILE, Report, write_report


class _CallablePackage(types.ModuleType):
    def __call__(self, run_dir: str) -> Report:
        """Write report.html and its plots into a simulate or serve run folder."""
        return write_report(run_dir)


sys.modules[__name__].__class__ = _CallablePackage

__all__ = [
    "REPORT_FILE",
    "Report",
    "Run",
    "VersionComparison",
    "compare_versions",
    "read_run",
    "write_report",
]
