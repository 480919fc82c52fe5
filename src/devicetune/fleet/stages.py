"""Where a simulation's time goes: seconds per stage, summed over a run.

The engines and the round loop time their stages (generate, embed, local training,
validation, aggregation, evaluation); a benchmark reads `STAGES` before and after a run
and reports the rest of the wall time as "other". Timing a stage costs a microsecond:
stages are timed per round or per batch, never per example.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

STAGE_NAMES = ("generate", "embed", "local training", "validation", "aggregation",
               "evaluation")


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

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)

    def since(self, before: dict[str, float]) -> dict[str, float]:
        """Seconds per stage spent after ``before`` (a `snapshot`)."""
        return {k: v - before.get(k, 0.0) for k, v in self.seconds.items()}


STAGES = StageSeconds()
