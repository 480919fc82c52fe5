"""SecAgg+ over real processes: the server unmasks only the weighted mean of three
devices' updates, and it is the plain weighted mean within the quantisation error."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devicetune.device.runtime import LiteRTDevice
from devicetune.fleet.grid import InlineGrid
from devicetune.fleet.messages import (
    ARRAYS,
    METRICS,
    NUM_EXAMPLES,
    TrainInstructions,
    record_to_weights,
)
from devicetune.fleet.population import Population
from devicetune.server.loop import FederatedLoop
from devicetune.server.secagg import error_bound, share_counts
from devicetune.server.strategies import make_strategy
from tests.server.conftest import Federation, metrics_rows, saved_weights, serve_config


class _RecordingGrid(InlineGrid):
    def send_and_receive(self, messages, *, timeout=None):  # noqa: ANN001, ANN201
        self.replies = list(super().send_and_receive(messages, timeout=timeout))
        return self.replies


def _plain_round(config, artifacts: Path, data_dir: Path):  # noqa: ANN001, ANN202
    """The devices' own updates and their exact weighted mean, computed in process."""
    population = Population.from_config(config.fleet, config.seed, data_dir)
    rate = config.fleet.learning_rate or config.model.optimizer.learning_rate
    runtime = LiteRTDevice(artifacts / "model.tflite", rate)
    start = runtime.get_weights()
    loop = FederatedLoop(
        strategy=make_strategy(config.server), names=runtime.weight_names, weights=start,
        devices_per_round=3, instructions=TrainInstructions(0, config.fleet.local_epochs,
                                                            rate),
        max_update_norm=config.server.max_update_norm, evaluate=lambda w: {}, seed=0)
    grid = _RecordingGrid(population, {"android": runtime})
    loop.run_round(grid, 1)
    updates = [[n.astype(np.float64) - s for n, s in
                zip(record_to_weights(r.content[ARRAYS])[1], start, strict=True)]
               for r in grid.replies]
    counts = [int(r.content[METRICS][NUM_EXAMPLES]) for r in grid.replies]
    mean = [sum(c * u[i] for c, u in zip(counts, updates, strict=True)) / sum(counts)
            for i in range(len(start))]
    largest = max(float(np.abs(a).max()) for u in updates for a in u)
    return start, mean, counts, largest


def test_share_counts_are_odd_neighbourhoods_with_a_majority_threshold() -> None:
    assert share_counts(3) == (3, 2)
    assert share_counts(5) == (5, 3)
    shares, threshold = share_counts(100)
    assert shares % 2 == 1 and shares < 100 and threshold == shares // 2 + 1


def test_secagg_gives_the_plain_mean_within_the_quantisation_error(
        tmp_path: Path, federation: Federation, small_artifacts: Path,
        data_dir: Path) -> None:
    config_path, config = serve_config(tmp_path, rounds=1, min_devices=3, secagg=True)
    out = tmp_path / "run"
    server = federation.serve_with_devices(config_path, config, out, small_artifacts)
    assert federation.wait(server) == 0, federation.output(server)
    (row,) = metrics_rows(out)
    assert row["secagg"] is True and row["completed"] == row["sampled"] == 3

    start, mean, counts, largest = _plain_round(config, small_artifacts, data_dir)
    secure = [w.astype(np.float64) - s for w, s in zip(saved_weights(out), start,
                                                       strict=True)]
    bound = error_bound(counts, largest)
    error = max(float(np.abs(a - b).max()) for a, b in zip(secure, mean, strict=True))
    print(f"SecAgg+ error {error:.3g}, bound {bound:.3g}, largest update {largest:.3g}")
    assert error <= bound
    # Not trivially: the update is far larger than the error.
    assert max(float(np.abs(m).max()) for m in mean) > 100 * bound
