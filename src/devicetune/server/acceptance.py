"""Server-side acceptance: a round's aggregate becomes the global model only if it keeps
its accuracy on labelled data the server holds.

Devices whose pasts lack classes pull the aggregate away from those classes, and no
device can see it: its own data has none of them. The server can, on data of its own
that holds every class (here, the set the model was pretrained on). A round whose
aggregate falls more than ``tolerance`` below the best accuracy committed so far is
not committed: the global weights stay, and the next round starts from them again.
Measuring against the best so far, not the last round, bounds the total loss by the
tolerance instead of letting it grow a tolerance per round.

References:
    Cao et al., "FLTrust: Byzantine-robust Federated Learning via Trust Bootstrapping",
    NDSS 2021 (a small clean root dataset held by the server).
    Zhao et al., "Federated Learning with Non-IID Data", arXiv:1806.00582, 2018 (a
    small globally shared dataset against label skew).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from devicetune.config import DevicetuneConfig
    from devicetune.data.labeled import LabeledData
    from devicetune.device.runtime import DeviceRuntime

HELD_ROWS = 2048  # at most this many of the server's rows are evaluated each round

Accuracy = Callable[[list[np.ndarray]], float]


@dataclass
class AcceptanceCheck:
    """Decides whether a round's aggregate is committed.

    Args:
        accuracy: the accuracy of a set of weights on the server's data.
        tolerance: how far (0..1) below the best committed accuracy an aggregate may be.
    """

    accuracy: Accuracy
    tolerance: float
    best: float | None = None

    def __call__(
        self, current: list[np.ndarray], candidate: list[np.ndarray]
    ) -> tuple[bool, float]:
        """``(commit?, the candidate's accuracy)``."""
        if self.best is None:
            self.best = self.accuracy(current)
        score = self.accuracy(candidate)
        accepted = score >= self.best - self.tolerance
        if accepted:
            self.best = max(self.best, score)
        return accepted, score


def server_accuracy(features: np.ndarray, labels: np.ndarray, runtime: DeviceRuntime) -> Accuracy:
    """Accuracy of weights on features the server computed once (the backbone is
    frozen), through the artifact's own ``evaluate``."""

    def accuracy(weights: list[np.ndarray]) -> float:
        runtime.set_weights(weights)
        return float(runtime.evaluate(features, labels)[1])

    return accuracy


def acceptance_check(
    config: DevicetuneConfig,
    runtime: DeviceRuntime,
    data_dir: Path,
    input_shape: tuple[int, ...],
    pretrain_data: LabeledData | None = None,
) -> AcceptanceCheck | None:
    """The check ``[server] acceptance_tolerance`` asks for, on (a seeded sample of) the
    pretraining data, or None when it is off. ``input_shape``: one example's (the
    artifact's)."""
    tolerance = config.server.acceptance_tolerance
    if tolerance is None:
        return None
    from devicetune.model.pretrain import pretraining_data

    assert config.model is not None and config.model.backbone.pretrain is not None
    data = pretraining_data(
        config.model.backbone.pretrain,
        config.seed,
        data_dir,
        tuple(input_shape),
        list(config.model.classes),
        given=pretrain_data,
    )
    rng = np.random.default_rng([config.seed, 17])
    rows = np.sort(rng.choice(len(data), min(HELD_ROWS, len(data)), replace=False))
    held = data.select(rows)
    return AcceptanceCheck(server_accuracy(runtime.features(held.x), held.y, runtime), tolerance)
