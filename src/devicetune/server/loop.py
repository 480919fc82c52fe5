"""The federated round, written once against Flower's Grid and strategy interfaces.

Each round: sample devices through the strategy (``configure_train``), exchange
messages through the grid (in-process devices, the Simulation Engine or a SuperLink),
validate every reply, aggregate the valid ones with the strategy (``aggregate_train``),
and evaluate the new global model. The loop never knows where the devices are.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from devicetune.fleet.messages import (
    ARRAYS,
    METRICS,
    NUM_EXAMPLES,
    TrainInstructions,
    record_to_weights,
    weights_to_record,
)
from devicetune.fleet.round_updates import aggregates_by_weighted_mean
from devicetune.fleet.stages import STAGES
from devicetune.server.state import optimizer_state, restore_optimizer_state
from devicetune.server.strategies import set_sample_size
from devicetune.server.validation import update_problem

if TYPE_CHECKING:
    from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord

    from devicetune.fleet.round_updates import RoundUpdates
    from devicetune.server.acceptance import AcceptanceCheck
    from devicetune.server.private import PrivacyGuard, PrivateAggregation

log = logging.getLogger("devicetune.server")


class RoundGrid(Protocol):
    """What the loop needs of a grid: Flower's `Grid` sampling and exchange calls.

    A grid may also have ``begin_round(server_round[, sampling_rate=q])`` (freeze the
    round's online devices) and ``train_round(messages)`` (stacked updates); the loop
    looks for both. Implementations: the in-process grids (`devicetune.fleet.grid`),
    `FleetGrid` over a SuperLink, the HTTP gateway's and the hybrid of the two.
    """

    def get_node_ids(self) -> Iterable[int]: ...

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]: ...


class RoundStrategy(Protocol):
    """What the loop needs of a strategy: a `flwr.serverapp.strategy.Strategy`'s two
    training calls (`PrivateAggregation` wraps one and has them too)."""

    def configure_train(self, server_round: int, arrays: ArrayRecord,
                        config: ConfigRecord, grid: RoundGrid) -> Iterable[Message]: ...

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]: ...


Evaluate = Callable[[list[np.ndarray]], dict[str, Any]]


@dataclass
class RoundRecord:
    """One line of ``metrics.jsonl``."""

    round: int
    sampled: int
    completed: int
    dropped: int
    rejected: int
    global_accuracy: float | None
    mean_local_loss: float | None
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        row = {k: v for k, v in vars(self).items() if k != "extra"}
        row.update(self.extra)
        return row


@dataclass
class FederatedLoop:
    """Global weights and the strategy that updates them, one round at a time.

    Args:
        strategy: a configured `flwr.serverapp.strategy` object.
        names: the weight names of the artifact (``dense0_kernel``, ...).
        weights: the initial global weights.
        devices_per_round: devices to sample each round.
        instructions: what devices do locally (epochs, rate, proximal term, DP).
        max_update_norm: updates whose norm exceeds it are rejected.
        evaluate: the global model's metrics (``accuracy`` at least).
        seed: makes Flower's node sampling reproducible.
        round_timeout_s: how long the grid waits for replies.
        min_devices: valid updates a round needs to be aggregated (its quorum); below
            it the weights stay and the record says ``quorum: false``.
        privacy: a `PrivacyGuard` when user-level DP is on: the budget gate before a
            round, Poisson sampling of devices, the ledger after a released aggregate.
        accept: an `AcceptanceCheck`, ``(current, candidate) -> (commit?, accuracy)``:
            an aggregate it refuses is not committed (the record says ``accepted``).
        over_selection: sample this many times ``devices_per_round`` (a grid that
            closes a round at ``devices_per_round`` replies, the gateway's, then does
            not wait for the slowest devices); not under DP, which samples by coin flips.
    """

    strategy: RoundStrategy
    names: list[str]
    weights: list[np.ndarray]
    devices_per_round: int
    instructions: TrainInstructions
    max_update_norm: float
    evaluate: Evaluate
    seed: int = 0
    round_timeout_s: float | None = None
    min_devices: int = 1
    privacy: PrivacyGuard | None = None
    accept: AcceptanceCheck | None = None
    over_selection: float = 1.0
    # Per device that trained with DP-SGD: (steps so far, local examples).
    device_dp_steps: dict[int, tuple[int, int]] = field(default_factory=dict)

    def run_round(self, grid: RoundGrid, server_round: int, attempt: int = 0) -> RoundRecord:
        """One attempt at ``server_round`` (a retry, ``attempt`` > 0, samples afresh)."""
        from flwr.app import ConfigRecord

        start = time.perf_counter()
        sampling_rate = None
        if self.privacy is not None:
            self.privacy.before_round()  # raises PrivacyBudgetExceeded
            sampling_rate = self.privacy.sampling_rate
        if hasattr(grid, "begin_round"):
            if sampling_rate is None:
                grid.begin_round(server_round)
            else:
                grid.begin_round(server_round, sampling_rate=sampling_rate)
        online = len(list(grid.get_node_ids()))
        # Under DP the grid already chose the round's devices by Poisson sampling.
        wanted = math.ceil(self.devices_per_round * self.over_selection - 1e-9)
        set_sample_size(self.strategy, online if sampling_rate is not None
                        else min(wanted, online))
        # Flower samples with the `random` module; seed it per round for reproducibility.
        random.seed(hash((self.seed, server_round)) if attempt == 0
                    else hash((self.seed, server_round, attempt)))
        config = ConfigRecord({**self.instructions.to_config(), "server-round": server_round})
        messages = list(self.strategy.configure_train(
            server_round, weights_to_record(self.names, self.weights), config, grid)) \
            if online else []
        shards = 1
        if messages and hasattr(grid, "train_round") \
                and aggregates_by_weighted_mean(self.strategy):
            # A batched grid: updates stacked, one weighted-mean message per shard.
            updates = grid.train_round(messages)
            replied = updates.devices
            with STAGES.timed("validation"):
                updates, rejected, losses = self._validate_stacked(updates)
            completed, valid = updates.devices, updates.shard_messages()
            shards = len(updates.shards)
        else:
            replies = list(grid.send_and_receive(messages, timeout=self.round_timeout_s)) \
                if messages else []
            # A device that failed mid-round (an error reply) dropped out, as one that
            # never answered did.
            failed = [r for r in replies if r.has_error()]
            for reply in failed:
                log.info("device node %s dropped: %s", reply.metadata.src_node_id,
                         reply.error.reason)
            replies = [r for r in replies if not r.has_error()]
            replied = len(replies)
            with STAGES.timed("validation"):
                valid, rejected, losses = self._validate(replies)
            completed = len(valid)
        quorum = completed >= self.min_devices
        extra: dict[str, Any] = {} if quorum else {"quorum": False}
        if shards > 1:
            extra["shards"] = shards
        if valid and quorum:
            # What a refused round must not leave behind in a server optimiser.
            state = optimizer_state(self.strategy) if self.accept is not None else {}
            with STAGES.timed("aggregation"):
                arrays, _ = self.strategy.aggregate_train(server_round, valid)
            if arrays is not None:
                candidate = [w.astype(np.float32) for w in record_to_weights(arrays)[1]]
                if self.accept is not None:
                    with STAGES.timed("acceptance"):
                        accepted, score = self.accept(self.weights, candidate)
                    extra.update(accepted=accepted, server_accuracy=score)
                    if not accepted:
                        log.info("round %d: aggregate not committed (accuracy %.4f on "
                                 "the server's data)", server_round, score)
                        candidate = self.weights
                        self._rewind_server_optimizer(state)
                self.weights = candidate
                # Released (and judged) from the devices' updates: account it either way.
                if self.privacy is not None:
                    extra.update(self.privacy.after_round(server_round,
                                                          self._clip_norm()))
        with STAGES.timed("evaluation"):
            evaluation = self.evaluate(self.weights)
        return RoundRecord(
            round=server_round, sampled=len(messages), completed=completed,
            dropped=len(messages) - replied, rejected=rejected,
            global_accuracy=evaluation.get("accuracy"),
            mean_local_loss=float(np.mean(losses)) if losses else None,
            wall_s=round(time.perf_counter() - start, 4),
            extra=extra,
        )

    def _rewind_server_optimizer(self, state: dict[str, Any]) -> None:
        """A strategy that keeps the model it last produced (FedAvgM, FedAdam) goes back
        to the committed one, so its next pseudo-gradient is taken from there, and its
        momentum or moments to ``state``, as they were before the refused round."""
        inner: Any = getattr(self.strategy, "inner", self.strategy)
        if getattr(inner, "current_arrays", None) is not None:
            inner.current_arrays = weights_to_record(self.names, self.weights)
        restore_optimizer_state(self.strategy, state, exactly=True)

    @property
    def dp_aggregation(self) -> PrivateAggregation:
        """The strategy as DP-FedAvg, which it is while ``privacy`` is on."""
        from devicetune.server.private import PrivateAggregation

        assert isinstance(self.strategy, PrivateAggregation), "privacy is off"
        return self.strategy

    def _clip_norm(self) -> float:
        """The clip norm DP-FedAvg used this round."""
        return float(self.dp_aggregation.last["clip_norm"])

    def _validate_stacked(self, updates: RoundUpdates
                          ) -> tuple[RoundUpdates, int, list[float]]:
        """`_validate` for a grid's stacked `RoundUpdates`."""
        problems = updates.problems(self.names, self.weights, self.max_update_norm)
        for problem, device in zip(problems, updates.metrics["device-id"], strict=True):
            if problem is not None:
                log.warning("rejected the update of device %d: %s", int(device), problem)
        keep = np.array([p is None for p in problems], bool)
        if not keep.all():
            updates = updates.select(keep)
        metrics = updates.metrics
        if "dp-steps" in metrics:
            for device, steps_now, examples in zip(metrics["device-id"], metrics["dp-steps"],
                                                   metrics[NUM_EXAMPLES], strict=True):
                steps, _ = self.device_dp_steps.get(int(device), (0, 0))
                self.device_dp_steps[int(device)] = (steps + int(steps_now), int(examples))
        return updates, int((~keep).sum()), metrics["train-loss"].tolist()

    def _validate(self, replies: list[Message]) -> tuple[list[Message], int, list[float]]:
        valid, rejected, losses = [], 0, []
        for reply in replies:
            source = reply.metadata.src_node_id
            names, weights = record_to_weights(reply.content[ARRAYS])
            problem = update_problem(names, weights, self.names, self.weights,
                                     self.max_update_norm)
            if problem is not None:
                device: Any = reply.content[METRICS].get("device-id") \
                    if METRICS in reply.content.metric_records else None
                who = f"device {int(device)} (node {source})" if device is not None \
                    else f"node {source}"
                log.warning("rejected the update of %s: %s", who, problem)
                rejected += 1
                continue
            valid.append(reply)
            metrics: Any = reply.content[METRICS]  # Flower types its values loosely
            losses.append(float(metrics.get("train-loss", np.nan)))
            if "dp-steps" in metrics and "device-id" in metrics:
                device_id = int(metrics["device-id"])
                steps, _ = self.device_dp_steps.get(device_id, (0, 0))
                self.device_dp_steps[device_id] = (steps + int(metrics["dp-steps"]),
                                                int(metrics[NUM_EXAMPLES]))
        return valid, rejected, losses
