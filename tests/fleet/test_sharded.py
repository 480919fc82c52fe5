"""The vectorized engine sharded over a local Ray of 2 workers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from devicetune.fleet.simulate import simulate
from tests.conftest import small_config


def test_ray_shards_give_the_single_process_result(tmp_path: Path, data_dir: Path,
                                                   small_artifacts: Path) -> None:
    """Each worker generates, embeds and trains its own devices; the strategy combines
    the shards' weighted means: the same rounds and weights as one process."""
    config = small_config(fleet={"devices": 12, "dropout": 0.1,
                                 "data": {"windows_per_device": 40}},
                          server={"rounds": 2, "devices_per_round": 8})
    runs = {engine: simulate(config, tmp_path / engine, data_dir, engine=engine,
                             artifacts=small_artifacts)
            for engine in ("vectorized", "ray")}
    rows = {e: [json.loads(line) for line in (tmp_path / e / "metrics.jsonl").read_text()
                .splitlines()] for e in runs}
    for ours, theirs in zip(rows["ray"], rows["vectorized"], strict=True):
        assert ours["shards"] == 2  # both workers trained devices every round
        for key in ("sampled", "completed", "dropped", "rejected"):
            assert ours[key] == theirs[key]
        assert abs(ours["mean_local_loss"] - theirs["mean_local_loss"]) < 1e-6
        assert abs(ours["global_accuracy"] - theirs["global_accuracy"]) < 1e-6
    with np.load(tmp_path / "ray" / "global_weights.npz") as a, \
            np.load(tmp_path / "vectorized" / "global_weights.npz") as b:
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a.files) < 1e-5
    assert runs["ray"].summary["accuracy_personal"] == \
        runs["vectorized"].summary["accuracy_personal"]
