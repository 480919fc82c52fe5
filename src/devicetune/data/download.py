"""Fetching the public originals of the real datasets and turning them into ``.npz``.

``devicetune data download har|fsdd`` streams the archive to a temporary file beside
the target, checks its size and sha256 before anything reads it, unpacks it safely
(`devicetune.data.archive`), converts it (`devicetune.data.convert`) and moves the
result into place atomically. On any failure nothing is left behind. An existing file
the loader reads is not downloaded again.

The sha256 values are pinned from other projects that download the same files (see
``checksum_source``). A download that does not match is refused, with the value it got;
``--sha256`` pins another value (a different mirror or release) once a user has checked
it by other means. ``--url`` alone keeps the pinned value: a mirror must serve the
same bytes.

FSDD's newest tag, v1.0.9, holds 2,500 recordings by 5 speakers; the team's shared
``fsdd.npz`` was made from a later commit (26eb9aa, 3,000 recordings, adding ``lucas``).
Its archive's sha256 could not be checked here, so it is not pinned: fetch it with
``--url`` and ``--sha256``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from devicetune.atomic import fsync_dir
from devicetune.data.archive import extract_archive
from devicetune.data.convert import (
    fsdd_arrays_from_recordings,
    har_arrays_from_uci,
    write_npz,
)
from devicetune.data.fsdd import FSDD_FILE, load_fsdd
from devicetune.data.har import HAR_FILE, load_har
from devicetune.errors import DataError

_MB = 1_000_000


@dataclass(frozen=True)
class DatasetSource:
    """Where a dataset's public original lives and what it must be."""

    name: str
    file_name: str  # what the loader reads in the data folder
    url: str
    sha256: str  # of the archive at ``url``
    size_bytes: int | None  # the archive's known size, for the progress bar
    max_bytes: int  # a larger download is refused
    max_unpacked_bytes: int  # a larger unpacked archive is refused
    checksum_source: str
    licence: str
    citation: str


DATASETS: dict[str, DatasetSource] = {
    "har": DatasetSource(
        name="har", file_name=HAR_FILE,
        url="https://archive.ics.uci.edu/static/public/240/"
            "human+activity+recognition+using+smartphones.zip",
        sha256="c00b803081a5c797cd5e4b83700a9810b38d53d9d84e01917e090e1fdbc81031",
        size_bytes=61_005_872, max_bytes=100 * _MB, max_unpacked_bytes=1_000 * _MB,
        checksum_source="the same value and size pinned independently by several public "
                        "projects that download UCI dataset 240 (UCI publishes none)",
        licence="CC BY 4.0 on the UCI page; the README inside the zip asks that [1] be "
                "cited and prohibits commercial use",
        citation="[1] D. Anguita, A. Ghio, L. Oneto, X. Parra, J. L. Reyes-Ortiz. A Public "
                 "Domain Dataset for Human Activity Recognition Using Smartphones. ESANN "
                 "2013. UCI Machine Learning Repository, dataset 240, "
                 "doi:10.24432/C54S4K",
    ),
    "fsdd": DatasetSource(
        name="fsdd", file_name=FSDD_FILE,
        url="https://github.com/Jakobovski/free-spoken-digit-dataset/archive/v1.0.9.tar.gz",
        sha256="8bc44cde129d505cbbb6b365c09f80c663f2aa77578afc634e6141a2f87100c0",
        size_bytes=11_975_353, max_bytes=60 * _MB, max_unpacked_bytes=500 * _MB,
        checksum_source="TensorFlow Datasets' checksums.tsv for spoken_digit "
                        "(tensorflow_datasets/audio/spoken_digit), the same in another "
                        "project's pinned download",
        licence="CC BY-SA 4.0 (fsdd.npz, an adaptation, is CC BY-SA 4.0 too)",
        citation="Z. Jackson et al. Free Spoken Digit Dataset (FSDD), v1.0.9. "
                 "github.com/Jakobovski/free-spoken-digit-dataset, doi:10.5281/zenodo.1342401",
    ),
}


class TransferProgress(Protocol):
    """What shows a download's progress (a rich bar on a terminal, lines otherwise)."""

    def start(self, description: str, total_bytes: int | None) -> None: ...
    def advance(self, n_bytes: int) -> None: ...
    def finish(self) -> None: ...


@dataclass(frozen=True)
class DownloadResult:
    path: Path
    downloaded: bool  # False: a valid file was already there
    sha256: str | None = None  # of the archive, when downloaded


