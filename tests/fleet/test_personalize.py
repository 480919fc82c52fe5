from __future__ import annotations

from pathlib import Path

import numpy as np

from devicetune.config import PersonalizationConfig
from devicetune.device.runtime import LiteRTDevice
from devicetune.fleet.personalize import (
    _protect_unseen,
    naive,
    personalize,
    validation_folds,
)
from devicetune.fleet.population import LocalData, Population
from tests.conftest import small_config


def test_folds_validate_every_row_once_in_whole_blocks() -> None:
    folds = validation_folds(100, 0.2, block=8)
    assert len(folds) == 5
    held = np.concatenate([val for _, val in folds])
    assert sorted(held.tolist()) == list(range(100))
    for fit, val in folds:
        assert set(fit).isdisjoint(val)
        assert val.max() - val.min() >= 40  # each fold spreads over the period
        starts = val[np.r_[True, np.diff(val) > 1]]
        assert all(s % 8 == 0 for s in starts)  # held out in whole blocks
    assert validation_folds(10, 0.2) == []  # too few examples to validate on


def test_unseen_classes_keep_their_global_classifier() -> None:
    rng = np.random.default_rng(0)
    global_weights = [rng.normal(size=(4, 3)), rng.normal(size=3)]
    personal = [w + 1.0 for w in global_weights]
    protected = _protect_unseen(personal, global_weights, seen=np.array([0, 2]))
    np.testing.assert_array_equal(protected[0][:, 1], global_weights[0][:, 1])
    np.testing.assert_array_equal(protected[1][1], global_weights[1][1])
    np.testing.assert_array_equal(protected[0][:, [0, 2]], personal[0][:, [0, 2]])


def _setup(small_artifacts: Path, data_dir: Path):
    config = small_config()
    runtime = LiteRTDevice(small_artifacts / "model.tflite", 0.005)
    pop = Population.from_config(config.fleet, config.seed, data_dir)
    return runtime, pop, runtime.get_weights()


def _activations(artifacts: Path) -> list[str]:
    from devicetune.artifacts.manifest import read_manifest

    return read_manifest(artifacts).tflite.head_activations


def test_personalising_one_device_does_not_touch_another(small_artifacts: Path,
                                                         data_dir: Path) -> None:
    runtime, pop, global_weights = _setup(small_artifacts, data_dir)
    snapshot = [w.copy() for w in global_weights]
    spec = PersonalizationConfig(epochs=5)

    def run(order: list[int]) -> dict[int, float]:
        out = {}
        for k in order:
            rng = np.random.default_rng(k)
            result = personalize(runtime, pop.local_data(k), pop.profile(k), global_weights,
                                 spec, 0.005, rng, _activations(small_artifacts))
            out[k] = (result.acc_global, result.acc_personal)
        return out

    assert run([0, 1, 2]) == run([2, 1, 0])  # each device starts from the global head
    for before, after in zip(snapshot, global_weights, strict=True):
        np.testing.assert_array_equal(before, after)


def test_the_gate_mostly_keeps_the_global_head_when_local_labels_are_noise(
        small_artifacts: Path, data_dir: Path) -> None:
    runtime, _, global_weights = _setup(small_artifacts, data_dir)
    config = small_config(fleet={"devices": 8, "data": {"windows_per_device": 120}})
    pop = Population.from_config(config.fleet, config.seed, data_dir)
    kept, recipe_gain, naive_gain = 0, [], []
    for k in range(8):
        local = pop.local_data(k)
        rng = np.random.default_rng(k)
        scrambled = local.train.select(np.arange(len(local.train)))
        object.__setattr__(scrambled, "y", rng.integers(0, 6, len(scrambled)))
        noisy = LocalData(train=scrambled, test=local.test)
        gated = personalize(runtime, noisy, pop.profile(k), global_weights,
                            PersonalizationConfig(epochs=8), 0.005, rng,
                            _activations(small_artifacts))
        free = personalize(runtime, noisy, pop.profile(k), global_weights,
                           naive(PersonalizationConfig(epochs=8)), 0.005, rng)
        kept += gated.kept_global
        recipe_gain.append(gated.acc_personal - gated.acc_global)
        naive_gain.append(free.acc_personal - free.acc_global)
    # Nothing can be learnt from noise: the gate should see that almost every time,
    # while naive fine-tuning learns the noise and loses accuracy.
    assert kept >= 6
    assert np.mean(naive_gain) < -0.1
    assert np.mean(recipe_gain) > np.mean(naive_gain) + 0.1


def test_too_little_data_to_validate_keeps_the_global_head(small_artifacts: Path,
                                                          data_dir: Path) -> None:
    runtime, pop, global_weights = _setup(small_artifacts, data_dir)
    local = pop.local_data(0)
    assert len(local.train) < 16  # fewer than two validation blocks
    rng = np.random.default_rng(0)
    gated = personalize(runtime, local, pop.profile(0), global_weights,
                        PersonalizationConfig(epochs=5), 0.005, rng, _activations(small_artifacts))
    assert gated.kept_global and gated.epochs == 0
    ungated = personalize(runtime, local, pop.profile(0), global_weights,
                          PersonalizationConfig(epochs=5, gate=False), 0.005, rng,
                          _activations(small_artifacts))
    assert not ungated.kept_global and ungated.epochs == 5


def test_zero_epochs_keeps_the_global_head_for_every_method(small_artifacts: Path,
                                                            data_dir: Path) -> None:
    runtime, pop, global_weights = _setup(small_artifacts, data_dir)
    for method in ("seen_rerank", "gated_finetune"):
        spec = PersonalizationConfig(epochs=0, method=method)
        for config in (spec, naive(spec)):
            result = personalize(runtime, pop.local_data(1), pop.profile(1), global_weights,
                                 config, 0.005, np.random.default_rng(0),
                                 _activations(small_artifacts))
            assert result.kept_global and result.epochs == 0
            assert result.acc_personal == result.acc_global
