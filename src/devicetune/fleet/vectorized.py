"""`VectorizedGrid`: a round's devices trained together, as one batched computation.

The in-process grid runs each device's artifact in turn; this grid computes every
sampled device's features in a few large backbone calls (LiteRT, any batch size) and
trains all their heads at once with `BatchedHead`, the artifact's step with a device
axis. Same sampling, same shuffles, same dropouts, same Flower strategies: a parity
test holds it to the in-process engine within 1e-4. iOS devices train with the same
math (the Core ML update equals the TensorFlow step, checked at build time).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Message

from devicetune.config import OptimizerSpec
from devicetune.device.runtime import LiteRTDevice
from devicetune.fleet.batched_head import BatchedHead
from devicetune.fleet.grid import FleetGridBase, device_id
from devicetune.fleet.messages import (
    ARRAYS,
    CONFIG,
    NUM_EXAMPLES,
    TrainInstructions,
    record_to_weights,
    train_reply,
)
from devicetune.fleet.population import Population

EMBED_CHUNK = 4096  # examples per backbone call


class VectorizedGrid(FleetGridBase):
    """Devices of a `Population` trained as one batch per round.

    Args:
        embedder: a LiteRT runtime, used for its backbone (``features``).
        activations: the head's layer activations (from the build manifest).
        optimizer: the head's optimizer (from the config).
        dp: the artifact's train_dp (clip norm, noise multiplier), for devices told to
            train privately. The rest as `FleetGridBase`.
    """

    def __init__(self, population: Population, embedder: LiteRTDevice,
                 activations: list[str], optimizer: OptimizerSpec,
                 dp: tuple[float, float] = (1.0, 0.0), **kwargs: Any) -> None:
        super().__init__(population, **kwargs)
        self.embedder = embedder
        self.activations = activations
        self.optimizer = optimizer
        self.batch_size = embedder.batch_size
        self.dp_clip_norm, self.dp_noise_multiplier = dp

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        if not messages:
            return []
        names, weights = record_to_weights(messages[0].content[ARRAYS])
        instructions = TrainInstructions.from_config(dict(messages[0].content[CONFIG]))
        working, devices = [], []
        for message in messages:
            device = device_id(message.metadata.dst_node_id)
            if self._drops_out(device):
                continue
            working.append(message)
            devices.append(device)
        if not devices:
            return []
        start = time.perf_counter()
        features, labels = self._training_data(devices)
        head = BatchedHead.from_global(
            weights, len(devices), activations=self.activations, optimizer=self.optimizer,
            learning_rate=instructions.learning_rate, proximal_mu=instructions.proximal_mu,
            dp_clip_norm=self.dp_clip_norm,
            dp_noise_multiplier=self.dp_noise_multiplier if instructions.private else None,
            rng=np.random.default_rng(np.random.SeedSequence(
                [self.population.seed, 11, self.server_round])))
        losses = train_together(head, features, labels, devices, instructions,
                                self.population.seed, self.batch_size)
        compute_s = (time.perf_counter() - start) / len(devices)
        replies = []
        for i, (message, device) in enumerate(zip(working, devices, strict=True)):
            profile = self.population.profile(device)
            metrics = {NUM_EXAMPLES: float(len(labels[i])), "train-loss": float(losses[i]),
                       "compute-seconds": compute_s,
                       "device-seconds": compute_s / profile.speed,
                       "device-id": float(device)}
            if instructions.private:
                metrics["dp-steps"] = float(instructions.local_epochs
                                            * -(-len(labels[i]) // self.batch_size))
            self.on_device(device)
            if metrics["device-seconds"] > self.round_timeout_s:
                self.dropped.append(device)
                continue
            replies.append(train_reply(message, names, head.device_weights(i), metrics))
        return replies

    def _training_data(self, devices: list[int]
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every device's training features and labels: cached ones reused, the rest
        from a few large backbone calls."""
        entries = {d: self.cache.get(("android", d)) for d in devices}
        missing = [d for d, entry in entries.items() if entry is None]
        if missing:
            trains = [self.population.local_data(d).train for d in missing]
            pooled = np.concatenate([t.x for t in trains])
            out = np.concatenate([self.embedder.features(pooled[i:i + EMBED_CHUNK])
                                  for i in range(0, len(pooled), EMBED_CHUNK)])
            cuts = np.cumsum([len(t) for t in trains])[:-1]
            for d, f, t in zip(missing, np.split(out, cuts), trains, strict=True):
                entries[d] = (f, t.y)
                self.cache.put(("android", d), f, t.y)
        return [entries[d][0] for d in devices], [entries[d][1] for d in devices]


def train_together(head: BatchedHead, features: list[np.ndarray], labels: list[np.ndarray],
                   devices: list[int], instructions: TrainInstructions, seed: int,
                   batch_size: int) -> np.ndarray:
    """Local epochs for every device at once, visiting each device's rows in the order
    its own artifact would (`handle_train`'s per-device, per-round generator)."""
    count = len(devices)
    rngs = [np.random.default_rng(np.random.SeedSequence(
        [seed, 8, instructions.server_round, d])) for d in devices]
    sizes = np.array([len(y) for y in labels])
    steps = int(np.ceil(sizes.max() / batch_size))
    dim = features[0].shape[1]
    losses = np.zeros(count)
    for _ in range(instructions.local_epochs):
        orders = [rng.permutation(n) for rng, n in zip(rngs, sizes, strict=True)]
        x = np.zeros((count, steps * batch_size, dim), np.float32)
        y = np.zeros((count, steps * batch_size), np.int64)
        m = np.zeros((count, steps * batch_size), np.float32)
        for i, order in enumerate(orders):
            x[i, :len(order)] = features[i][order]
            y[i, :len(order)] = labels[i][order]
            m[i, :len(order)] = 1.0
        total = np.zeros(count)
        for s in range(steps):
            rows = slice(s * batch_size, (s + 1) * batch_size)
            step_loss = head.step(x[:, rows], y[:, rows], m[:, rows])
            total += step_loss * m[:, rows].sum(axis=1)
        losses = total / np.maximum(sizes, 1)
    return losses
