"""`InlineGrid`: a Flower Grid whose nodes are simulated devices in this process.

Flower's strategies sample nodes and build messages through a Grid; this one answers
them by running each device's artifact right here, so the same strategy objects and
the same round loop drive the in-process engine, the Simulation Engine and real
SuperNodes. Availability decides which devices the grid reports as connected; a
device that drops out mid-round simply never replies, as over a real network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import Message
from flwr.serverapp import Grid

from devicetune.device.runtime import DeviceRuntime
from devicetune.fleet.features import FeatureCache
from devicetune.fleet.local_training import handle_train, training_data
from devicetune.fleet.population import Population
from devicetune.fleet.round_data import train_data_of

# Flower reserves small node ids for itself (the SuperLink is node 1).
NODE_ID_OFFSET = 1_000


def node_id(device_id: int) -> int:
    return device_id + NODE_ID_OFFSET


def device_id(node: int) -> int:
    return node - NODE_ID_OFFSET


class FleetGridBase(Grid):
    """A Grid over the devices of a `Population` in this process: which devices are
    online in a round, dropouts, stragglers. Subclasses answer `send_and_receive`.

    Args:
        population: the simulated fleet.
        round_timeout_s: a device whose simulated time exceeds it is a straggler and
            its reply is lost, as a server's timeout would lose it.
        on_device: called after each device finishes, for progress bars.
        cache: devices' training features kept across rounds (the backbone is frozen).
    """

    def __init__(self, population: Population, round_timeout_s: float = float("inf"),
                 on_device: Callable[[int], None] | None = None,
                 cache: FeatureCache | None = None) -> None:
        self.population = population
        self.cache = cache or FeatureCache()
        self.round_timeout_s = round_timeout_s
        self.on_device = on_device or (lambda _: None)
        self.server_round = 0
        self.sampling_rate: float | None = None
        self.dropped: list[int] = []
        _become_the_server_app()

    def begin_round(self, server_round: int, sampling_rate: float | None = None) -> None:
        """Availability and dropout are decided per round. With a ``sampling_rate`` the
        round's devices are chosen by independent coin flips (Poisson sampling, what
        DP accounting assumes) and all chosen devices online are sampled."""
        self.server_round = server_round
        self.sampling_rate = sampling_rate
        self.dropped = []

    def get_node_ids(self) -> Iterable[int]:
        online = self.population.available(self.server_round)
        if self.sampling_rate is not None:
            chosen = self.population.poisson_sample(self.server_round, self.sampling_rate)
            online = np.intersect1d(online, chosen)
        return [node_id(int(k)) for k in online]

    def _staying(self, messages: Iterable[Message]) -> list[tuple[int, Message]]:
        """``(device, message)`` of the devices that do not drop out mid-round (decided
        for the whole round at once); the others are recorded as dropped."""
        pairs = [(device_id(m.metadata.dst_node_id), m) for m in messages]
        leaves = self.population.dropouts([d for d, _ in pairs], self.server_round)
        for (device, _), gone in zip(pairs, leaves, strict=True):
            if gone:
                self.dropped.append(device)
                self.on_device(device)
        return [pair for pair, gone in zip(pairs, leaves, strict=True) if not gone]

    # The rest of the Grid interface talks to a SuperLink, which this grid has none of.
    def set_run(self, run: Any) -> None:
        self._run = run

    @property
    def run(self) -> Any:
        return getattr(self, "_run", None)

    def create_message(self, content: Any, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type,
                       group_id=group_id, ttl=ttl)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError(f"{type(self).__name__} answers in send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError(f"{type(self).__name__} answers in send_and_receive")


class InlineGrid(FleetGridBase):
    """Each device of a round runs its own artifact, one after another.

    Args:
        runtimes: one runtime per platform, shared by its devices (a device is its data
            and weights; the interpreter is reused). The rest as `FleetGridBase`.
    """

    def __init__(self, population: Population, runtimes: dict[str, DeviceRuntime],
                 **kwargs: Any) -> None:
        super().__init__(population, **kwargs)
        self.runtimes = runtimes

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for device, message in self._staying(messages):
            profile = self.population.profile(device)
            runtime = self.runtimes[profile.platform]
            compute = training_data(runtime,
                                    lambda d=device: train_data_of(self.population, [d])[0])
            reply = handle_train(
                message, runtime,
                lambda d=device, c=compute, p=profile.platform: self.cache.fetch((p, d), c),
                profile, self.population.seed)
            self.on_device(device)
            if reply.content["metrics"]["device-seconds"] > self.round_timeout_s:
                self.dropped.append(device)
                continue
            replies.append(reply)
        return replies


def _become_the_server_app(run_id: int = 1) -> None:
    """Give this process the task identity Flower sets for a ServerApp (messages carry
    it), as Flower's own compat runner does, unless a real runtime already set one."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    if TaskIdentity._run_id is None:
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = run_id
        TaskIdentity.node_id = SUPERLINK_NODE_ID
