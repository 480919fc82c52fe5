"""`FleetGrid`: a Flower Grid seen through the fleet, for the server's round loop.

Flower addresses nodes; devicetune reasons about devices. Each SuperNode runs the
devicetune ClientApp as one simulated device and answers a ``query`` message with its
device id; the grid keeps that mapping, learns about nodes that connect later (a phone
coming online), and filters by simulated availability.

A device id is bound to the first node that claims it, and a later claimant is refused
and logged: a rogue SuperNode cannot take a device's place (and its weight) mid-run.
With SuperNode authentication (``server.device_keys``) the binding is known before any
node connects: each device's registered public key has its node id, and a node that
claims any other device is refused. A device that restarts keeps its node id because
it keeps its key; without keys a restarted device gets a new node and stays refused
until the server restarts. It also freezes the set of online devices for a round, so Flower's
sampling (which waits for as many nodes as it was told exist) never waits for a device
that left between counting and sampling.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from devicetune.fleet.messages import METRICS

log = logging.getLogger("devicetune.server")

QUERY_DEVICE = "device-id"
# Replies are polled at this interval (Flower's own grids sleep 3 s between polls,
# which would dominate a round of phones that train in well under a second). Each poll
# is a query of the SuperLink's SQLite state, which every SuperNode also writes to; at
# 0.2 s the ServerApp alone made 5 requests a second while 20 devices waited to write.
POLL_INTERVAL_S = 0.5


class FleetGrid:
    """Devices behind a Flower Grid (a SuperLink's, or the Simulation Engine's).

    Args:
        grid: the Grid Flower gave the ServerApp.
        population: the simulated fleet (availability per round).
        timeout_s: default reply timeout of `send_and_receive`.
    """

    def __init__(self, grid: Any, population: Any, timeout_s: float | None,
                 registered: dict[int, int] | None = None) -> None:
        self.grid = grid
        self.population = population
        self.timeout_s = timeout_s
        self.server_round = 0
        self.node_of: dict[int, int] = {}  # device id -> the node bound to it
        # device id -> node id of its registered key (SuperNode authentication)
        self.registered = dict(registered or {})
        self.refused: dict[int, int] = {}  # node -> the device it claimed and was refused
        self._pending: dict[str, int] = {}  # unanswered query message id -> node
        self._asked: set[int] = set()
        self._online: list[int] = []

    @property
    def run(self) -> Any:
        return self.grid.run

    # ------------------------------------------------------------------ discovery

    def discover(self, wait_s: float = 0.0) -> int:
        """Ask nodes not seen before which device they are; wait up to ``wait_s`` for
        the answers (a cold ClientApp loads its artifact and data first). Answers that
        come later are collected by the next call. Returns how many devices are known."""
        from flwr.app import Message, RecordDict

        new = [n for n in self.grid.get_node_ids() if n not in self._asked]
        if new:
            questions = [Message(RecordDict(), dst_node_id=node, message_type="query")
                         for node in new]
            ids = self.grid.push_messages(questions)
            self._asked.update(new)
            self._pending.update({i: n for i, n in zip(ids, new, strict=True) if i})
        deadline = time.monotonic() + wait_s
        while self._pending:
            for reply in self.grid.pull_messages(list(self._pending)):
                node = self._pending.pop(reply.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                if reply.has_error():
                    self._asked.discard(node)  # ask again next time
                    continue
                device = int(reply.content[METRICS][QUERY_DEVICE])
                self._bind(device, node)
            if not self._pending or time.monotonic() >= deadline:
                break
            time.sleep(POLL_INTERVAL_S)
        return len(self.node_of)

    def _bind(self, device: int, node: int) -> None:
        if self.node_of.get(device) == node:
            return
        owner = self.registered.get(device, self.node_of.get(device))
        if self.registered and device not in self.registered:
            owner = -1  # a device without a registered key: nobody may be it
        if owner in (None, node) and node not in self.node_of.values():
            self.node_of[device] = node
            return
        if self.refused.get(node) != device:
            self.refused[node] = device
            held = "has no registered key" if owner == -1 else f"is bound to node {owner}"
            log.warning("refused node %s: it claims device %d, which %s", node, device,
                        held)

    def wait_for_devices(self, needed: int, timeout_s: float) -> int:
        """Discover until ``needed`` devices are known and every connected node has
        answered, or ``timeout_s`` passes (a node that died after connecting never
        answers). Returns how many devices are known."""
        deadline = time.monotonic() + timeout_s
        while True:
            known = self.discover(wait_s=min(1.0, max(0.0, deadline - time.monotonic())))
            if (known >= needed and not self._pending) or time.monotonic() >= deadline:
                return known
            time.sleep(POLL_INTERVAL_S)

    def wait_until_online(self, needed: int, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for ``needed`` known devices to be connected (phones
        coming back before a round or its retry). Returns how many are."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.discover()
            connected = set(self.grid.get_node_ids())
            online = sum(1 for node in self.node_of.values() if node in connected)
            if online >= needed or time.monotonic() >= deadline:
                return online
            time.sleep(1.0)

    def device_of(self, node: int) -> int | None:
        for device, current in self.node_of.items():
            if current == node:
                return device
        return None

    # ------------------------------------------------------------------ the Grid API

    def begin_round(self, server_round: int, sampling_rate: float | None = None) -> None:
        """Fix which devices are online for this round: connected, known, available,
        and, with a ``sampling_rate`` (DP rounds), chosen by their coin flip, as the
        in-process grids do (`devicetune.fleet.grid.FleetGridBase`)."""
        import numpy as np

        self.server_round = server_round
        self.discover()
        connected = set(self.grid.get_node_ids())
        available = self.population.available(server_round)
        if sampling_rate is not None:
            available = np.intersect1d(
                available, self.population.poisson_sample(server_round, sampling_rate))
        self._online = [self.node_of[int(d)] for d in available
                        if int(d) in self.node_of and self.node_of[int(d)] in connected]

    def get_node_ids(self) -> list[int]:
        return list(self._online)

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> list[Any]:
        """Push ``messages`` and collect the replies that arrive within ``timeout``."""
        timeout = self.timeout_s if timeout is None else timeout
        ids = {i for i in self.grid.push_messages(list(messages)) if i}
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Any] = []
        while ids:
            got = list(self.grid.pull_messages(list(ids)))
            replies.extend(got)
            ids.difference_update(r.metadata.reply_to_message_id for r in got)
            if not ids or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(POLL_INTERVAL_S)
        return replies

    def push_messages(self, messages: Any) -> Any:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Any) -> Any:
        return self.grid.pull_messages(message_ids)
