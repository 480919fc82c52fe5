"""Unpacking untrusted archives: what is refused before anything is written."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from devicetune.data.archive import extract_archive
from devicetune.errors import DataError


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_a_zip_bomb_is_refused_before_it_is_unpacked(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", {"a/zeros.bin": bytes(2_000_000)})
    assert archive.stat().st_size < 10_000
    with pytest.raises(DataError, match="unpacks to 2,000,000 bytes, more than the "
                       "1,000,000 allowed"):
        extract_archive(archive, tmp_path / "out", max_bytes=1_000_000)
    assert not list((tmp_path / "out").rglob("*.bin"))


def test_a_member_whose_header_understates_its_size_is_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("big.bin", bytes(50_000))
    data = bytearray(buffer.getvalue())
    # Claim 10 bytes in the central directory: the size check passes, the CRC does not.
    central = data.rfind(b"PK\x01\x02")
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    (tmp_path / "liar.zip").write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt or truncated"):
        extract_archive(tmp_path / "liar.zip", tmp_path / "out", max_bytes=1_000)


def test_a_safe_archive_unpacks_in_place(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "ok.zip", {"top/inner/file.txt": b"hello", "top/b.txt": b"x"})
    out = extract_archive(archive, tmp_path / "out", max_bytes=1_000)
    assert (out / "top" / "inner" / "file.txt").read_bytes() == b"hello"
    assert sorted(p.name for p in out.rglob("*") if p.is_file()) == ["b.txt", "file.txt"]
