"""`devicetune data download` against a real HTTP server on 127.0.0.1 serving small
archives in the originals' layouts (a UCI HAR zip inside a zip, an FSDD tag tarball)."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import wave
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from devicetune.data import load_fsdd, load_har
from devicetune.data.download import DATASETS, download_dataset
from devicetune.data.har import CHANNELS
from devicetune.errors import DataError
from tests.conftest import run_cli

RNG = np.random.default_rng(15)


# --- the archives -----------------------------------------------------------------------

def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _table(rows: np.ndarray, fmt: str) -> bytes:
    out = io.StringIO()
    np.savetxt(out, rows, fmt=fmt)
    return out.getvalue().encode()


def tiny_uci_har() -> tuple[bytes, dict[str, np.ndarray]]:
    """UCI's download: a zip holding ``UCI HAR Dataset.zip`` (train: subject 1, test:
    subject 2) and the ``.names`` file; with the arrays har.npz must hold."""
    splits = {"train": (1, [1, 1, 2, 6, 3]), "test": (2, [4, 5, 5])}
    inner: dict[str, bytes] = {
        "UCI HAR Dataset/activity_labels.txt": b"1 WALKING\n2 WALKING_UPSTAIRS\n"
        b"3 WALKING_DOWNSTAIRS\n4 SITTING\n5 STANDING\n6 LAYING\n",
        "UCI HAR Dataset/README.txt": b"Human Activity Recognition Using Smartphones\n",
        "__MACOSX/UCI HAR Dataset/._README.txt": b"\x00\x05\x16\x07",
    }
    x, y, subject = [], [], []
    for split, (who, labels) in splits.items():
        windows = RNG.normal(size=(len(labels), 128, 9)).astype(np.float32)
        folder = f"UCI HAR Dataset/{split}"
        for c, name in enumerate(CHANNELS):
            inner[f"{folder}/Inertial Signals/{name}_{split}.txt"] = _table(
                windows[:, :, c].astype(np.float64), "%.8e")
        inner[f"{folder}/y_{split}.txt"] = _table(np.array(labels), "%d")
        inner[f"{folder}/subject_{split}.txt"] = _table(np.full(len(labels), who), "%d")
        x.append(windows)
        y += labels
        subject += [who] * len(labels)
    outer = _zip({"UCI HAR Dataset.zip": _zip(inner), "UCI HAR Dataset.names": b"names\n"})
    return outer, {"inertial": np.concatenate(x), "label": np.array(y) - 1,
                   "subject": np.array(subject), "split": np.array([0] * 5 + [1] * 3)}


def _wav(samples: np.ndarray, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def _tar(members: dict[str, bytes | None], links: dict[str, str] | None = None) -> bytes:
    """A .tar.gz; a None member is a folder, ``links`` are symbolic links."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buffer.getvalue()


FSDD_TOP = "free-spoken-digit-dataset-1.0.9"


def tiny_fsdd() -> tuple[bytes, list[tuple[str, np.ndarray]]]:
    """A GitHub tag tarball: ``<repo>-1.0.9/recordings/*.wav`` plus other files; with
    the recordings in the order fsdd.npz must hold (speaker, digit, repetition number)."""
    clips = {}
    for speaker in ("theo", "george"):
        for digit in (1, 0):
            for index in (10, 2, 5, 0):  # 10 after 5: numbers, not strings, order them
                clips[(speaker, digit, index)] = RNG.integers(
                    -2**15, 2**15, size=int(RNG.integers(50, 400))).astype(np.int16)
    members: dict[str, bytes | None] = {FSDD_TOP: None, f"{FSDD_TOP}/recordings": None,
                                        f"{FSDD_TOP}/README.md": b"# FSDD\n",
                                        f"{FSDD_TOP}/utils/trimmer.py": b"pass\n"}
    for (speaker, digit, index), samples in clips.items():
        members[f"{FSDD_TOP}/recordings/{digit}_{speaker}_{index}.wav"] = _wav(samples)
    ordered = [(f"{d}_{s}_{i}.wav", clips[(s, d, i)]) for s, d, i in sorted(clips)]
    return _tar(members), ordered


# --- the server -----------------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, bytes] = {}
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.hits.append(self.path)
        if self.path == "/claims-a-gigabyte":
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            return
        if self.path == "/endless":  # no Content-Length: the body runs until we stop
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(64):
                    self.wfile.write(b"y" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        if self.path == "/cut-short":
            self.send_response(200)
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b"z" * 1000)
            return
        body = self.routes.get(self.path)
        if body is None:
            self.send_error(404, "Not Found")
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, dict[str, bytes], list[str]]]:
    routes: dict[str, bytes] = {}
    hits: list[str] = []
    handler = type("Handler", (_Handler,), {"routes": routes, "hits": hits})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", routes, hits
    httpd.shutdown()
    httpd.server_close()


