"""Shared fixtures: the real datasets, read in place, and small helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devicetune.config import DevicetuneConfig, parse_config, resolve_data_dir

PROJECT_ROOT = Path(__file__).resolve().parents[1]


# `make test` runs the suite on two pytest-xdist workers (`-n 2 --dist loadgroup`): the
# real-process tests spend much of their time waiting on Flower's polling, which the other
# worker fills. A module is one unit of work, so its module-scoped builds run once; the
# modules that start a local Ray share one unit, so two Ray clusters never start at once.
SHARED_UNITS = {"tests/fleet/test_sharded.py": "ray", "tests/fleet/test_simulate.py": "ray"}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(SHARED_UNITS.get(module, module)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids: list[str]) -> None:
    """With ``--dist loadgroup``, stop if the groups did not take. xdist carries a test's
    group in its node id ("...@group"); pytest 9.2 made node ids structured and xdist
    3.8's rewrite silently stopped working (pytest-xdist#1386), which spread every module
    over both workers: module builds ran twice, and the two Ray modules could start two
    Ray clusters at once. pyproject.toml pins pytest below 9.2 until xdist follows."""
    if node.config.getvalue("dist") != "loadgroup":
        return
    ungrouped = [nodeid for nodeid in ids if "@" not in nodeid]
    if ungrouped:
        raise pytest.UsageError(
            f"--dist loadgroup is not grouping tests (pytest {pytest.__version__}: "
            f"{ungrouped[0]} carries no @group); see pytest-xdist#1386")


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


# A small synthetic setup shared by fleet and server tests: one build, reused.
SMALL = {
    "name": "small", "seed": 3,
    "model": {
        "classes": 6, "input_shape": [128, 9], "batch_size": 8,
        "backbone": {"architecture": "conv1d_small", "embedding_dim": 16,
                     "pretrain": {"dataset": "synthetic", "synthetic_devices": 40,
                                  "epochs": 2}},
        "optimizer": {"name": "adam", "learning_rate": 0.005},
    },
    "export": {"parity_steps": 10},
    "fleet": {"devices": 5, "platform_mix": {"android": 1.0}, "availability": 1.0,
              "dropout": 0.0, "data": {"windows_per_device": 24},
              "personalization": {"epochs": 4}},
    "server": {"rounds": 2, "devices_per_round": 4, "min_devices": 2},
}


def small_config(**sections) -> DevicetuneConfig:
    """The small config with some sections' keys replaced."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in SMALL.items()}
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) \
            else values
    return parse_config(raw)


@pytest.fixture(scope="session")
def small_artifacts(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    from devicetune.export.build import build

    out = tmp_path_factory.mktemp("small-build")
    build(small_config(), out, data_dir)
    return out
