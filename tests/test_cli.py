from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT, run_cli

HEAVY = ("tensorflow", "coremltools", "ray", "flwr.simulation", "keras")


def test_importing_the_cli_loads_no_heavy_library() -> None:
    code = (
        "import sys, json, devicetune.cli;"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == []


def test_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("build", "simulate", "serve", "device", "registry", "verify", "keys",
                    "privacy", "report", "fleet"):
        assert command in result.stdout


def test_fleet_summarizes_the_quickstart() -> None:
    result = run_cli("fleet", "simulations/quickstart.toml")
    assert result.returncode == 0, result.stderr
    assert "100 devices" in result.stdout
    assert "label mix distance" in result.stdout


def test_bad_config_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[fleet]\ndevices = 0\n")
    result = run_cli("fleet", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "fleet.devices" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_dataset_prints_one_line_and_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "har.toml"
    config.write_text("[fleet]\ndevices = 3\n[fleet.data]\nsource = 'har'\n")
    result = run_cli("fleet", str(config), "--data", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "har.npz: not found" in result.stderr


def test_a_mistyped_command_is_suggested_once() -> None:
    for argv, suggestion in ((["simulat"], "'simulate'"), (["data", "inspct"], "'inspect'")):
        result = run_cli(*argv)
        assert result.returncode == 2
        assert result.stderr.count(f"Did you mean {suggestion}?") == 1, result.stderr


def test_usage_error_exits_2() -> None:
    result = run_cli("fleet")
    assert result.returncode == 2
    assert "Missing argument" in result.stderr


def test_module_and_script_entry_points_agree() -> None:
    script = Path(sys.executable).with_name("devicetune")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True,
                            cwd=PROJECT_ROOT)
    assert result.returncode == 0 and "simulate" in result.stdout
