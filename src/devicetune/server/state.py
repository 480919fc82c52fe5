"""The server's state, committed after every round so that a crash loses at most the
round in progress and ``--resume`` continues from the last committed one.

One file, ``server_state.npz``, written atomically (temporary file, fsync, rename,
fsync of the folder: `devicetune.atomic`)::

    __meta__                 JSON: format, round, strategy, weight names and shapes,
                             the sha256 of the artifact the weights belong to, the
                             sha256 of every array below, and ``privacy`` (the privacy
                             ledger's ``to_dict()``, or null while DP is off)
    weights/<name>           the global weights after ``round``
    optimizer/<slot>/<name>  server optimizer state (FedAdam's ``m_t`` and ``v_t``)

``metrics.jsonl`` is appended before the state is committed, so after a crash it may
hold one row more than the state; `trim_metrics` drops it on resume and the round runs
again. The folder is held by one server at a time (`hold_run_folder`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from devicetune.atomic import atomic_write_bytes
from devicetune.errors import ArtifactError, ServerError
from devicetune.run_files import METRICS_FILE

STATE_FILE = "server_state.npz"
LOCK_FILE = ".serve.lock"
STATE_FORMAT = "devicetune.server-state/1"
_META = "__meta__"
# Server optimizer slots of Flower's strategies: the FedOpt family's moments (FedAdam,
# FedYogi, ...), per weight name; FedAvgM's momentum, a list in the weights' order.
_OPTIMIZER_SLOTS = ("m_t", "v_t", "momentum_vector")
_LIST_SLOTS = ("momentum_vector",)


@dataclass
class ServerState:
    """Everything a server needs to continue after ``round``.

    Attributes:
        round: the last round whose result is in ``weights``.
        strategy: the strategy name from the config (``fedadam``, ...).
        names: the artifact's weight names, in order.
        weights: the global weights after ``round``.
        artifact_sha256: sha256 of the model.tflite the weights belong to.
        optimizer: server optimizer state, slot -> weight name -> array.
        privacy: the privacy ledger's ``to_dict()``; None while DP is off.
    """

    round: int
    strategy: str
    names: list[str]
    weights: list[np.ndarray]
    artifact_sha256: str
    optimizer: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None

    def to_bytes(self) -> bytes:
        """The ``.npz`` file's bytes (no pickles: arrays and one JSON string)."""
        arrays = {f"weights/{n}": np.asarray(w) for n, w in zip(self.names, self.weights,
                                                                 strict=True)}
        for slot, values in self.optimizer.items():
            arrays.update({f"optimizer/{slot}/{n}": np.asarray(v) for n, v in values.items()})
        meta = {
            "format": STATE_FORMAT, "round": self.round, "strategy": self.strategy,
            "weight_names": self.names,
            "weight_shapes": [list(w.shape) for w in self.weights],
            "artifact_sha256": self.artifact_sha256, "privacy": self.privacy,
            "arrays_sha256": _arrays_digest(arrays),
            "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        buffer = io.BytesIO()
        np.savez(buffer, **{_META: np.array(json.dumps(meta))}, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, where: Path) -> ServerState:
        """Parse a state file; raise `ArtifactError` naming ``where`` if it is corrupt."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                arrays = {k: npz[k] for k in npz.files}
            meta = json.loads(str(arrays.pop(_META)))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ArtifactError(f"{where} is corrupt ({_reason(exc)}); restore it from a "
                                "backup, or start afresh in another --out folder") from None
        found = meta.get("format") if isinstance(meta, dict) else None
        if found != STATE_FORMAT:
            raise ArtifactError(f"{where} is not a devicetune server state (format "
                                f"{found!r}, expected {STATE_FORMAT!r})")
        if meta.get("arrays_sha256") != _arrays_digest(arrays):
            raise ArtifactError(f"{where} is corrupt: its arrays do not match the checksum "
                                "it was committed with")
        try:
            names = [str(n) for n in meta["weight_names"]]
            optimizer: dict[str, dict[str, np.ndarray]] = {}
            for key, value in arrays.items():
                if key.startswith("optimizer/"):
                    _, slot, name = key.split("/", 2)
                    optimizer.setdefault(slot, {})[name] = value
            return cls(round=int(meta["round"]), strategy=str(meta["strategy"]), names=names,
                       weights=[arrays[f"weights/{n}"] for n in names],
                       artifact_sha256=str(meta["artifact_sha256"]), optimizer=optimizer,
                       privacy=meta.get("privacy"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where} is corrupt: missing {_reason(exc)}") from None


def _reason(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    digest = hashlib.sha256()
    for key in sorted(arrays):
        value = np.ascontiguousarray(arrays[key])
        digest.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def commit_state(out_dir: Path, state: ServerState) -> Path:
    """Replace ``out_dir/server_state.npz`` with ``state``, atomically and durably."""
    return atomic_write_bytes(Path(out_dir) / STATE_FILE, state.to_bytes())


def load_state(out_dir: Path) -> ServerState:
    """The committed state in ``out_dir``.

    Raises:
        ServerError: there is no state to resume.
        ArtifactError: the state file is corrupt or not a devicetune state.
    """
    path = Path(out_dir) / STATE_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ServerError(f"{out_dir} holds no server state to resume ({STATE_FILE} is "
                          "missing); run without --resume to start a new federation") from None
    return ServerState.from_bytes(data, path)


def has_state(out_dir: Path) -> bool:
    return (Path(out_dir) / STATE_FILE).exists()


def check_resumable(state: ServerState, *, strategy: str, names: list[str],
                    shapes: list[tuple[int, ...]], artifact_sha256: str,
                    where: Path) -> None:
    """Refuse a state that does not belong to this config and these artifacts.

    Raises:
        ServerError: the strategy, the weights or the artifact differ.
    """
    if state.strategy != strategy:
        raise ServerError(f"{where} was written by strategy {state.strategy!r} but the "
                          f"config says {strategy!r}; its optimizer state would not fit. "
                          "Resume with the same strategy or start in another --out folder")
    found = [(n, tuple(w.shape)) for n, w in zip(state.names, state.weights, strict=True)]
    expected = list(zip(names, [tuple(s) for s in shapes], strict=True))
    if found != expected:
        raise ServerError(f"{where} holds weights {found} but the artifacts have "
                          f"{expected}; resume with the artifacts the run started with")
    if state.artifact_sha256 != artifact_sha256:
        raise ServerError(f"{where} was committed for another model.tflite (sha256 "
                          f"{state.artifact_sha256[:12]}..., these artifacts have "
                          f"{artifact_sha256[:12]}...); resume with the run's own artifacts")


def trim_metrics(out_dir: Path, last_round: int) -> int:
    """Keep the rows of ``metrics.jsonl`` up to ``last_round`` (a crash between the
    append and the commit leaves one extra row); return how many rows were dropped."""
    path = Path(out_dir) / METRICS_FILE
    if not path.exists():
        path.write_text("")
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row_round = int(json.loads(line)["round"])
        except (ValueError, KeyError, TypeError):
            dropped += 1  # a line torn by the crash
            continue
        if row_round <= last_round:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode())
    return dropped


# ----------------------------------------------------------------------------- strategy


def optimizer_state(strategy: Any) -> dict[str, dict[str, np.ndarray]]:
    """A copy of the server optimizer state a Flower strategy holds between rounds
    (looked up through a wrapper's ``inner`` strategy, as DP wraps it); a list slot is
    keyed by position."""
    strategy = getattr(strategy, "inner", strategy)
    state = {}
    for slot in _OPTIMIZER_SLOTS:
        values = getattr(strategy, slot, None)
        if values:
            items = enumerate(values) if slot in _LIST_SLOTS else values.items()
            state[slot] = {str(name): np.array(value) for name, value in items}
    return state


def restore_optimizer_state(strategy: Any, state: dict[str, dict[str, np.ndarray]],
                            *, exactly: bool = False) -> None:
    """Give a strategy the optimizer state it had when ``state`` was taken: a fresh one
    after a resume, or (``exactly``) one that moved on since, whose slots absent from
    ``state`` go back to empty (a round the server refused)."""
    strategy = getattr(strategy, "inner", strategy)
    for slot, values in state.items():
        if not hasattr(strategy, slot):
            raise ServerError(f"the saved optimizer state has {slot!r}, which strategy "
                              f"{type(strategy).__name__} does not keep")
        arrays = {name: np.array(value) for name, value in values.items()}
        setattr(strategy, slot, [arrays[str(k)] for k in range(len(arrays))]
                if slot in _LIST_SLOTS else arrays)
    if exactly:
        for slot in _OPTIMIZER_SLOTS:
            if slot not in state and getattr(strategy, slot, None) is not None:
                setattr(strategy, slot, None)


# ----------------------------------------------------------------------------- the folder


@contextlib.contextmanager
def hold_run_folder(out_dir: Path, wait_s: float = 0.0) -> Iterator[None]:
    """Hold ``out_dir`` for one server (an advisory lock the kernel releases when the
    holder dies, however it dies).

    Args:
        wait_s: how long to wait for another holder to go away; the processes of a
            server killed a moment ago exit within about a second.

    Raises:
        ServerError: another server holds the folder.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ServerError(f"{out_dir} is in use by another devicetune server; "
                                      "stop it first, or choose another --out") from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing releases the lock
