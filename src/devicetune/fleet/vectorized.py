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
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from flwr.app import Message

from devicetune.config import OptimizerSpec
from devicetune.data.labeled import LabeledData
from devicetune.device.runtime import LiteRTDevice
from devicetune.fleet.batched_head import BatchedHead
from devicetune.fleet.grid import FleetGridBase
from devicetune.fleet.messages import (
    ARRAYS,
    CONFIG,
    NUM_EXAMPLES,
    TrainInstructions,
    record_to_weights,
)
from devicetune.fleet.population import Population
from devicetune.fleet.round_data import train_data_of
from devicetune.fleet.round_updates import RoundUpdates
from devicetune.fleet.stages import OVERLAPPED, STAGES
from devicetune.fleet.streams import StreamSource, pcg64_states
from devicetune.model.class_mask import present_classes

# Training examples per backbone call. LiteRT's per-row cost is lower at 256-1024 rows
# than at 4096 (cache), and small chunks keep the pipeline of `_generated` short.
EMBED_CHUNK = 1024


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
        self.noise_key: tuple[int, ...] = ()  # a shard's own DP-SGD noise stream
        self.embed_chunk = EMBED_CHUNK  # training examples generated and embedded at once

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        return self.train_round(messages).device_messages()

    def train_round(self, messages: Iterable[Message]) -> RoundUpdates:
        """Train every device a round's messages address; their updates stacked (no
        per-device Flower message: see `RoundUpdates`)."""
        messages = list(messages)
        if not messages:
            return RoundUpdates.concatenate([])
        names, weights = record_to_weights(messages[0].content[ARRAYS])
        instructions = TrainInstructions.from_config(dict(messages[0].content[CONFIG]))
        staying = self._staying(messages)
        devices = [device for device, _ in staying]
        working = [message for _, message in staying]
        if not devices:
            return RoundUpdates.concatenate([])
        new_weights, metrics = self.train_shard(devices, weights, instructions)
        return self.collect(names, [(new_weights, metrics)], [working])

    def collect(self, names: list[str], shards: list[tuple[list[np.ndarray], dict]],
                requests: list[list[Message]]) -> RoundUpdates:
        """The shards' results as one `RoundUpdates`; stragglers past the round's
        timeout dropped, as a server's timeout would drop them."""
        updates = RoundUpdates.concatenate([
            RoundUpdates(names, weights, metrics, shard_requests, [len(shard_requests)])
            for (weights, metrics), shard_requests in zip(shards, requests, strict=True)])
        if not updates.devices:
            return updates
        devices = updates.metrics["device-id"].astype(np.int64).tolist()
        for device in devices:
            self.on_device(device)
        late = updates.metrics["device-seconds"] > self.round_timeout_s
        self.dropped.extend(d for d, is_late in zip(devices, late, strict=True) if is_late)
        return updates.select(~late) if late.any() else updates

    def train_shard(self, devices: list[int], weights: list[np.ndarray],
                    instructions: TrainInstructions) -> tuple[list[np.ndarray], dict]:
        """Train ``devices`` (none dropping out) as one batch: their new weights stacked
        and their reply metrics, one value per device."""
        start = time.perf_counter()
        features, labels = self._training_data(devices)
        new_weights, losses = self.train_devices(weights, features, labels, devices,
                                                 instructions)
        compute_s = (time.perf_counter() - start) / len(devices)
        speed = np.array([self.population.profile(d).speed for d in devices])
        sizes = np.array([len(y) for y in labels], np.float64)
        metrics = {NUM_EXAMPLES: sizes, "train-loss": losses.astype(np.float64),
                   "compute-seconds": np.full(len(devices), compute_s),
                   "device-seconds": compute_s / speed,
                   "device-id": np.array(devices, np.float64)}
        if instructions.private:
            metrics["dp-steps"] = instructions.local_epochs * np.ceil(sizes / self.batch_size)
        return new_weights, metrics

    def train_devices(self, weights: list[np.ndarray], features: list[np.ndarray],
                      labels: list[np.ndarray], devices: list[int],
                      instructions: TrainInstructions
                      ) -> tuple[list[np.ndarray], np.ndarray]:
        """Local epochs of ``devices`` from the global ``weights``, as one batch: their
        new weights (stacked) and mean training losses."""
        with STAGES.timed("local training"):
            head = BatchedHead.from_global(
                weights, len(devices), activations=self.activations,
                optimizer=self.optimizer, learning_rate=instructions.learning_rate,
                proximal_mu=instructions.proximal_mu, dp_clip_norm=self.dp_clip_norm,
                dp_noise_multiplier=self.dp_noise_multiplier if instructions.private
                else None,
                rng=np.random.default_rng(np.random.SeedSequence(
                    [self.population.seed, 11, self.server_round, *self.noise_key])))
            losses = train_together(head, features, labels, devices, instructions,
                                    self.population.seed, self.batch_size)
            return [p.astype(np.float32, copy=False) for p in head.params], losses

    def _training_data(self, devices: list[int]
                       ) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every device's training features and labels: cached ones reused, the rest
        generated and embedded together, about a thousand examples at a time."""
        entries = {d: self.cache.get(("android", d)) for d in devices}
        missing = [d for d, entry in entries.items() if entry is None]
        for chunk, trains in _generated(self.population,
                                        list(_chunks(missing, self.population, self.embed_chunk))):
            with STAGES.timed("embed"):
                out = self.embedder.features(np.concatenate([t.x for t in trains]))
            cuts = np.cumsum([len(t) for t in trains])[:-1]
            for d, f, t in zip(chunk, np.split(out, cuts), trains, strict=True):
                f = f.copy()  # a view would keep the whole chunk's features alive
                entries[d] = (f, t.y)
                self.cache.put(("android", d), f, t.y)
        return [entries[d][0] for d in devices], [entries[d][1] for d in devices]


def _generated(population: Population, chunks: list[list[int]]
               ) -> Iterator[tuple[list[int], list[LabeledData]]]:
    """Each chunk of devices with their training data, in order. With several chunks,
    the next is generated on a worker thread while the caller embeds this one: numpy's
    random fills, sines and matmuls release the GIL, and LiteRT runs on one thread.

    The main thread's waits are timed as "generate"; the worker's own seconds as
    "generate (overlapped)" (they hide under the embedding's wall time).
    """
    if len(chunks) < 2:
        for chunk in chunks:
            with STAGES.timed("generate"):
                trains = train_data_of(population, chunk)
            yield chunk, trains  # outside the timer: the caller embeds while suspended
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="devicetune-generate") as pool:
        pending = pool.submit(_timed_train_data, population, chunks[0])
        for k, chunk in enumerate(chunks):
            with STAGES.timed("generate"):
                trains, seconds = pending.result()
            STAGES.add("generate" + OVERLAPPED, seconds)
            if k + 1 < len(chunks):
                pending = pool.submit(_timed_train_data, population, chunks[k + 1])
            yield chunk, trains


def _timed_train_data(population: Population, devices: list[int]
                      ) -> tuple[list[LabeledData], float]:
    start = time.perf_counter()
    trains = train_data_of(population, devices)
    return trains, time.perf_counter() - start


def _chunks(devices: list[int], population: Population, examples: int
            ) -> Iterable[list[int]]:
    """Consecutive groups of devices holding about ``examples`` training examples each
    (sizes guessed from the source's windows per device when it knows them).

    The first groups are smaller, from a quarter of the size growing by a quarter each:
    the main thread waits for the first one alone, and each next one, generated while
    the one before it is embedded, should be ready when that embedding ends.
    """
    per_device = getattr(population.source, "windows_per_device", 64)
    per_device = max(1, int(per_device * (1 - population.test_fraction)))
    full = max(1, examples // per_device)
    size, start = max(1, full // 4), 0
    while start < len(devices):
        yield devices[start:start + size]
        start += size
        size = min(full, max(size + 1, int(size * 1.25)))


def train_together(head: BatchedHead, features: list[np.ndarray], labels: list[np.ndarray],
                   devices: list[int], instructions: TrainInstructions, seed: int,
                   batch_size: int) -> np.ndarray:
    """Local epochs for every device at once, visiting each device's rows in the order
    its own artifact would (`handle_train`'s per-device, per-round generator).

    The head's devices are taken largest first, so a step trains only a prefix of
    them: the devices that still have rows (device sizes vary several-fold, and the
    padding steps of small devices would otherwise cost as much as real ones).
    """
    count = len(devices)
    sizes = np.array([len(y) for y in labels])
    order = np.argsort(-sizes, kind="stable")  # head row r is device order[r]
    sorted_sizes = sizes[order]
    steps = int(np.ceil(sorted_sizes[0] / batch_size))
    # Devices with rows at step s: those whose size exceeds s * batch_size (a prefix).
    active = [int(np.sum(sorted_sizes > s * batch_size)) for s in range(steps)]
    dim = features[0].shape[1]
    width = steps * batch_size
    # Every device's rows pooled once; each epoch gathers them in one fancy index.
    pooled_x = np.concatenate([features[i] for i in order])
    pooled_y = np.concatenate([labels[i] for i in order])
    offsets = np.concatenate([[0], np.cumsum(sorted_sizes)[:-1]])
    slots = (np.repeat(np.arange(count) * width, sorted_sizes)
             + np.arange(len(pooled_y)) - np.repeat(offsets, sorted_sizes))
    m = np.zeros((count, width), np.float32)
    m.reshape(-1)[slots] = 1.0
    classes = head.params[-1].shape[-1]
    # FedRS: each device's own classes, in head row order (as `train_locally` does).
    class_mask = (np.stack([present_classes(labels[i], classes) for i in order])
                  if instructions.class_mask else None)
    losses = np.zeros(count)
    for source in _visiting_orders(np.asarray(devices)[order], sorted_sizes, offsets,
                                   instructions, seed):
        x = np.zeros((count, width, dim), np.float32)
        y = np.zeros((count, width), np.int64)
        x.reshape(-1, dim)[slots] = pooled_x[source]
        y.reshape(-1)[slots] = pooled_y[source]
        total = np.zeros(count)
        for s in range(steps):
            k, rows = active[s], slice(s * batch_size, (s + 1) * batch_size)
            step_loss = head.step(x[:k, rows], y[:k, rows], m[:k, rows],
                                  None if class_mask is None else class_mask[:k])
            total[:k] += step_loss * m[:k, rows].sum(axis=1)
        losses = total / np.maximum(sorted_sizes, 1)
    inverse = np.empty(count, np.int64)
    inverse[order] = np.arange(count)
    head.params = [p[inverse] for p in head.params]  # back to the devices' order
    return losses[inverse]


def _visiting_orders(devices: np.ndarray, sizes: np.ndarray, offsets: np.ndarray,
                     instructions: TrainInstructions, seed: int) -> list[np.ndarray]:
    """Per epoch, the pooled rows in the order the devices visit them: device ``i``'s
    rows (``offsets[i]``, ``sizes[i]`` of them) shuffled by its own per-round stream,
    ``[seed, 8, round, device]``, one permutation per epoch, as `handle_train` draws."""
    streams = StreamSource()
    visits = [np.empty(int(sizes.sum()), np.int64) for _ in range(instructions.local_epochs)]
    for state, offset, n in zip(pcg64_states((seed, 8, instructions.server_round), devices),
                                offsets, sizes, strict=True):
        rng = streams.generator(state)
        for visit in visits:
            visit[offset:offset + n] = offset + rng.permutation(n)
    return visits
