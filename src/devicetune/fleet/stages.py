"""Where a simulation's time goes: seconds per stage, summed over a run.

The engines and the round loop time their stages (generate, embed, local training,
validation, aggregation, evaluation); a benchmark reads `STAGES` before and after a run
and reports the rest of the wall time as "other". Timing a stage costs a microsecond:
stages are timed per round or per batch, never per example.

A stage named ``"<stage> (overlapped)"`` ran on a worker thread while the main thread
did something else: its seconds are real work but hide under other stages' wall time,
so `main_thread_seconds` leaves them out of what the wall clock is compared with (the
main thread's wait for that work is timed as ``"<stage>"`` itself).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

OVERLAPPED = " (overlapped)"
STAGE_NAMES = ("generate", "embed", "local training", "validation", "aggregation",
               "evaluation", "generate" + OVERLAPPED)


def is_overlapped(stage: str) -> bool:
    """Whether ``stage`` ran beside the main thread (its seconds are not wall time)."""
    return stage.endswith(OVERLAPPED)


def main_thread_seconds(stages: dict[str, float]) -> float:
    """The seconds of ``stages`` the main thread spent: what a wall clock holds."""
    return sum(seconds for stage, seconds in stages.items() if not is_overlapped(stage))


class StageSeconds:
    """Seconds spent in each named stage since this process started."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(STAGE_NAMES, 0.0)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def add(self, stage: str, seconds: float) -> None:
        """Count ``seconds`` measured elsewhere (e.g. on a worker thread) to ``stage``."""
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)

    def since(self, before: dict[str, float]) -> dict[str, float]:
        """Seconds per stage spent after ``before`` (a `snapshot`)."""
        return {k: v - before.get(k, 0.0) for k, v in self.seconds.items()}


STAGES = StageSeconds()
