"""Export variants, built once per session (conversion takes seconds each)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest

from devicetune.config import ExportConfig, parse_config
from devicetune.export.tflite import convert_program
from devicetune.model.trainable import TrainableModel, build_trainable_model


@dataclass
class Variant:
    model: TrainableModel
    export: ExportConfig
    flatbuffer: bytes

    def program(self):
        """A fresh TensorFlow reference starting from the artifact's initial weights."""
        return self.model.program(self.export)


@cache
def _variant(head: str, optimizer: str, tail: int, architecture: str, noise: float,
             clip: float, learning_rate: float, momentum: float, data_dir: Path) -> Variant:
    shape = [128, 9] if architecture == "conv1d_small" else [16, 16, 1]
    raw = {"model": {
        "classes": 6, "input_shape": shape, "batch_size": 8,
        "backbone": {"architecture": architecture, "embedding_dim": 24,
                     "trainable_dense_layers": tail},
        "head": {"type": head, "hidden_units": 12},
        "optimizer": {"name": optimizer, "learning_rate": learning_rate,
                      "momentum": momentum if optimizer == "sgd" else 0.0},
    }, "export": {"dp_noise_multiplier": noise, "dp_clip_norm": clip}}
    config = parse_config(raw)
    model = build_trainable_model(config.model, 0, data_dir)
    return Variant(model, config.export, convert_program(model.program(config.export)))


@pytest.fixture(scope="session")
def variant(data_dir: Path):
    def make(head: str = "linear", optimizer: str = "adam", tail: int = 0,
             architecture: str = "conv1d_small", noise: float = 1.0, clip: float = 1.0,
             learning_rate: float = 0.01, momentum: float = 0.9) -> Variant:
        return _variant(head, optimizer, tail, architecture, noise, clip, learning_rate,
                        momentum, data_dir)

    return make


@pytest.fixture(scope="session")
def har_build(tmp_path_factory: pytest.TempPathFactory):
    """`devicetune build simulations/har_build.toml`, run once through the CLI (it
    pretrains, about 20 s); several tests read the folder it writes."""
    from tests.conftest import run_cli

    out = tmp_path_factory.mktemp("har-build") / "har"
    return out, run_cli("build", "simulations/har_build.toml", "--out", str(out))


def examples(shape: tuple[int, ...], n: int = 96, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, *shape)).astype(np.float32), rng.integers(0, 6, n)