def _serve(server, path: str, body: bytes) -> tuple[str, str]:
    base, routes, _ = server
    routes[path] = body
    return f"{base}{path}", hashlib.sha256(body).hexdigest()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- what a user relies on ------------------------------------------------------------

def test_har_download_through_the_cli_loads_and_is_not_fetched_twice(
        server, tmp_path: Path, data_dir: Path) -> None:
    archive, expected = tiny_uci_har()
    url, sha = _serve(server, "/240/har.zip", archive)
    to = tmp_path / "datasets"
    first = run_cli("data", "download", "har", "--url", url, "--sha256", sha, "--to", str(to))
    assert first.returncode == 0, first.stderr
    assert f"sha256 {sha} verified" in first.stdout
    assert "8 windows, 2 subjects" in first.stdout and "Anguita" in first.stdout
    assert _leftovers(to) == ["har.npz"]  # no archive or unpacked folder left beside it

    har = load_har(to)
    np.testing.assert_array_equal(har.x, expected["inertial"])  # train rows, then test
    np.testing.assert_array_equal(har.y, expected["label"])
    np.testing.assert_array_equal(har.user, expected["subject"])
    np.testing.assert_array_equal(har.split, expected["split"])
    got, shared = np.load(to / "har.npz"), np.load(data_dir / "har.npz")
    assert got.files == shared.files
    assert [got[k].dtype.kind + str(got[k].dtype.itemsize) for k in got.files if
            got[k].dtype.kind != "U"] == [shared[k].dtype.kind + str(shared[k].dtype.itemsize)
                                          for k in shared.files if shared[k].dtype.kind != "U"]
    assert got["row_order_verified"].all()
    assert got["channel_names"].tolist() == shared["channel_names"].tolist()
    assert got["activity_names"].tolist() == shared["activity_names"].tolist()

    hits = len(server[2])
    again = run_cli("data", "download", "har", "--url", url, "--sha256", sha, "--to", str(to))
    assert again.returncode == 0, again.stderr
    assert "already there and readable; not downloaded again" in again.stdout
    assert len(server[2]) == hits


def test_fsdd_download_orders_recordings_as_the_shared_copy(server, tmp_path: Path,
                                                           data_dir: Path) -> None:
    archive, ordered = tiny_fsdd()
    url, sha = _serve(server, "/fsdd/v1.0.9.tar.gz", archive)
    lines: list[str] = []
    result = download_dataset("fsdd", tmp_path, url=url, sha256=sha, say=lines.append)
    assert result.downloaded and result.sha256 == sha
    assert any("16 recordings, 2 speakers" in line for line in lines)

    fsdd = load_fsdd(tmp_path)
    assert fsdd.user_names == ("george", "theo")
    for i, (_, samples) in enumerate(ordered):
        np.testing.assert_array_equal(fsdd.audio[fsdd.offsets[i]:fsdd.offsets[i + 1]],
                                      samples)
    got, shared = np.load(tmp_path / "fsdd.npz"), np.load(data_dir / "fsdd.npz")
    assert got.files == shared.files
    assert got["file_names"].tolist() == [name for name, _ in ordered]
    assert fsdd.recording_index.tolist()[:4] == [0, 2, 5, 10]
    assert fsdd.digit.tolist() == [0] * 4 + [1] * 4 + [0] * 4 + [1] * 4
    assert fsdd.user.tolist() == [0] * 8 + [1] * 8
    assert fsdd.split.tolist() == [1, 1, 0, 0] * 4  # repetitions 0-4 are the test set
    for k in got.files:
        assert got[k].dtype.kind == shared[k].dtype.kind
        if got[k].dtype.kind != "U":
            assert got[k].dtype == shared[k].dtype, k
    assert int(got["sample_rate"]) == 8000


def test_wrong_sha256_is_refused_and_writes_nothing(server, tmp_path: Path) -> None:
    archive, _ = tiny_uci_har()
    url, sha = _serve(server, "/tampered.zip", archive)
    wrong = "0" * 64
    to = tmp_path / "datasets"
    result = run_cli("data", "download", "har", "--url", url, "--sha256", wrong,
                     "--to", str(to))
    assert result.returncode == 2
    error = result.stderr.splitlines()[-1]  # one line, no traceback
    assert "Traceback" not in result.stderr and error.startswith("error: ")
    assert f"expected {wrong}, got {sha}" in error and url in error
    assert not to.exists()


