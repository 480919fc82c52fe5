"""Devices that misbehave, for tests only: each trains honestly on its own data through
its artifact, then corrupts what it sends as its fault says.

- ``nan``: one weight becomes NaN (a diverged step).
- ``shape``: a bias one element too long (a stale app).
- ``norm``: an update 1000 times the server's norm bound (a broken or hostile phone).
- ``flip``: the update sign-flipped and scaled by `FLIP_SCALE`, still within the norm
  bound, so only robust aggregation can resist it (a model-poisoning attacker).

`client_app` is a real ClientApp (SuperNodes run it; the fault comes from the node
config key ``fault``); `AttackGrid` is the in-process grid with the same devices.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from devicetune.fleet.grid import InlineGrid, device_id
from devicetune.fleet.messages import ARRAYS, record_to_weights, weights_to_record

FLIP_SCALE = 8.0


def corrupt(fault: str, start: list[np.ndarray], new: list[np.ndarray],
            max_update_norm: float) -> list[np.ndarray]:
    """The weights a faulty device sends instead of ``new``."""
    new = [w.copy() for w in new]
    if fault == "nan":
        new[0].flat[0] = np.nan
    elif fault == "shape":
        new[-1] = np.zeros(new[-1].size + 1, np.float32)
    elif fault == "norm":
        delta = [n - s for n, s in zip(new, start, strict=True)]
        norm = float(np.sqrt(sum(np.sum(d.astype(np.float64) ** 2) for d in delta))) or 1.0
        new = [(s + d * (1000 * max_update_norm / norm)).astype(np.float32)
               for s, d in zip(start, delta, strict=True)]
    elif fault == "flip":
        new = [(s - FLIP_SCALE * (n - s)).astype(np.float32)
               for s, n in zip(start, new, strict=True)]
    else:
        raise ValueError(f"unknown fault {fault!r}")
    return new


def _corrupt_reply(request: Any, reply: Any, fault: str, max_update_norm: float) -> None:
    _, start = record_to_weights(request.content[ARRAYS])
    names, new = record_to_weights(reply.content[ARRAYS])
    reply.content[ARRAYS] = weights_to_record(names, corrupt(fault, start, new, max_update_norm))


class AttackGrid(InlineGrid):
    """The in-process grid, with ``faults`` (device id -> fault) corrupting replies."""

    def __init__(self, *args: Any, faults: dict[int, str], max_update_norm: float,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.faults, self.max_update_norm = faults, max_update_norm

    def send_and_receive(self, messages: Iterable[Any], *,
                         timeout: float | None = None) -> list[Any]:
        messages = list(messages)
        requests = {m.metadata.dst_node_id: m for m in messages}
        replies = list(super().send_and_receive(messages, timeout=timeout))
        for reply in replies:
            fault = self.faults.get(device_id(reply.metadata.src_node_id))
            if fault:
                _corrupt_reply(requests[reply.metadata.src_node_id], reply, fault,
                               self.max_update_norm)
        return replies


def _make_client_app() -> Any:
    from flwr.clientapp import ClientApp

    from devicetune.server.apps import make_client_app

    honest = make_client_app()

    def misbehave(message: Any, context: Any, call_next: Any) -> Any:
        reply = call_next(message, context)
        fault = str(context.node_config.get("fault", ""))
        if message.metadata.message_type == "train" and fault and not reply.has_error():
            bound = float(context.node_config.get("max-update-norm", 100.0))
            _corrupt_reply(message, reply, fault, bound)
        return reply

    app = ClientApp(mods=[misbehave])

    @app.train()
    def train(message: Any, context: Any) -> Any:
        return honest(message, context)

    @app.query()
    def query(message: Any, context: Any) -> Any:
        return honest(message, context)

    return app


client_app = _make_client_app()
