"""A device's part of a federated round: start from the global weights, train on local
data through the artifact, reply with the new weights."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from devicetune.data.labeled import LabeledData
from devicetune.device.runtime import DeviceRuntime
from devicetune.errors import ArtifactError
from devicetune.fleet.messages import (
    ARRAYS,
    CONFIG,
    NUM_EXAMPLES,
    TrainInstructions,
    record_to_weights,
    train_reply,
)
from devicetune.fleet.population import DeviceProfile
from devicetune.fleet.stages import STAGES
from devicetune.model.class_mask import present_classes

TrainingData = Callable[[], tuple[np.ndarray, np.ndarray]]


def train_locally(runtime: DeviceRuntime, train: TrainingData, weights: list[np.ndarray],
                  instructions: TrainInstructions, rng: np.random.Generator
                  ) -> tuple[list[np.ndarray], dict[str, float]]:
    """Local epochs from ``weights`` on the device's training features.

    Returns:
        The new weights and the metrics of the reply (examples, loss, compute time).
    """
    features, labels = train()
    with STAGES.timed("local training"):
        runtime.set_weights(weights)
        start = time.perf_counter()
        # FedRS: the device pushes only the logits of the classes its data holds.
        class_mask = (present_classes(labels, len(weights[-1])) if instructions.class_mask
                      else None)
        loss = runtime.fit(features, labels, instructions.local_epochs, rng,
                           learning_rate=instructions.learning_rate,
                           proximal_mu=instructions.proximal_mu,
                           private=instructions.private, class_mask=class_mask)
        compute_s = time.perf_counter() - start
        new_weights = runtime.get_weights()
    metrics = {NUM_EXAMPLES: float(len(labels)), "train-loss": float(loss),
               "compute-seconds": compute_s}
    if instructions.private:  # what the device's own sample-level epsilon depends on
        metrics["dp-steps"] = float(instructions.local_epochs
                                    * -(-len(labels) // runtime.batch_size))
    return new_weights, metrics


def training_data(runtime: DeviceRuntime, train_data: Callable[[], LabeledData]
                  ) -> TrainingData:
    """The device's training features and labels, computed by its own backbone from
    ``train_data()`` (its training examples, e.g. `train_data_of`)."""
    def compute() -> tuple[np.ndarray, np.ndarray]:
        with STAGES.timed("generate"):
            train = train_data()
        with STAGES.timed("embed"):
            return runtime.features(train.x), train.y

    return compute


def handle_train(request, runtime: DeviceRuntime, train: TrainingData,
                 profile: DeviceProfile, seed: int):
    """Answer a Flower train Message as device ``profile.device_id``; ``train`` gives
    its training features and labels (computed on first use, or cached)."""
    names, weights = record_to_weights(request.content[ARRAYS])
    if names != runtime.weight_names:
        raise ArtifactError(f"the server sent weights {names}, but the device's artifact "
                            f"has {runtime.weight_names}; build and serve the same model")
    instructions = TrainInstructions.from_config(dict(request.content[CONFIG]))
    rng = np.random.default_rng(np.random.SeedSequence(
        [seed, 8, instructions.server_round, profile.device_id]))
    new_weights, metrics = train_locally(runtime, train, weights, instructions, rng)
    # A slower phone takes proportionally longer for the same work.
    metrics["device-seconds"] = metrics["compute-seconds"] / profile.speed
    metrics["device-id"] = float(profile.device_id)
    return train_reply(request, names, new_weights, metrics)
