"""Unpacking a downloaded zip or tar archive without trusting it.

Every member is checked before a byte is written: a name that is absolute or climbs out
with ``..``, a symbolic or hard link, a device or FIFO is refused, and so is an archive
that would unpack to more than a set number of bytes (a zip bomb). Members are written
by hand, chunk by chunk, rather than by ``extractall``, so no archive feature (link
targets, permissions, owners) reaches the file system.
"""

from __future__ import annotations

import gzip
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from devicetune.errors import DataError

_CHUNK = 1 << 20


def extract_archive(archive: Path, dest: Path, *, max_bytes: int) -> Path:
    """Unpack the zip or tar (plain, gz, bz2, xz) ``archive`` into ``dest``.

    Raises:
        DataError: the archive is corrupt or truncated, a member is unsafe, or it
            unpacks to more than ``max_bytes``.
    """
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, dest, max_bytes)
        elif tarfile.is_tarfile(archive):
            _extract_tar(archive, dest, max_bytes)
        else:
            raise DataError(f"{archive.name}: not a zip or tar archive (truncated or "
                            "corrupt download?)")
    except (zipfile.BadZipFile, tarfile.TarError, gzip.BadGzipFile, zlib.error,
            EOFError) as exc:
        raise DataError(f"{archive.name}: corrupt or truncated archive ({exc})") from None
    return dest


def _extract_zip(archive: Path, dest: Path, max_bytes: int) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            _check_name(archive, info.filename)
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0: made without Unix modes
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise DataError(f"{archive.name}: member {info.filename!r} is a link or "
                                "special file; refused")
        _check_total(archive, sum(i.file_size for i in members), max_bytes)
        written = 0
        for info in members:
            target = dest / info.filename
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with zf.open(info) as source:
                written = _copy(source, target, written, archive, max_bytes)


def _extract_tar(archive: Path, dest: Path, max_bytes: int) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _check_name(archive, member.name)
            if not (member.isfile() or member.isdir()):
                raise DataError(f"{archive.name}: member {member.name!r} is a link or "
                                "special file; refused")
        _check_total(archive, sum(m.size for m in members if m.isfile()), max_bytes)
        written = 0
        for member in members:
            target = dest / member.name
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            source = tf.extractfile(member)
            assert source is not None  # a regular file always has contents
            with source:
                written = _copy(source, target, written, archive, max_bytes)


def _check_name(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if (not name or path.is_absolute() or ".." in path.parts
            or (len(name) > 1 and name[1] == ":")):
        raise DataError(f"{archive.name}: member {name!r} would be written outside the "
                        "folder it is unpacked into; refused")


def _check_total(archive: Path, total: int, max_bytes: int) -> None:
    if total > max_bytes:
        raise DataError(f"{archive.name}: unpacks to {total:,} bytes, more than the "
                        f"{max_bytes:,} allowed; refused")


def _copy(source: IO[bytes], target: Path, written: int, archive: Path,
          max_bytes: int) -> int:
    # Sizes in the header may lie; count what is actually written.
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if written > max_bytes:
                raise DataError(f"{archive.name}: unpacks to more than the "
                                f"{max_bytes:,} bytes allowed; refused")
            out.write(chunk)
    return written
