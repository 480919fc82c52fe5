"""Personalization on one device: fine-tune the global head on the device's past data so
it serves the device's future data better, and never worse where that can be seen.

Two methods (``[fleet.personalization] method``):

- ``"seen_rerank"`` (the default): the personal head only re-ranks among the classes
  the device has seen, and only where the global model's top class is one of them, so
  it cannot change the output of a class the past lacks (`devicetune.fleet.
  personalize_seen`); epochs and the blend with the global output are cross-validated.
- ``"gated_finetune"``: the weight-space recipe below, which protects unseen classes
  by keeping their classifier columns, a protection fine-tuning the shared layers
  below them can still undo.

The ``"gated_finetune"`` recipe:

Naive fine-tuning on the first days of a user's data overfits to the activities those
days happened to contain and forgets the rest. The recipe, each step something an app
can do with the artifact's signatures (train, evaluate, get/set weights):

1. Choose how many epochs to fine-tune by blocked cross-validation on the local
   training data: folds of blocks spread over the whole period (a trailing block would
   only cover the latest activities), accuracy summed over folds.
2. Retrain from the global weights on all local training data for that many epochs.
3. Pull towards the global head: interpolate personal and global weights (Wortsman et
   al. 2022, "Robust fine-tuning of zero-shot models", weight-space ensembling).
4. Protect classes the device has not seen: their classifier weights stay global, so
   fine-tuning cannot unlearn them (local data gives them only negative gradient).
5. Gate: zero epochs competes in step 1, so a device keeps the global head unless
   fine-tuning beats it in cross-validation (or has too little data to show it).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from devicetune.config import PersonalizationConfig
from devicetune.device.runtime import DeviceRuntime
from devicetune.fleet.personalize_seen import (
    BLENDS,
    SeenRerankSearch,
    blend_from_error,
    head_probabilities,
    knn_probabilities,
    predict,
)
from devicetune.fleet.population import DeviceProfile, LocalData
from devicetune.run_files import PersonalizationResult


def personalize(runtime: DeviceRuntime, data: LocalData, profile: DeviceProfile,
                global_weights: list[np.ndarray], config: PersonalizationConfig,
                learning_rate: float, rng: np.random.Generator,
                activations: Sequence[str] | None = None) -> PersonalizationResult:
    """Measure the global head on the device's future data, personalise, measure again.

    Args:
        activations: the head's layer activations (the build manifest's
            ``head_activations``); ``"seen_rerank"`` needs them to combine outputs.
    """
    train_x = runtime.features(data.train.x)
    test_x = runtime.features(data.test.x)
    train_y, test_y = data.train.y, data.test.y
    runtime.set_weights(global_weights)
    acc_global = runtime.evaluate(test_x, test_y)[1]
    result = PersonalizationResult(
        device_id=profile.device_id, platform=profile.platform, tier=profile.tier,
        n_train=len(train_y), n_test=len(test_y), acc_global=float(acc_global),
        acc_personal=float(acc_global), epochs=0, kept_global=True)
    if config.epochs == 0 and config.method != "seen_knn":
        return result  # nothing to fine-tune with: every device keeps the global head
    if config.method in ("seen_rerank", "seen_knn") and activations is None:
        raise ValueError(f"method {config.method!r} needs the head's activations")
    if config.method == "seen_knn":
        assert activations is not None
        return _seen_knn(train_x, train_y, test_x, test_y, global_weights, config,
                         list(activations), result)
    if config.method == "seen_rerank":
        assert activations is not None
        return _seen_rerank(runtime, train_x, train_y, test_x, test_y, global_weights,
                            config, learning_rate, rng, list(activations), result)

    seen = np.unique(train_y)

    def finish(weights: list[np.ndarray]) -> list[np.ndarray]:
        blended = [config.interpolation * p + (1 - config.interpolation) * g
                   for p, g in zip(weights, global_weights, strict=True)]
        if config.protect_unseen_classes:
            blended = _protect_unseen(blended, global_weights, seen)
        return blended

    folds = validation_folds(len(train_y), config.validation_fraction)
    # Without data to validate on, the gate cannot see an improvement: keep global.
    epochs = 0 if config.gate else config.epochs
    if folds:
        epochs = _choose_epochs(runtime, train_x, train_y, folds, global_weights,
                                config.epochs, learning_rate, rng, allow_zero=config.gate,
                                margin=config.margin)
    candidate = global_weights
    if epochs > 0:
        runtime.set_weights(global_weights)
        runtime.fit(train_x, train_y, epochs, rng, learning_rate=learning_rate)
        candidate = finish(runtime.get_weights())
    kept_global = candidate is global_weights
    runtime.set_weights(candidate)
    acc_personal = runtime.evaluate(test_x, test_y)[1]
    return replace(result, acc_personal=float(acc_personal), epochs=epochs,
                   kept_global=kept_global)


def _seen_rerank(runtime: DeviceRuntime, train_x: np.ndarray, train_y: np.ndarray,
                 test_x: np.ndarray, test_y: np.ndarray, global_weights: list[np.ndarray],
                 config: PersonalizationConfig, learning_rate: float,
                 rng: np.random.Generator, activations: list[str],
                 result: PersonalizationResult) -> PersonalizationResult:
    """Cross-validate (epochs, blend) with the re-ranking rule, fine-tune on all the
    past, and measure the combined output on the future."""
    blends = _blends(config, train_x, train_y, global_weights, activations)
    search = SeenRerankSearch(config.epochs, blends)
    folds = validation_folds(len(train_y), config.validation_fraction)
    for fit, val in folds:
        fit_seen = np.unique(train_y[fit])
        p_global = head_probabilities(train_x[val], global_weights, activations)
        search.record(0, p_global, p_global, train_y[val], fit_seen)

        def record(epoch: int, val: np.ndarray = val, p_global: np.ndarray = p_global,
                   fit_seen: np.ndarray = fit_seen) -> None:
            p_personal = head_probabilities(train_x[val], runtime.get_weights(), activations)
            search.record(epoch, p_global, p_personal, train_y[val], fit_seen)

        runtime.set_weights(global_weights)
        runtime.fit(train_x[fit], train_y[fit], config.epochs, rng,
                    learning_rate=learning_rate, on_epoch=record)
    if folds:
        epochs, blend = search.best(config.gate, config.margin, config.choose_epochs)
    else:  # nothing to validate on: the gate keeps global, no gate trusts fine-tuning
        epochs, blend = (0, 0.0) if config.gate else (config.epochs, max(blends))
    runtime.set_weights(global_weights)
    if epochs == 0 or blend == 0.0:
        return replace(result, blend=0.0)
    runtime.fit(train_x, train_y, epochs, rng, learning_rate=learning_rate)
    p_global = head_probabilities(test_x, global_weights, activations)
    p_personal = head_probabilities(test_x, runtime.get_weights(), activations)
    runtime.set_weights(global_weights)
    predicted = predict(p_global, p_personal, np.unique(train_y), blend)
    accuracy = float((predicted == test_y).mean()) if len(test_y) else 0.0
    return replace(result, acc_personal=accuracy, epochs=epochs, kept_global=False,
                   blend=blend)


def personalization_method(config: PersonalizationConfig) -> dict[str, str]:
    """The method a run personalised with and its resolved settings, for summary.json
    (text: the report shows every number of the summary, and these are settings)."""
    settings: dict[str, object] = {"epochs": config.epochs, "gate": config.gate,
                                   "gate_margin": config.margin,
                                   "validation_fraction": config.validation_fraction}
    if config.method in ("seen_rerank", "seen_knn"):
        blend = list(BLENDS) if config.blend == "cross_validated" else config.blend
        settings |= {"blend": blend, "choose_epochs": config.choose_epochs}
        if config.method == "seen_knn":
            settings = {"knn_k": config.knn_k, "blend": blend, "gate": config.gate,
                        "gate_margin": config.margin,
                        "validation_fraction": config.validation_fraction}
    else:
        settings |= {"interpolation": config.interpolation,
                     "protect_unseen_classes": config.protect_unseen_classes}
    return {"name": config.method,
            "settings": ", ".join(f"{k} = {v}" for k, v in settings.items())}


def _blends(config: PersonalizationConfig, train_x: np.ndarray, train_y: np.ndarray,
            global_weights: list[np.ndarray], activations: list[str]) -> tuple[float, ...]:
    """The personal output weights to try (one, unless cross-validated)."""
    if config.blend == "cross_validated":
        return BLENDS
    if config.blend == "global_error":
        p_past = head_probabilities(train_x, global_weights, activations)
        return (blend_from_error(float((p_past.argmax(axis=1) != train_y).mean())),)
    return (float(config.blend),)


def _seen_knn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
              test_y: np.ndarray, global_weights: list[np.ndarray],
              config: PersonalizationConfig, activations: list[str],
              result: PersonalizationResult) -> PersonalizationResult:
    """The re-ranking rule with a k-nearest-neighbour vote over the device's past
    embeddings as the personal output: no training at all, gated on cross-validation."""
    blends = _blends(config, train_x, train_y, global_weights, activations)
    search = SeenRerankSearch(1, blends)
    folds = validation_folds(len(train_y), config.validation_fraction)
    classes = global_weights[-1].shape[0]
    for fit, val in folds:
        fit_seen = np.unique(train_y[fit])
        p_global = head_probabilities(train_x[val], global_weights, activations)
        p_knn = knn_probabilities(train_x[fit], train_y[fit], train_x[val], classes,
                                  config.knn_k)
        search.record(0, p_global, p_global, train_y[val], fit_seen)
        search.record(1, p_global, p_knn, train_y[val], fit_seen)
    if folds:
        blend = search.best(config.gate, config.margin, choose_epochs=False)[1]
    else:
        blend = 0.0 if config.gate else max(blends)
    if blend == 0.0:
        return replace(result, blend=0.0)
    p_global = head_probabilities(test_x, global_weights, activations)
    p_knn = knn_probabilities(train_x, train_y, test_x, classes, config.knn_k)
    predicted = predict(p_global, p_knn, np.unique(train_y), blend)
    accuracy = float((predicted == test_y).mean()) if len(test_y) else 0.0
    return replace(result, acc_personal=accuracy, kept_global=False, blend=blend)


def naive(config: PersonalizationConfig) -> PersonalizationConfig:
    """The same budget without the safeguards: every epoch on all local data."""
    return config.model_copy(update={
        "method": "gated_finetune", "validation_fraction": 0.0, "interpolation": 1.0,
        "protect_unseen_classes": False, "gate": False})


def validation_folds(n: int, fraction: float, block: int = 8
                     ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit rows, validation rows) per fold, in blocks of ``block`` consecutive examples.

    Each fold holds out every k-th block (k = 1 / fraction), shifted by one block per
    fold, so together the folds validate on all the local data and each fold spans the
    whole period: a single trailing block would only cover the latest activities, and
    whole blocks keep overlapping sensor windows on one side of the split.
    """
    if fraction <= 0 or n < 2 * block:
        return []
    every = max(2, int(round(1 / fraction)))
    position = (np.arange(n) // block) % every
    rows = np.arange(n)
    return [(rows[position != f], rows[position == f]) for f in range(every)
            if (position == f).any() and (position != f).any()]


def _choose_epochs(runtime: DeviceRuntime, x: np.ndarray, y: np.ndarray,
                   folds: list[tuple[np.ndarray, np.ndarray]],
                   global_weights: list[np.ndarray], epochs: int, learning_rate: float,
                   rng: np.random.Generator, allow_zero: bool, margin: float) -> int:
    """The epoch count with the best cross-validated accuracy (then loss, then fewer
    epochs). With ``allow_zero`` the global weights compete too: 0 means no count beats
    them, and the device keeps the global head (the gate)."""
    correct = np.zeros(epochs + 1)
    loss = np.zeros(epochs + 1)
    for fit, val in folds:

        def record(epoch: int, val: np.ndarray = val) -> None:
            fold_loss, accuracy = runtime.evaluate(x[val], y[val])
            correct[epoch] += accuracy * len(val)
            loss[epoch] += fold_loss * len(val)

        runtime.set_weights(global_weights)
        record(0)
        # One training session per fold, measured at each epoch's end.
        runtime.fit(x[fit], y[fit], epochs, rng, learning_rate=learning_rate, on_epoch=record)
    ranking = [(correct[e], -loss[e], -e) for e in range(1, epochs + 1)]
    best = int(-max(ranking)[2])
    if allow_zero:
        # The best of many epochs beats the global head on noise alone now and then (the
        # winner's curse): demand a gain of `margin` binomial standard errors.
        n = sum(len(val) for _, val in folds)
        p = min(max(correct[0] / n, 1.0 / n), 1.0 - 1.0 / n)
        if correct[best] - correct[0] <= margin * np.sqrt(n * p * (1 - p)):
            return 0
    return best


def _protect_unseen(weights: list[np.ndarray], global_weights: list[np.ndarray],
                    seen: np.ndarray) -> list[np.ndarray]:
    """Restore the classifier's (last layer's) columns of classes not in ``seen``."""
    kernel, bias = weights[-2].copy(), weights[-1].copy()
    unseen = np.setdiff1d(np.arange(kernel.shape[1]), seen)
    kernel[:, unseen] = global_weights[-2][:, unseen]
    bias[unseen] = global_weights[-1][unseen]
    return [*weights[:-2], kernel, bias]
