"""Shared fixtures: the real datasets, read in place, and small helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devicetune.config import resolve_data_dir

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared datasets folder ($DEVICETUNE_DATA or ../shared/datasets)."""
    path = resolve_data_dir()
    if not (path / "har.npz").exists():
        pytest.fail(f"the shared datasets are not at {path}; set DEVICETUNE_DATA")
    return path


def run_cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run ``python -m devicetune ARGS`` as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "devicetune", *args],
        cwd=cwd or PROJECT_ROOT, env={**os.environ, **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )
