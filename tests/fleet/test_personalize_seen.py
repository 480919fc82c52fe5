"""seen_rerank: personalization that cannot change what a device has not seen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicetune.artifacts.manifest import read_manifest
from devicetune.config import PersonalizationConfig
from devicetune.device.runtime import LiteRTDevice
from devicetune.errors import ConfigError
from devicetune.fleet.personalize import naive, personalize
from devicetune.fleet.personalize_seen import (
    blend_from_error,
    combine,
    head_probabilities,
    knn_probabilities,
    predict,
)
from devicetune.fleet.population import Population
from tests.conftest import small_config


def test_unseen_columns_and_rows_whose_global_top_is_unseen_stay_global() -> None:
    rng = np.random.default_rng(0)
    p_global = rng.dirichlet(np.ones(5), size=200)
    p_personal = rng.dirichlet(np.full(5, 0.2), size=200)
    seen = np.array([1, 3])
    out = combine(p_global, p_personal, seen, blend=1.0)
    unseen = [0, 2, 4]
    np.testing.assert_array_equal(out[:, unseen], p_global[:, unseen])
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    top_unseen = ~np.isin(p_global.argmax(axis=1), seen)
    np.testing.assert_array_equal(out[top_unseen], p_global[top_unseen])
    labels = predict(p_global, p_personal, seen, blend=1.0)
    np.testing.assert_array_equal(labels[top_unseen], p_global.argmax(axis=1)[top_unseen])
    # Where the global top class is seen, the personal head decides among seen classes.
    moved = labels != p_global.argmax(axis=1)
    assert moved.any() and np.isin(labels[moved], seen).all()
    np.testing.assert_array_equal(predict(p_global, p_personal, seen, 0.0), p_global.argmax(axis=1))


def test_the_combined_output_is_the_apps_infer_output_with_each_weight_set(
    small_artifacts: Path, data_dir: Path
) -> None:
    """What an app computes with infer (global weights, then personal weights) and the
    combination rule, the simulator computes from the features: the same numbers."""
    config = small_config()
    runtime = LiteRTDevice(small_artifacts / "model.tflite", 0.005)
    activations = read_manifest(small_artifacts).tflite.head_activations
    x = Population.from_config(config.fleet, config.seed, data_dir).local_data(0).test.x
    global_weights = runtime.get_weights()
    personal = [
        w + np.random.default_rng(1).normal(0, 0.3, w.shape).astype(np.float32)
        for w in global_weights
    ]
    for weights in (global_weights, personal):
        runtime.set_weights(weights)
        np.testing.assert_allclose(
            head_probabilities(runtime.features(x), weights, activations),
            runtime.model.infer(x),
            atol=2e-5,
        )
    runtime.set_weights(global_weights)


def test_on_disjoint_pasts_seen_rerank_changes_nothing_unseen_where_naive_harms(
    small_artifacts: Path, data_dir: Path
) -> None:
    """Every future window is of a class the past lacks: naive fine-tuning forgets
    them; seen_rerank, even ungated at full strength, leaves each unseen class's output
    and every device's accuracy exactly as the global model had them."""
    config = small_config(
        fleet={"devices": 6, "data": {"windows_per_device": 48, "label_shift": {"past_classes": 2}}}
    )
    runtime = LiteRTDevice(small_artifacts / "model.tflite", 0.005)
    activations = read_manifest(small_artifacts).tflite.head_activations
    pop = Population.from_config(config.fleet, config.seed, data_dir)
    global_weights = runtime.get_weights()
    spec = PersonalizationConfig(epochs=4, gate=False, validation_fraction=0.0, blend=1.0)
    naive_gain, unchanged = [], 0
    for k in range(pop.devices):
        local = pop.local_data(k)
        rerank = personalize(
            runtime,
            local,
            pop.profile(k),
            global_weights,
            spec,
            0.005,
            np.random.default_rng(k),
            activations,
        )
        assert not rerank.kept_global and rerank.blend == 1.0  # it did fine-tune
        assert rerank.acc_personal == rerank.acc_global
        knn = personalize(
            runtime,
            local,
            pop.profile(k),
            global_weights,
            spec.model_copy(update={"method": "seen_knn"}),
            0.005,
            np.random.default_rng(k),
            activations,
        )
        assert not knn.kept_global and knn.acc_personal == knn.acc_global
        plain = personalize(
            runtime,
            local,
            pop.profile(k),
            global_weights,
            naive(spec),
            0.005,
            np.random.default_rng(k),
            activations,
        )
        naive_gain.append(plain.acc_personal - plain.acc_global)
        # The outputs themselves: fine-tune as the recipe does, combine, compare.
        features = runtime.features(local.test.x)
        runtime.set_weights(global_weights)
        runtime.fit(runtime.features(local.train.x), local.train.y, 4, np.random.default_rng(k))
        p_personal = head_probabilities(features, runtime.get_weights(), activations)
        p_global = head_probabilities(features, global_weights, activations)
        seen = np.unique(local.train.y)
        unseen = np.setdiff1d(np.arange(6), seen)
        out = combine(p_global, p_personal, seen, 1.0)
        np.testing.assert_array_equal(out[:, unseen], p_global[:, unseen])
        unchanged += not np.allclose(p_personal[:, unseen], p_global[:, unseen], atol=1e-3)
    runtime.set_weights(global_weights)
    assert unchanged == pop.devices  # the personal head alone did move unseen outputs
    assert sum(g < 0 for g in naive_gain) >= 3  # naive fine-tuning harms most devices


def test_the_personal_weight_grows_with_the_global_models_error_on_the_past() -> None:
    assert blend_from_error(0.0) == 0.5  # a global model right on every past example
    assert blend_from_error(0.5) == 0.75
    assert blend_from_error(1.0) == 1.0


def test_a_blend_outside_0_1_or_an_unknown_rule_is_refused_in_one_line() -> None:
    for bad in (0.0, 1.5, "auto"):
        with pytest.raises(ConfigError, match="fleet.personalization.blend"):
            small_config(fleet={"personalization": {"blend": bad}})
    with pytest.raises(ConfigError, match="fleet.personalization.method"):
        small_config(fleet={"personalization": {"method": "knn"}})
    assert (
        small_config(fleet={"personalization": {"blend": 0.5}}).fleet.personalization.blend == 0.5
    )


def test_the_knn_vote_is_the_class_share_among_the_nearest_past_embeddings() -> None:
    fit_x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.2, 1.0]])
    fit_y = np.array([0, 0, 2, 2, 1])
    votes = knn_probabilities(fit_x, fit_y, np.array([[1.0, 0.05], [0.05, 1.0]]), 4, k=3)
    np.testing.assert_allclose(votes[0], [2 / 3, 1 / 3, 0, 0])  # cosine (Euclid: class 2)
    np.testing.assert_allclose(votes[1], [0, 1 / 3, 2 / 3, 0])
    assert knn_probabilities(fit_x, fit_y, fit_x, 4, k=50).shape == (5, 4)  # k > n
