"""The device gateway's state: enrolled devices, check-ins, tasks and reports.

Apps cannot run a Flower SuperNode, so they speak a thin HTTP protocol instead
(`devicetune.server.gateway_api`, protocol v1), as production systems that federate
on phones do (Bonawitz et al., "Towards Federated Learning at Scale: System Design",
SysML 2019: check-in, selection with over-selection, configuration, reporting, pace
steering; NVIDIA FLARE 2.7's Edge Gateway API). This object is what the HTTP handlers
and the round loop share (`devicetune.server.gateway_grid`), under one lock:

- enrollment: a fleet enrollment token buys a device its own credential
  ``"<device id>.<secret>"``; only the secret's sha256 is kept (in
  ``gateway_devices.jsonl``, one line per device, fsynced), compared in constant time;
- check-in: an eligible device (charging, unmetered, idle) joins the pool the next
  round samples from; the answer is its task, or when to come back (pace steering);
- a task is single-use, bound to one device and one round, with a deadline;
- a report is accepted once per task (an identical retry is answered again, not
  counted twice); late, replayed, foreign and malformed reports are refused and
  counted, and the counts go into the round's row of ``metrics.jsonl``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from devicetune.server.validation import update_problem

DEVICES_FILE = "gateway_devices.jsonl"
PLATFORMS = ("android", "ios")
# Refusal reasons, as counted in metrics.jsonl (``gateway_refused``).
REFUSALS = ("unauthorized", "foreign", "unknown_task", "late", "replayed", "malformed",
            "too_large")
# A device that stops checking in leaves the pool after this many check-in intervals.
_POOL_GRACE = 2.0
# Pace steering: past this many waiting devices per device a round can use, check-ins
# are spread out in proportion.
_POOL_PER_SLOT = 4.0


def read_enrollment_token(path: Path | None) -> str:
    """The fleet's enrollment token from its file; `ConfigError` if there is none."""
    from devicetune.errors import ConfigError

    try:
        token = Path(str(path)).read_text().strip() if path is not None else ""
    except OSError as exc:
        raise ConfigError(f"server.gateway.enrollment_token_file = {str(path)!r}: "
                          f"{(exc.strerror or str(exc)).lower()}") from None
    if len(token) < 16:
        raise ConfigError(f"server.gateway.enrollment_token_file = {str(path)!r} holds "
                          f"{'no token' if not token else 'a token under 16 characters'}; "
                          "write a long random one, e.g. `openssl rand -hex 32`")
    return token


class Refused(Exception):
    """A request the gateway refuses: an HTTP status, a reason to count, a detail."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail = status, reason, detail


@dataclass
class Task:
    """One device's work in one round."""

    task_id: str
    device: int
    round: int
    deadline: float  # time.time()
    instructions: dict[str, Any]
    start: dict[str, np.ndarray]
    message: Any  # the Flower message this task answers
    report_digest: str | None = None  # sha256 of the accepted report body
    assigned_at: float = field(default_factory=time.time)
    reported_at: float = 0.0


@dataclass
class _Device:
    platform: str
    secret_sha256: str
    waiting_until: float = 0.0
    model_version: int | None = None
    task: str | None = None  # the id of its open task


@dataclass
class _Round:
    number: int
    deadline: float
    weights_safetensors: bytes
    start: dict[str, np.ndarray]
    reports: list[tuple[Task, dict[str, np.ndarray], dict[str, float]]] = \
        field(default_factory=list)


