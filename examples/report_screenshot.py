"""Open a run's report.html in headless Chromium and save a screenshot of it.

    devicetune report out/quickstart
    python examples/report_screenshot.py out/quickstart out/quickstart-report.png

Needs Chromium (Debian: ``apt-get install chromium``); not part of the test suite, since
CI has no browser. Writes the report first if the run folder has none. Chromium runs
with a fresh profile and no network services, so the page renders only from the file.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from devicetune.report.write import REPORT_FILE, write_report


def screenshot(page: Path, out: Path, width: int = 1280, height: int = 2400,
               timeout_s: float = 120) -> Path:
    """Render ``page`` in headless Chromium at ``width`` x ``height`` into a PNG."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium not found: apt-get install chromium")
    out = out.resolve()
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="devicetune-chromium-") as profile:
        result = subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--hide-scrollbars",
             f"--user-data-dir={profile}", f"--screenshot={out}",
             f"--window-size={width},{height}", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout_s,
        )
    if result.returncode != 0 or not out.exists():
        sys.exit(f"chromium failed (exit {result.returncode}):\n{result.stderr[-2000:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a simulate or serve run folder")
    parser.add_argument("out", type=Path, help="the screenshot to write (PNG)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400)
    args = parser.parse_args()
    page = args.run_dir / REPORT_FILE
    if not page.exists():
        page = write_report(args.run_dir).html
    print(screenshot(page, args.out, args.width, args.height))


if __name__ == "__main__":
    main()
