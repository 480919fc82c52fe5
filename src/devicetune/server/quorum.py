"""Quorum: a round counts only if enough devices answered in time.

A round needs ``min_devices`` valid updates within ``round_timeout_s``. When fewer
arrive, nothing is aggregated; the round is tried again (``on_quorum_failure =
"retry"``, at most ``max_retries`` more times, each with a fresh sample of devices) or
the federation stops cleanly at the last committed round (``"stop"``, or retries spent),
so that ``--resume`` can pick it up when the devices are back. Every wait is bounded:
a dead device costs at most one timeout, never a hang.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from devicetune.config import ServerConfig
from devicetune.server.loop import FederatedLoop, RoundRecord

log = logging.getLogger("devicetune.server")

# A SuperNode's first message starts its ClientApp, which loads the artifact and the
# device's data; joining gets at least this long even when rounds are short.
JOIN_TIMEOUT_MIN_S = 60.0


@dataclass(frozen=True)
class QuorumPolicy:
    """What a round needs, and what to do when it does not get it."""

    min_devices: int
    round_timeout_s: float
    on_failure: str  # "retry" or "stop"
    max_retries: int

    @classmethod
    def from_config(cls, server: ServerConfig) -> QuorumPolicy:
        return cls(server.min_devices, server.round_timeout_s, server.on_quorum_failure,
                   server.max_retries)

    @property
    def attempts(self) -> int:
        return 1 + (self.max_retries if self.on_failure == "retry" else 0)

    @property
    def join_timeout_s(self) -> float:
        return max(self.round_timeout_s, JOIN_TIMEOUT_MIN_S)


@dataclass(frozen=True)
class QuorumFailure:
    """A round that did not reach its quorum in any attempt."""

    round: int
    attempts: list[RoundRecord]
    policy: QuorumPolicy

    def describe(self) -> str:
        """One line for the operator: what happened and what to do."""
        best = max((a.completed for a in self.attempts), default=0)
        tries = len(self.attempts)
        return (f"round {self.round} got at most {best} valid update"
                f"{'s' if best != 1 else ''} of the {self.policy.min_devices} it needs "
                f"(min_devices) within {self.policy.round_timeout_s:g} s, in {tries} "
                f"attempt{'s' if tries != 1 else ''}; stopped after round {self.round - 1} "
                "(on_quorum_failure / max_retries); start more devices and rerun with "
                "--resume")


RoundRunner = Callable[[Any, int, int], RoundRecord]


def run_round_with_quorum(loop: FederatedLoop, grid: Any, server_round: int,
                          policy: QuorumPolicy, run_round: RoundRunner | None = None,
                          settle_s: float = 0.0) -> RoundRecord | QuorumFailure:
    """Run ``server_round`` until it reaches its quorum or the policy gives up.

    Args:
        run_round: one attempt, ``(grid, server_round, attempt) -> RoundRecord``;
            default ``loop.run_round`` (the SecAgg+ path passes its own).
        settle_s: before the first attempt, wait up to this long for every known
            device to be online. The first round after a server (re)start needs it:
            SuperNodes reconnect seconds later, and a resumed round should sample the
            devices an uninterrupted one would.

    Returns:
        The record of the attempt that counted (``attempts`` in its extras), or the
        failure with every attempt's record.
    """
    run_round = run_round or (lambda g, r, a: loop.run_round(g, r, attempt=a))
    wait_until_online = getattr(grid, "wait_until_online", None)
    attempts: list[RoundRecord] = []
    for attempt in range(policy.attempts):
        if wait_until_online is not None:
            known = len(getattr(grid, "node_of", {}))
            if attempt == 0 and settle_s > 0 and known > policy.min_devices:
                wait_until_online(known, min(settle_s, policy.round_timeout_s))
            # Devices that left (or whose SuperNode restarted) get a timeout to return.
            wait_until_online(policy.min_devices, policy.round_timeout_s)
        record = run_round(grid, server_round, attempt)
        attempts.append(record)
        if record.extra.get("quorum", True):
            record.extra["attempts"] = attempt + 1
            return record
        log.warning("round %d, attempt %d: %d valid updates, %d needed", server_round,
                    attempt + 1, record.completed, policy.min_devices)
    return QuorumFailure(server_round, attempts, policy)
