"""`check_artifacts`: a build folder is checked file by file before anything runs it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from devicetune.artifacts.manifest import check_artifacts
from devicetune.errors import ArtifactError
from tests.artifacts.folders import write_model_folder


def _flip_one_bit(path: Path, at: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0x01
    path.write_bytes(bytes(data))


def test_an_intact_build_passes_and_extra_files_are_ignored(tmp_path: Path) -> None:
    manifest = write_model_folder(tmp_path / "build")
    (tmp_path / "build" / "notes.txt").write_text("not used by any runtime")
    assert check_artifacts(tmp_path / "build") == manifest


@pytest.mark.parametrize("file", ["model.tflite", "Model.mlmodel", "update.npz"])
def test_a_one_bit_flip_in_any_listed_file_is_refused(tmp_path: Path, file: str) -> None:
    write_model_folder(tmp_path / "build")
    _flip_one_bit(tmp_path / "build" / file)
    with pytest.raises(ArtifactError, match=f"{file}: sha256 .* does not match"):
        check_artifacts(tmp_path / "build")


def test_another_builds_model_is_refused(tmp_path: Path) -> None:
    write_model_folder(tmp_path / "build", seed=1)
    write_model_folder(tmp_path / "other", seed=2)
    shutil.copyfile(tmp_path / "other" / "model.tflite", tmp_path / "build" / "model.tflite")
    with pytest.raises(ArtifactError, match="from another build"):
        check_artifacts(tmp_path / "build")


def test_a_missing_or_unlisted_runtime_file_is_refused(tmp_path: Path) -> None:
    write_model_folder(tmp_path / "build")
    (tmp_path / "build" / "update.npz").unlink()
    with pytest.raises(ArtifactError, match="update.npz: listed .* but missing"):
        check_artifacts(tmp_path / "build")
    write_model_folder(tmp_path / "lean")
    manifest_path = tmp_path / "lean" / "manifest.json"
    manifest_path.write_text(manifest_path.read_text().replace('"model.tflite"', '"m.tflite"'))
    (tmp_path / "lean" / "model.tflite").rename(tmp_path / "lean" / "m.tflite")
    (tmp_path / "lean" / "model.tflite").write_bytes(b"unchecked model")
    with pytest.raises(ArtifactError, match="model.tflite: not listed"):
        check_artifacts(tmp_path / "lean")
