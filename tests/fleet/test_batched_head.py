"""The batched head step against the artifact's own train / train_dp signatures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicetune.device.batching import padded_batches
from devicetune.device.litert import LiteRTModel
from devicetune.fleet.batched_head import BatchedHead
from tests.export.conftest import _variant, examples


def _artifact(data_dir: Path, **kw):
    defaults = dict(head="mlp", optimizer="adam", tail=0, architecture="conv1d_small",
                    noise=1.0, clip=1.0, learning_rate=0.01, momentum=0.9)
    defaults.update(kw)
    return _variant(**defaults, data_dir=data_dir)


def _batches(lite: LiteRTModel, devices: int, steps: int, seed: int):
    """Per device, ``steps`` partial batches of its own examples."""
    rng = np.random.default_rng(seed)
    x, y = examples((128, 9), n=64, seed=seed)
    features = lite.embed(x)
    out = []
    for _ in range(devices):
        batches = []
        for _ in range(steps):
            rows = rng.choice(64, size=int(rng.integers(1, lite.batch_size + 1)), replace=False)
            batches.append(next(padded_batches(features[rows], y[rows].astype(np.int32),
                                               lite.batch_size)))
        out.append(batches)
    return out


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
@pytest.mark.parametrize("private", [False, True])
def test_batched_steps_equal_the_artifact(data_dir: Path, optimizer: str,
                                          private: bool) -> None:
    variant = _artifact(data_dir, optimizer=optimizer, noise=0.0, clip=0.3)
    lite = LiteRTModel(variant.flatbuffer)
    start = lite.get_weights()
    names = variant.program().names
    plan = _batches(lite, devices=3, steps=12, seed=2)
    spec = variant.model.spec
    head = BatchedHead.from_global(
        [start[n] for n in names], 3,
        activations=[layer.activation for layer in variant.model.layers],
        optimizer=spec.optimizer, learning_rate=spec.optimizer.learning_rate,
        dp_clip_norm=0.3, dp_noise_multiplier=0.0 if private else None)
    for step in range(12):
        f = np.stack([plan[d][step][0] for d in range(3)])
        y = np.stack([plan[d][step][1] for d in range(3)]).astype(np.int64)
        m = np.stack([plan[d][step][2] for d in range(3)])
        head.step(f, y, m)
    for device in range(3):
        lite.set_weights(start)
        for batch in plan[device]:
            lite.train(*batch, private=private)
        ours = head.device_weights(device)
        theirs = lite.get_weights()
        for name, mine in zip(names, ours, strict=True):
            np.testing.assert_allclose(mine, theirs[name], atol=1e-5, rtol=1e-4)


def test_batched_dp_noise_has_the_configured_std(data_dir: Path) -> None:
    variant = _artifact(data_dir, head="linear", optimizer="sgd", momentum=0.0,
                        learning_rate=1.0)
    lite = LiteRTModel(variant.flatbuffer)
    start = [lite.get_weights()[n] for n in variant.program().names]
    noise, clip, devices = 0.8, 0.5, 400
    kwargs = dict(activations=["linear"], optimizer=variant.model.spec.optimizer,
                  learning_rate=1.0, dp_clip_norm=clip)
    noisy = BatchedHead.from_global(start, devices, dp_noise_multiplier=noise,
                                    rng=np.random.default_rng(0), **kwargs)
    clean = BatchedHead.from_global(start, devices, dp_noise_multiplier=0.0, **kwargs)
    f, y = examples((128, 9), n=8, seed=5)
    features = np.broadcast_to(lite.embed(f), (devices, 8, lite.feature_dim)).copy()
    labels = np.broadcast_to(y, (devices, 8)).astype(np.int64)
    mask = np.ones((devices, 8), np.float32)
    mask[:, 6:] = 0  # 6 real rows
    noisy.step(features, labels, mask)
    clean.step(features, labels, mask)
    samples = np.concatenate([((c - n) * 6).ravel() for n, c in
                              zip(noisy.params, clean.params, strict=True)])
    assert abs(samples.std() / (noise * clip) - 1) < 0.05
