from __future__ import annotations

import json
from pathlib import Path

import pytest

from devicetune.atomic import atomic_write_bytes, atomic_write_json


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "state" / "server.json"
    atomic_write_json(target, {"round": 1})
    atomic_write_json(target, {"round": 2})
    assert json.loads(target.read_text()) == {"round": 2}
    assert [p.name for p in target.parent.iterdir()] == ["server.json"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "weights.bin"
    atomic_write_bytes(target, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # type: ignore[arg-type]  # write fails
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]