class Gateway:
    """Devices speaking protocol v1, for one run folder.

    Args:
        out_dir: the run folder (``gateway_devices.jsonl`` is kept there).
        enrollment_token: the fleet's token an app exchanges for its credential.
        names: the artifact's weight names (the shapes come with each round).
        max_update_norm: reports whose update is larger are refused.
        checkin_interval_s: the base wait between check-ins (pace steering).
        slots: devices a round can use (``devices_per_round`` x over-selection).
    """

    def __init__(self, out_dir: Path, enrollment_token: str, names: list[str],
                 max_update_norm: float, checkin_interval_s: float, slots: int) -> None:
        self.out_dir = Path(out_dir)
        self._token_sha256 = hashlib.sha256(enrollment_token.encode()).digest()
        self.names = list(names)
        self.max_update_norm = max_update_norm
        self.checkin_interval_s = checkin_interval_s
        self.slots = max(1, slots)
        self.lock = threading.Lock()
        self.arrived = threading.Condition(self.lock)
        self.devices: dict[int, _Device] = {}
        self.tasks: dict[str, Task] = {}
        self.round: _Round | None = None
        self.refused: Counter[str] = Counter()
        self.duplicates = 0
        self._rng = random.Random()
        self._load_devices()

    # ------------------------------------------------------------------ enrollment

    def enroll(self, token: str, platform: str) -> tuple[int, str]:
        """A new device's id and credential, for the right fleet token."""
        given = hashlib.sha256(token.encode()).digest()
        if not hmac.compare_digest(given, self._token_sha256):
            self.count("unauthorized")
            raise Refused(403, "unauthorized", "wrong enrollment token")
        secret = secrets.token_urlsafe(32)
        digest = hashlib.sha256(secret.encode()).hexdigest()
        with self.lock:
            device = len(self.devices)
            self.devices[device] = _Device(platform, digest)
            line = json.dumps({"device": device, "platform": platform,
                               "secret_sha256": digest}) + "\n"
            with (self.out_dir / DEVICES_FILE).open("a") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        return device, f"{device}.{secret}"

    def authenticate(self, authorization: str | None) -> int:
        """The device a ``Bearer <credential>`` header proves, else `Refused` (401)."""
        scheme, _, credential = (authorization or "").partition(" ")
        number, _, secret = credential.partition(".")
        digest = hashlib.sha256(secret.encode()).hexdigest().encode()
        device = self.devices.get(int(number)) if number.isdigit() and len(number) < 12 \
            else None
        # Compared in constant time against the stored digest, or a dummy one.
        stored = (device.secret_sha256 if device else "0" * 64).encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(digest, stored) \
                or device is None:
            self.count("unauthorized")
            raise Refused(401, "unauthorized", "send the device credential from "
                          "/v1/enroll as 'Authorization: Bearer CREDENTIAL'")
        return int(number)

    def _load_devices(self) -> None:
        path = self.out_dir / DEVICES_FILE
        if not path.exists():
            return
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                self.devices[int(entry["device"])] = _Device(str(entry["platform"]),
                                                             str(entry["secret_sha256"]))
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a crash: that device enrolls again

    # ------------------------------------------------------------------ check-in

    def check_in(self, device: int, platform: str, model_version: int | None,
                 eligible: bool) -> tuple[Task | None, float]:
        """The device's open task, or None and when to check in again."""
        now = time.time()
        with self.lock:
            state = self.devices[device]
            state.model_version = model_version
            task = self.tasks.get(state.task) if state.task else None
            if task is not None and task.report_digest is None and now < task.deadline:
                return task, 0.0
            state.task = None
            if not eligible or platform != state.platform:
                state.waiting_until = 0.0
                return None, self._jitter(self.checkin_interval_s * 10)
            pool = sum(1 for d in self.devices.values() if d.waiting_until >= now)
            wait = self.checkin_interval_s * max(1.0, pool / (self.slots * _POOL_PER_SLOT))
            wait = self._jitter(wait)
            state.waiting_until = now + wait * _POOL_GRACE
            return None, wait

    def _jitter(self, seconds: float) -> float:
        return round(seconds * self._rng.uniform(0.8, 1.2), 3)

    def waiting(self) -> list[int]:
        """Devices in the pool: checked in recently, eligible, holding no task."""
        now = time.time()
        with self.lock:
            return [k for k, d in self.devices.items()
                    if d.waiting_until >= now and d.task is None]

    # ------------------------------------------------------------------ rounds

    def open_round(self, number: int, deadline: float, start: dict[str, np.ndarray],
                   weights_safetensors: bytes) -> None:
        with self.lock:
            self.round = _Round(number, deadline, weights_safetensors, start)
            # The previous round's tasks stay (a late report is told 410, a retried one
            # is answered again); older ones go, with the weights they hold.
            self.tasks = {k: t for k, t in self.tasks.items() if t.round >= number - 1}

    def assign(self, device: int, message: Any, instructions: dict[str, Any]) -> Task:
        """A task for ``device`` in the open round (it learns of it at its check-in)."""
        assert self.round is not None
        task = Task(secrets.token_urlsafe(16), device, self.round.number, self.round.deadline,
                    instructions, self.round.start, message)
        with self.lock:
            self.tasks[task.task_id] = task
            self.devices[device].task = task.task_id
            self.devices[device].waiting_until = 0.0
        return task

    def take_reports(self) -> list[tuple[Task, dict[str, np.ndarray], dict[str, float]]]:
        """The reports accepted since the last call."""
        assert self.round is not None
        taken, self.round.reports = self.round.reports, []
        return taken

    def close_round(self) -> None:
        """Reports for this round's tasks are late from now on."""
        with self.lock:
            if self.round is not None:
                self.round.deadline = min(self.round.deadline, time.time())
            for device in self.devices.values():
                device.task = None

    def counters(self) -> dict[str, Any]:
        """Refusals and duplicates since the last call, for the round's metrics row."""
        with self.lock:
            refused = {k: v for k, v in self.refused.items() if v}
            extra = {"gateway_refused": refused, "gateway_duplicates": self.duplicates}
            self.refused.clear()
            self.duplicates = 0
        return extra

    # ------------------------------------------------------------------ reports

    def task_for(self, device: int, task_id: str) -> Task:
        """The task ``task_id`` if it is ``device``'s, else `Refused`."""
        task = self.tasks.get(task_id)
        if task is None:
            self.count("unknown_task")
            raise Refused(404, "unknown_task", "no such task (the server may have "
                          "restarted and lost its round): check in again")
        if task.device != device:
            self.count("foreign")
            raise Refused(403, "foreign", "this task belongs to another device")
        return task

    def report(self, device: int, task_id: str, body: bytes) -> bool:
        """Accept a report; True if it was already accepted (an identical retry).

        Raises:
            Refused: late (410), replayed with another body (409), foreign (403),
                unknown (404) or malformed (400/422) reports.
        """
        task = self.task_for(device, task_id)
        digest = hashlib.sha256(body).hexdigest()
        with self.lock:
            if task.report_digest is not None:
                if hmac.compare_digest(task.report_digest, digest):
                    self.duplicates += 1
                    return True
                self.count("replayed", locked=True)
                raise Refused(409, "replayed", "this task was already reported with "
                              "another body; a task is single-use")
            current = self.round
            if current is None or current.number != task.round or time.time() > min(
                    task.deadline, current.deadline):
                self.count("late", locked=True)
                raise Refused(410, "late", "the round of this task has closed: check in "
                              "again for a new task")
        weights, metrics = self._parse(body, task)
        with self.lock:
            if task.report_digest is not None or self.round is not current or \
                    time.time() > current.deadline:
                # A race with another copy of the same report, or with the round's close.
                self.count("late" if task.report_digest is None else "replayed",
                            locked=True)
                raise Refused(409, "replayed", "this task was reported concurrently or "
                              "its round closed meanwhile")
            task.report_digest = digest
            task.reported_at = time.time()
            current.reports.append((task, weights, metrics))
            self.arrived.notify_all()
        return False

    def _parse(self, body: bytes, task: Task) -> tuple[dict[str, np.ndarray],
                                                      dict[str, float]]:
        from devicetune.server.weights_file import WeightsFileError, read_report

        try:
            weights, metrics = read_report(body)
        except WeightsFileError as exc:
            self.count("malformed")
            raise Refused(400, "malformed", str(exc)) from None
        names = sorted(weights)
        problem = update_problem(names, [weights[n] for n in names], sorted(self.names),
                                 [task.start[n] for n in names] if names == sorted(
                                     self.names) else [], self.max_update_norm)
        if problem is not None:
            self.count("malformed")
            raise Refused(422, "malformed", problem)
        return weights, metrics

    def count(self, reason: str, locked: bool = False) -> None:
        if locked:
            self.refused[reason] += 1
            return
        with self.lock:
            self.refused[reason] += 1