def test_the_pinned_checksum_applies_to_a_mirror(server, tmp_path: Path) -> None:
    archive, _ = tiny_uci_har()
    url, sha = _serve(server, "/mirror.zip", archive)
    with pytest.raises(DataError, match=f"expected {DATASETS['har'].sha256}, got {sha}"):
        download_dataset("har", tmp_path, url=url, say=lambda _: None)
    assert _leftovers(tmp_path) == []


def test_an_archive_member_climbing_out_is_refused(server, tmp_path: Path) -> None:
    archive = _tar({f"{FSDD_TOP}/recordings/0_theo_0.wav": _wav(np.zeros(10)),
                    f"{FSDD_TOP}/../../../../../escaped.wav": _wav(np.zeros(10))})
    url, sha = _serve(server, "/traversal.tar.gz", archive)
    to = tmp_path / "deep" / "datasets"
    with pytest.raises(DataError, match=r"escaped\.wav.*outside the folder"):
        download_dataset("fsdd", to, url=url, sha256=sha, say=lambda _: None)
    assert not list(tmp_path.rglob("escaped.wav")) and _leftovers(tmp_path) == []


@pytest.mark.parametrize("kind", ["absolute", "symlink"])
def test_absolute_and_linked_members_are_refused(server, tmp_path: Path, kind: str) -> None:
    wav = _wav(np.zeros(10))
    if kind == "absolute":
        archive = _zip({"UCI HAR Dataset/train/y_train.txt": b"1\n",
                        str(tmp_path / "planted.txt"): b"x"})
    else:
        archive = _tar({f"{FSDD_TOP}/recordings/0_theo_0.wav": wav},
                       links={f"{FSDD_TOP}/recordings/1_theo_0.wav": "/etc/passwd"})
    url, sha = _serve(server, f"/{kind}", archive)
    name = "har" if kind == "absolute" else "fsdd"
    with pytest.raises(DataError, match="outside the folder" if kind == "absolute"
                       else "link or special file"):
        download_dataset(name, tmp_path / "datasets", url=url, sha256=sha,
                         say=lambda _: None)
    assert not (tmp_path / "planted.txt").exists() and not (tmp_path / "datasets").exists()


def test_a_truncated_archive_is_refused(server, tmp_path: Path) -> None:
    archive, _ = tiny_uci_har()
    url, sha = _serve(server, "/truncated.zip", archive[: len(archive) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        download_dataset("har", tmp_path, url=url, sha256=sha, say=lambda _: None)
    assert _leftovers(tmp_path) == []


def test_a_connection_cut_short_is_refused(server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="download failed"):
        download_dataset("har", tmp_path, url=f"{server[0]}/cut-short", sha256="0" * 64,
                         say=lambda _: None)
    assert _leftovers(tmp_path) == []


def test_oversized_downloads_are_refused(server, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="announces 1,000,000,000 bytes, more than"):
        download_dataset("fsdd", tmp_path, url=f"{server[0]}/claims-a-gigabyte",
                         sha256="0" * 64, say=lambda _: None)
    with pytest.raises(DataError, match="passed the 1,000,000 bytes allowed"):
        download_dataset("fsdd", tmp_path, url=f"{server[0]}/endless", sha256="0" * 64,
                         say=lambda _: None, max_bytes=1_000_000)
    assert _leftovers(tmp_path) == []


def test_a_404_names_the_url_and_the_status(server, tmp_path: Path) -> None:
    url = f"{server[0]}/no/such/file.zip"
    result = run_cli("data", "download", "fsdd", "--url", url, "--to", str(tmp_path))
    assert result.returncode == 2
    assert f"{url}: the server answered 404" in result.stderr
    assert _leftovers(tmp_path) == []


def test_an_unreadable_existing_file_is_replaced(server, tmp_path: Path) -> None:
    (tmp_path / "fsdd.npz").write_bytes(b"half a file")
    archive, ordered = tiny_fsdd()
    url, sha = _serve(server, "/fsdd-again.tar.gz", archive)
    lines: list[str] = []
    assert download_dataset("fsdd", tmp_path, url=url, sha256=sha,
                            say=lines.append).downloaded
    assert "exists but is unreadable" in lines[0]
    assert len(load_fsdd(tmp_path)) == len(ordered)


def test_a_missing_file_says_which_command_fetches_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"fsdd\.npz: not found; fetch it with "
                       r"`devicetune data download fsdd --to "):
        load_fsdd(tmp_path)
