"""`ShardedGrid`: the vectorized engine with a round's devices split over Ray workers.

Each worker (a Ray actor, one per CPU of the cluster) holds its own `Population`,
LiteRT backbone and feature cache, and owns the devices whose id is its index modulo
the number of workers, so a device's features stay where they were computed. A round:
the driver samples devices and decides dropouts as the in-process grid does, sends each
worker its devices and the global weights, and each worker generates, embeds and
trains its devices as one batch (`VectorizedGrid.train_shard`) and returns their new
weights stacked. The loop validates every device's update and hands the strategy one
weighted-mean message per shard (`RoundUpdates`): the same aggregation as one process.
With DP-FedAvg (or a robust strategy) the strategy gets one message per device, so
clipping is per device and the noise is added once, after the sum.

Workers are fresh processes (no fork after TensorFlow); they get the driver's
`Population` (its data source) through Ray's object store, import devicetune and read
the artifacts from the same path, so on a cluster every machine needs the package
installed and the build folder at that path (and a file data source's path, if any).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Message

from devicetune.config import DevicetuneConfig
from devicetune.fleet.messages import ARRAYS, CONFIG, TrainInstructions, record_to_weights
from devicetune.fleet.population import Population
from devicetune.fleet.round_updates import RoundUpdates
from devicetune.fleet.stages import STAGES
from devicetune.fleet.vectorized import VectorizedGrid


class ShardWorker:
    """One Ray worker's devices: ``VectorizedGrid.train_shard`` on its own cache."""

    def __init__(self, config: DevicetuneConfig, population: Population, artifacts: str,
                 activations: list[str], dp: tuple[float, float], shard: int) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from devicetune.device.runtime import LiteRTDevice

        assert config.model is not None
        embedder = LiteRTDevice(Path(artifacts) / "model.tflite",
                                config.model.optimizer.learning_rate)
        self.grid = VectorizedGrid(population, embedder, activations,
                                   config.model.optimizer, dp=dp)
        self.grid.noise_key = (shard,)

    def train(self, server_round: int, devices: list[int], weights: list[np.ndarray],
              instructions: TrainInstructions
              ) -> tuple[list[np.ndarray], dict[str, np.ndarray], dict[str, float]]:
        """New weights and metrics of ``devices``, and this call's stage seconds."""
        self.grid.server_round = server_round
        before = STAGES.snapshot()
        weights, metrics = self.grid.train_shard(devices, weights, instructions)
        return weights, metrics, STAGES.since(before)


class ShardedGrid(VectorizedGrid):
    """A round's devices trained in shards on Ray workers.

    Args:
        config: the run's config (the model's optimizer; the population if none is given).
        artifacts: the build folder (read by every worker).
        data_dir: the datasets folder (for the population, when none is given).
        ray_address: a running Ray cluster (HEAD:PORT); None starts a local Ray.
        shards: workers to use; default one per CPU Ray reports.
        The rest as `VectorizedGrid` (``embedder`` is the driver's own, unused here).
    """

    def __init__(self, config: DevicetuneConfig, artifacts: Path, data_dir: Path, *,
                 embedder: Any, activations: list[str], ray_address: str | None = None,
                 shards: int | None = None, dp: tuple[float, float] = (1.0, 0.0),
                 population: Any = None, **kwargs: Any) -> None:
        import ray

        assert config.fleet is not None and config.model is not None
        population = population or Population.from_config(config.fleet, config.seed,
                                                          Path(data_dir))
        super().__init__(population, embedder, activations, config.model.optimizer,
                         dp=dp, **kwargs)
        self._started_ray = not ray.is_initialized()
        if self._started_ray:
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False,
                     num_cpus=None if ray_address else (shards or os.cpu_count() or 1))
        count = shards or max(1, int(ray.cluster_resources().get("CPU", 1)))
        worker = ray.remote(num_cpus=1)(ShardWorker)
        # The driver's population itself (its data source: synthetic, a dataset, a
        # team's data passed in Python), sent once to the object store.
        shared = ray.put(population)
        self.workers = [worker.remote(config, shared, str(Path(artifacts).resolve()),
                                      activations, dp, k) for k in range(count)]
        self.worker_stages: dict[str, float] = {}

    @property
    def shards(self) -> int:
        return len(self.workers)

    def train_round(self, messages: Iterable[Message]) -> RoundUpdates:
        import ray

        messages = list(messages)
        if not messages:
            return RoundUpdates.concatenate([])
        names, weights = record_to_weights(messages[0].content[ARRAYS])
        instructions = TrainInstructions.from_config(dict(messages[0].content[CONFIG]))
        devices: list[list[int]] = [[] for _ in self.workers]
        requests: list[list[Message]] = [[] for _ in self.workers]
        for device, message in self._staying(messages):
            devices[device % self.shards].append(device)
            requests[device % self.shards].append(message)
        busy = [k for k in range(self.shards) if devices[k]]
        shared = ray.put(list(weights))
        results = ray.get([self.workers[k].train.remote(self.server_round, devices[k],
                                                        shared, instructions)
                           for k in busy])
        for _, _, stages in results:
            for stage, seconds in stages.items():
                self.worker_stages[stage] = self.worker_stages.get(stage, 0.0) + seconds
        return self.collect(names, [(w, m) for w, m, _ in results],
                            [requests[k] for k in busy])

    def close(self) -> None:
        """Stop the workers (and the local Ray this grid started)."""
        import ray

        for worker in self.workers:
            ray.kill(worker)
        self.workers = []
        if self._started_ray:
            ray.shutdown()
