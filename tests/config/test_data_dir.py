"""Where the datasets are looked for, and where `devicetune data download` writes."""

from __future__ import annotations

from pathlib import Path

import pytest

from devicetune.config import download_dir, resolve_data_dir
from devicetune.data import load_har
from devicetune.errors import DataError


@pytest.fixture
def fresh_clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clone with no shared datasets beside it and no DEVICETUNE_DATA."""
    monkeypatch.delenv("DEVICETUNE_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    clone = tmp_path / "work" / "devicetune"
    clone.mkdir(parents=True)
    return clone


def test_a_fresh_clone_reads_and_downloads_into_the_per_user_folder(fresh_clone: Path,
                                                                   tmp_path: Path) -> None:
    expected = tmp_path / "xdg" / "devicetune" / "datasets"
    assert resolve_data_dir(project_root=fresh_clone, cwd=fresh_clone) == expected
    assert download_dir() == expected
    with pytest.raises(DataError, match=r"fetch it with `devicetune data download har "
                       rf"--to {expected}`"):
        load_har(resolve_data_dir(project_root=fresh_clone, cwd=fresh_clone))


def test_without_xdg_the_per_user_folder_is_under_home(fresh_clone: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch
                                                       ) -> None:
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    expected = tmp_path / "home" / ".local" / "share" / "devicetune" / "datasets"
    assert resolve_data_dir(project_root=fresh_clone, cwd=fresh_clone) == expected
    assert download_dir() == expected


def test_shared_datasets_beside_the_project_come_before_the_user_folder(
        fresh_clone: Path, tmp_path: Path) -> None:
    shared = tmp_path / "work" / "shared" / "datasets"
    shared.mkdir(parents=True)
    assert resolve_data_dir(project_root=fresh_clone, cwd=fresh_clone) == shared
    # ...but a download never writes into the team's shared folder
    assert download_dir() == tmp_path / "xdg" / "devicetune" / "datasets"


def test_the_environment_and_an_explicit_folder_win(fresh_clone: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "work" / "shared" / "datasets").mkdir(parents=True)
    monkeypatch.setenv("DEVICETUNE_DATA", str(tmp_path / "mine"))
    assert resolve_data_dir(project_root=fresh_clone, cwd=fresh_clone) == tmp_path / "mine"
    assert download_dir() == tmp_path / "mine"
    assert resolve_data_dir(tmp_path / "given") == tmp_path / "given"
    assert download_dir(tmp_path / "given") == tmp_path / "given"
