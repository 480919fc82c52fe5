"""`GatewayGrid`: HTTP devices (and SuperNodes) behind one Flower-style Grid.

The round loop (`devicetune.server.loop.FederatedLoop`) samples nodes and exchanges
messages through a grid; this one gives it the gateway's waiting devices as nodes
beside the SuperNodes of a `FleetGrid`, so the loop, Flower's strategies, validation,
DP-FedAvg, the ledger, the budget gate and emission run unchanged.

A train message to an HTTP device becomes a task the device receives at its next
check-in; its report becomes the reply message, as a SuperNode's would. A round
over-selects (the loop samples ``devices_per_round`` x ``over_selection``) and closes
when ``target`` replies are in or at the deadline, whichever is first (Bonawitz et al.
2019, section 2.2); under DP every Poisson-chosen device is waited for until the
deadline, so the accounting's sampling is what happened.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from devicetune.fleet.messages import ARRAYS, CONFIG, record_to_weights, train_reply
from devicetune.server.fleet_grid import POLL_INTERVAL_S, FleetGrid
from devicetune.server.gateway import Gateway

log = logging.getLogger("devicetune.server")

# HTTP device k is node GATEWAY_NODE_BASE + k (told apart from SuperNodes, whose ids
# are random 64-bit numbers, by the round's set of gateway nodes) and
# device GATEWAY_DEVICE_BASE + k in metrics (simulated devices are 0..devices-1).
GATEWAY_NODE_BASE = 1 << 62
GATEWAY_DEVICE_BASE = 1_000_000_000


class GatewayGrid:
    """The gateway's devices and, optionally, a `FleetGrid`'s SuperNodes.

    Args:
        gateway: the shared state the HTTP handlers write.
        inner: the SuperNodes' grid (None: HTTP devices only).
        target: replies that close a round early (``devices_per_round``).
        timeout_s: a round's deadline, from its start.
        seed: Poisson sampling of HTTP devices under DP (None: the OS's entropy).
    """

    def __init__(self, gateway: Gateway, inner: FleetGrid | None, target: int,
                 timeout_s: float, seed: int | None = None) -> None:
        self.gateway = gateway
        self.inner = inner
        self.target = target
        self.timeout_s = timeout_s
        self.server_round = 0
        self.sampling_rate: float | None = None
        self._online: list[int] = []
        self._rng = np.random.default_rng(seed)

    @property
    def node_of(self) -> dict[int, int]:
        """Known devices -> their nodes (SuperNodes bound, HTTP devices enrolled)."""
        known = dict(self.inner.node_of) if self.inner is not None else {}
        known.update({GATEWAY_DEVICE_BASE + k: GATEWAY_NODE_BASE + k
                      for k in list(self.gateway.devices)})
        return known

    # ------------------------------------------------------------------ waiting

    def _online_now(self) -> int:
        supernodes = 0
        if self.inner is not None:
            self.inner.discover()
            connected = set(self.inner.grid.get_node_ids())
            supernodes = sum(1 for n in self.inner.node_of.values() if n in connected)
        return supernodes + len(self.gateway.waiting())

    def wait_for_devices(self, needed: int, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for the SuperNodes (``needed``, at most the fleet's
        ``devices``: the simulated devices SuperNodes play) to join, then for
        ``needed`` devices of either kind to be online."""
        deadline = time.monotonic() + timeout_s
        if self.inner is not None:
            self.inner.wait_for_devices(min(needed, self.inner.population.devices),
                                        timeout_s)
        return self.wait_until_online(needed, max(0.0, deadline - time.monotonic()))

    def wait_until_online(self, needed: int, timeout_s: float) -> int:
        deadline = time.monotonic() + timeout_s
        while True:
            online = self._online_now()
            if online >= needed or time.monotonic() >= deadline:
                return online
            time.sleep(POLL_INTERVAL_S)

    # ------------------------------------------------------------------ the Grid API

    def begin_round(self, server_round: int, sampling_rate: float | None = None) -> None:
        """Freeze the round's online devices: the SuperNodes `FleetGrid` picks and the
        gateway's pool (each by a coin flip with ``sampling_rate`` under DP)."""
        self.server_round = server_round
        self.sampling_rate = sampling_rate
        if self.inner is not None:
            self.inner.begin_round(server_round, sampling_rate=sampling_rate)
        waiting = self.gateway.waiting()
        if sampling_rate is not None:
            waiting = [k for k in waiting if self._rng.random() < sampling_rate]
        self._online = [GATEWAY_NODE_BASE + k for k in waiting]

    def get_node_ids(self) -> list[int]:
        inner = list(self.inner.get_node_ids()) if self.inner is not None else []
        return inner + self._online

    def send_and_receive(self, messages: Iterable[Any], *, timeout: float | None = None
                         ) -> list[Any]:
        """Send to both kinds of device; collect replies until every device answered,
        ``target`` did (outside DP), or the deadline."""
        timeout = self.timeout_s if timeout is None else timeout
        deadline = time.monotonic() + timeout
        messages = list(messages)
        gateway_nodes = set(self._online)  # SuperNode ids are random 64-bit numbers
        ours = [m for m in messages if m.metadata.dst_node_id in gateway_nodes]
        theirs = [m for m in messages if m.metadata.dst_node_id not in gateway_nodes]
        pending: set[str] = set()
        if theirs and self.inner is not None:
            pending = {i for i in self.inner.grid.push_messages(theirs) if i}
        if ours:
            self._offer(ours, time.time() + timeout)
        expected = len(pending) + len(ours)
        close_at = expected if self.sampling_rate is not None else min(self.target, expected)
        replies: list[Any] = []
        next_poll = time.monotonic()
        try:
            while True:
                if ours:
                    with self.gateway.arrived:
                        self.gateway.arrived.wait(timeout=min(POLL_INTERVAL_S, max(
                            0.0, deadline - time.monotonic())))
                        reports = self.gateway.take_reports()
                    replies.extend(self._reply(task, weights, metrics)
                                   for task, weights, metrics in reports)
                elif pending:
                    time.sleep(max(0.0, min(next_poll, deadline) - time.monotonic()))
                if pending and time.monotonic() >= next_poll:
                    got = list(self.inner.grid.pull_messages(list(pending)))  # type: ignore[union-attr]
                    replies.extend(got)
                    pending.difference_update(r.metadata.reply_to_message_id for r in got)
                    next_poll = time.monotonic() + POLL_INTERVAL_S
                closed = ours and self.gateway.round is not None and \
                    time.time() >= self.gateway.round.deadline  # closed by the gateway
                if len(replies) >= close_at or time.monotonic() >= deadline or closed:
                    break
        finally:
            if ours:
                self.gateway.close_round()
        return replies

    def _offer(self, messages: list[Any], deadline: float) -> None:
        from devicetune.server.weights_file import write_weights

        names, weights = record_to_weights(messages[0].content[ARRAYS])
        start = dict(zip(names, weights, strict=True))
        self.gateway.open_round(self.server_round, deadline, start, write_weights(start))
        for message in messages:
            instructions = dict(message.content[CONFIG])
            self.gateway.assign(message.metadata.dst_node_id - GATEWAY_NODE_BASE, message,
                                instructions)

    def _reply(self, task: Any, weights: dict[str, np.ndarray],
               metrics: dict[str, float]) -> Any:
        names = self.gateway.names
        # The keys a SuperNode's reply has (Flower aggregates only replies that agree):
        # the time from task to report stands for the device's compute time.
        seconds = max(0.0, task.reported_at - task.assigned_at)
        metrics = {**metrics, "device-id": GATEWAY_DEVICE_BASE + task.device,
                   "compute-seconds": seconds, "device-seconds": seconds}
        if task.instructions.get("private"):
            metrics.setdefault("dp-steps", 0)
        else:
            metrics.pop("dp-steps", None)
        return train_reply(task.message, names, [weights[n] for n in names], metrics)

    # The rest of Flower's Grid, for strategies that call it.
    def push_messages(self, messages: Any) -> Any:
        assert self.inner is not None
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Any) -> Any:
        assert self.inner is not None
        return self.inner.pull_messages(message_ids)

    @property
    def run(self) -> Any:
        return self.inner.run if self.inner is not None else None


def start_gateway(config: Any, out: Path, artifacts: Path, names: list[str],
                  inner: FleetGrid) -> tuple[GatewayGrid, Any]:
    """Serve protocol v1 on ``server.host:server.gateway.port`` (TLS with the server's
    certificate unless ``server.insecure``) and return the grid over both kinds of
    device, and the HTTP server to stop at the end."""
    import math

    from devicetune.server.gateway import read_enrollment_token
    from devicetune.server.gateway_api import GatewayServer, create_gateway_app

    server, settings = config.server, config.server.gateway
    slots = math.ceil(server.devices_per_round * settings.over_selection)
    gateway = Gateway(out, read_enrollment_token(settings.enrollment_token_file), names,
                      server.max_update_norm, settings.checkin_interval_s, slots)
    app = create_gateway_app(gateway, artifacts, max_report_bytes=settings.max_report_bytes)
    tls = {} if server.insecure else {"certificate": server.server_certificate,
                                      "private_key": server.server_private_key}
    http = GatewayServer(app, host=server.host, port=settings.port, **tls).start()
    log.info("device gateway on %s (%d devices enrolled)", http.url, len(gateway.devices))
    return GatewayGrid(gateway, inner, server.devices_per_round, server.round_timeout_s), http
