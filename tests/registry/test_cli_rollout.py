"""`devicetune registry rollout`: staging versions from the command line."""

from __future__ import annotations

from pathlib import Path

from devicetune.registry import Registry
from tests.artifacts.folders import write_model_folder
from tests.conftest import run_cli


def _registry_with_versions(tmp_path: Path, versions: int) -> Path:
    root = tmp_path / "registry"
    registry = Registry(root)
    for version in range(1, versions + 1):
        write_model_folder(tmp_path / f"v{version}", name="har", version=version)
        registry.publish(tmp_path / f"v{version}")
    return root


def test_rollout_sets_a_staged_policy(tmp_path: Path) -> None:
    root = _registry_with_versions(tmp_path, 2)
    result = run_cli("registry", "rollout", "har", "--root", str(root), "--default", "1",
                     "--arm", "2:10")
    assert result.returncode == 0, result.stderr
    assert "v2 to 10%" in result.stdout
    policy = Registry(root).rollout("har")
    assert policy.default_version == 1 and policy.arms[0].percent == 10
    assigned = Registry(root).assign("har", [f"phone-{i}" for i in range(20_000)])
    share = sum(a.version == 2 for a in assigned) / len(assigned)
    assert abs(share - 0.10) < 0.01


def test_rollout_refuses_bad_arms_in_one_line(tmp_path: Path) -> None:
    root = _registry_with_versions(tmp_path, 2)
    for arm, words in (("2", "VERSION:PERCENT"), ("2:150", "percent"),
                       ("9:10", "no version 9")):
        result = run_cli("registry", "rollout", "har", "--root", str(root), "--arm", arm)
        assert result.returncode == 2, arm
        assert len(result.stderr.strip().splitlines()) == 1 and words in result.stderr, \
            result.stderr