def download_dataset(name: str, to: Path, *, url: str | None = None,
                     sha256: str | None = None, say: Callable[[str], None] = print,
                     progress: TransferProgress | None = None,
                     max_bytes: int | None = None, timeout_s: float = 60.0
                     ) -> DownloadResult:
    """Fetch dataset ``name`` ("har" or "fsdd") into ``to/<name>.npz``.

    Args:
        url: a mirror of the original archive (default: the registry's URL).
        sha256: the archive's expected sha256 (default: the registry's pinned value).
        max_bytes: refuse a larger download (default: the registry's limit).

    Raises:
        DataError: unknown name, HTTP failure, oversized or mismatching download,
            unsafe or corrupt archive, or contents not in the original layout.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    source = DATASETS[name]
    to = Path(to)
    target = to / source.file_name
    if target.exists():
        problem = _unreadable(name, to)
        if problem is None:
            say(f"{name}: {target} is already there and readable; not downloaded again")
            return DownloadResult(target, downloaded=False)
        say(f"{name}: {target} exists but is unreadable ({problem}); downloading it again")
    url = url or source.url
    expected = (sha256 or source.sha256).lower()
    created = [p for p in (to, *to.parents) if not p.exists()]  # removed if it fails
    to.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", suffix=".download", dir=to))
    try:
        archive = work / "archive"
        got = _stream(url, archive, max_bytes or source.max_bytes, source, say, progress,
                      timeout_s)
        if got != expected:
            raise DataError(f"{url}: sha256 mismatch for the downloaded file: expected "
                            f"{expected}, got {got}; nothing was written (if you trust "
                            "this file, pin it with --sha256)")
        say(f"{name}: sha256 {got} verified"
            + (" (the pinned value)" if expected == source.sha256 else " (--sha256)"))
        unpacked = extract_archive(archive, work / "unpacked",
                                   max_bytes=source.max_unpacked_bytes)
        archive.unlink()
        staged = work / source.file_name
        write_npz(staged, _convert(name, unpacked, source.max_unpacked_bytes))
        problem = _unreadable(name, work)
        if problem is not None:
            raise DataError(f"{name}: the converted file does not load ({problem})")
        os.replace(staged, target)
        fsync_dir(to)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        for folder in created:
            if any(folder.iterdir()):
                break
            folder.rmdir()
        raise
    shutil.rmtree(work, ignore_errors=True)
    say(f"{name}: wrote {target} ({_describe(name, to)})")
    say(f"{name}: licence: {source.licence}. Cite: {source.citation}")
    return DownloadResult(target, downloaded=True, sha256=got)


def _stream(url: str, path: Path, max_bytes: int, source: DatasetSource,
            say: Callable[[str], None], progress: TransferProgress | None,
            timeout_s: float) -> str:
    """Download ``url`` into ``path``, returning its sha256; refuse more than max_bytes."""
    import httpx

    digest = hashlib.sha256()
    received = 0
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=timeout_s) as response:
            if response.status_code != 200:
                raise DataError(f"{url}: the server answered {response.status_code} "
                                f"{response.reason_phrase}; check the URL (--url) or try "
                                "again later")
            declared = response.headers.get("content-length")
            total = int(declared) if declared and declared.isdigit() else None
            if total is not None and total > max_bytes:
                raise DataError(f"{url}: the server announces {total:,} bytes, more than "
                                f"the {max_bytes:,} allowed for {source.name}; refused")
            size = total or source.size_bytes
            say(f"{source.name}: downloading {url}"
                + (f" ({size / _MB:.1f} MB)" if size else ""))
            if progress is not None:
                progress.start(f"{source.name}: download", size)
            with open(path, "wb") as out:
                for chunk in response.iter_bytes(1 << 16):
                    received += len(chunk)
                    if received > max_bytes:
                        raise DataError(f"{url}: the download passed the {max_bytes:,} "
                                        f"bytes allowed for {source.name}; refused")
                    digest.update(chunk)
                    out.write(chunk)
                    if progress is not None:
                        progress.advance(len(chunk))
    except httpx.HTTPError as exc:
        raise DataError(f"{url}: download failed ({type(exc).__name__}: {exc})") from None
    finally:
        if progress is not None:
            progress.finish()
    return digest.hexdigest()


def _convert(name: str, unpacked: Path, max_bytes: int) -> dict:
    if name == "har":
        return har_arrays_from_uci(_uci_root(unpacked, max_bytes))
    folders = [p for p in unpacked.rglob("recordings") if p.is_dir()]
    if len(folders) != 1:
        raise DataError(f"fsdd: the archive has {len(folders)} 'recordings' folders, "
                        "expected one (the FSDD repository layout)")
    return fsdd_arrays_from_recordings(folders[0])


def _uci_root(unpacked: Path, max_bytes: int) -> Path:
    """The folder holding ``train/`` and ``test/``. UCI's download is a zip that holds
    ``UCI HAR Dataset.zip``; older mirrors serve that inner zip directly."""
    inner = [p for p in unpacked.rglob("*.zip") if "__MACOSX" not in p.parts]
    if len(inner) == 1:
        extract_archive(inner[0], unpacked / ".inner", max_bytes=max_bytes)
        inner[0].unlink()
    roots = sorted(p.parent.parent for p in unpacked.rglob("train/y_train.txt")
                   if "__MACOSX" not in p.parts)
    if len(roots) != 1:
        raise DataError(f"har: the archive has {len(roots)} UCI HAR folders (train/ and "
                        "test/ with y_train.txt), expected one")
    return roots[0]


def _unreadable(name: str, folder: Path) -> str | None:
    try:
        (load_har if name == "har" else load_fsdd)(folder)
    except DataError as exc:
        return str(exc)
    return None


def _describe(name: str, folder: Path) -> str:
    if name == "har":
        har = load_har(folder)
        return f"{len(har):,} windows, {len(har.users())} subjects"
    fsdd = load_fsdd(folder)
    return f"{len(fsdd):,} recordings, {len(fsdd.user_names)} speakers"
