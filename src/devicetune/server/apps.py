"""The devicetune Flower apps: a ServerApp that runs the round loop, a ClientApp that is
one simulated device.

The same two apps run under Flower's Simulation Engine (``--engine flower``), under
``flwr run`` (pyproject's ``[tool.flwr.app]``), and as real SuperLink/SuperNode
processes (``devicetune serve`` / ``devicetune device``). Their settings come from the
factory that made them or, for ``flwr run``, from the run config: ``config`` (a
devicetune TOML), ``artifacts`` (a build folder), ``data`` (the datasets folder) and
``out`` (where the server writes its run folder).

A ClientApp learns which device it is from its node config: ``device-id`` (SuperNodes
started by ``devicetune device``) or ``partition-id`` (the Simulation Engine).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from devicetune.fleet.messages import METRICS

QUERY_DEVICE = "device-id"
DROPPED_OUT = "dropped out mid-round"


@dataclass(frozen=True)
class AppSettings:
    """Where the apps find their config, artifacts and data, and write results."""

    config: Path
    artifacts: Path
    data_dir: Path
    out_dir: Path

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> AppSettings:
        from devicetune.config import resolve_data_dir
        from devicetune.errors import ConfigError

        missing = [k for k in ("config", "artifacts") if not run_config.get(k)]
        if missing:
            raise ConfigError(f"the Flower run config lacks {', '.join(missing)}; set them "
                              "in [tool.flwr.app.config] or with --run-config")
        return cls(config=Path(str(run_config["config"])),
                   artifacts=Path(str(run_config["artifacts"])),
                   data_dir=resolve_data_dir(run_config.get("data") or None),
                   out_dir=Path(str(run_config.get("out") or "runs/flower")))

    def to_run_config(self) -> dict[str, str]:
        return {"config": str(self.config), "artifacts": str(self.artifacts),
                "data": str(self.data_dir), "out": str(self.out_dir)}


# ----------------------------------------------------------------------------- device


@dataclass
class _DeviceSide:
    """What a process hosting devices loads once: config, population, runtimes."""

    config: Any
    population: Any
    runtimes: dict[str, Any]
    cache: Any


@cache
def _device_side(settings: AppSettings) -> _DeviceSide:
    from devicetune.config import load_config
    from devicetune.fleet.features import FeatureCache
    from devicetune.fleet.population import Population
    from devicetune.fleet.simulate import open_runtimes

    config = load_config(settings.config)
    config.require("model", "fleet", command="the devicetune ClientApp")
    population = Population.from_config(config.fleet, config.seed, settings.data_dir)
    rate = config.fleet.learning_rate or config.model.optimizer.learning_rate
    return _DeviceSide(config, population,
                       open_runtimes(settings.artifacts, config.fleet.platform_mix, rate),
                       FeatureCache())


def _device_id(context: Any) -> int:
    node_config = context.node_config
    for key in ("device-id", "partition-id"):
        if key in node_config:
            return int(node_config[key])
    from devicetune.errors import ConfigError

    raise ConfigError("this SuperNode has no device-id in its node config; start it with "
                      "`devicetune device CONFIG --device-id K`")


def make_client_app(settings: AppSettings | None = None) -> Any:
    """A ClientApp whose every node is one simulated device of the fleet."""
    from flwr.app import Error, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    from devicetune.fleet.local_training import handle_train, training_data

    app = ClientApp()

    def side(context: Any) -> _DeviceSide:
        return _device_side(settings or AppSettings.from_run_config(dict(context.run_config)))

    @app.train()
    def train(message: Message, context: Any) -> Message:
        device = side(context)
        device_id = _device_id(context)
        server_round = int(message.content["config"].get("server-round", 0))
        if device.population.drops_out(device_id, server_round):
            # The phone went offline: the server hears nothing useful from it.
            return Message(Error(code=0, reason=DROPPED_OUT), reply_to=message)
        profile = device.population.profile(device_id)
        runtime = device.runtimes[profile.platform]
        compute = training_data(runtime, lambda: device.population.local_data(device_id))
        return handle_train(
            message, runtime,
            lambda: device.cache.fetch((profile.platform, device_id), compute),
            profile, device.population.seed)

    @app.query()
    def query(message: Message, context: Any) -> Message:
        side(context)  # load artifacts and data now, before the first round
        reply = RecordDict({METRICS: MetricRecord({QUERY_DEVICE: _device_id(context)})})
        return Message(reply, reply_to=message)

    return app


# ----------------------------------------------------------------------------- server


class FleetGrid:
    """A Flower Grid seen through the fleet: which node is which device, and which
    devices are online in a round (availability), for the round loop."""

    def __init__(self, grid: Any, population: Any, timeout_s: float | None) -> None:
        self.grid = grid
        self.population = population
        self.timeout_s = timeout_s
        self.server_round = 0
        self.node_of = self._discover()

    def _discover(self) -> dict[int, int]:
        from flwr.app import Message, RecordDict

        nodes = list(self.grid.get_node_ids())
        questions = [Message(RecordDict(), dst_node_id=node, message_type="query")
                     for node in nodes]
        node_of = {}
        for reply in self.grid.send_and_receive(questions, timeout=self.timeout_s):
            if not reply.has_error():
                device = int(reply.content[METRICS][QUERY_DEVICE])
                node_of[device] = reply.metadata.src_node_id
        return node_of

    def begin_round(self, server_round: int) -> None:
        self.server_round = server_round

    def get_node_ids(self) -> list[int]:
        online = self.population.available(self.server_round)
        return [self.node_of[int(d)] for d in online if int(d) in self.node_of]

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        return self.grid.send_and_receive(messages, timeout=timeout or self.timeout_s)


def run_server(grid: Any, settings: AppSettings) -> list[np.ndarray]:
    """Run every configured round over ``grid``; write metrics and the final weights
    into ``settings.out_dir``; return the final weights."""
    from devicetune.config import load_config
    from devicetune.fleet.messages import TrainInstructions
    from devicetune.fleet.population import Population
    from devicetune.fleet.simulate import global_evaluator, open_runtimes, quiet_flower
    from devicetune.server.loop import FederatedLoop
    from devicetune.server.strategies import make_strategy

    quiet_flower()
    config = load_config(settings.config)
    config.require("model", "fleet", command="the devicetune ServerApp")
    population = Population.from_config(config.fleet, config.seed, settings.data_dir)
    rate = config.fleet.learning_rate or config.model.optimizer.learning_rate
    reference = next(iter(open_runtimes(settings.artifacts, {"android": 1.0}, rate).values()))
    evaluate = global_evaluator(config, population, reference, settings.data_dir)
    loop = FederatedLoop(
        strategy=make_strategy(config.server), names=reference.weight_names,
        weights=reference.get_weights(), devices_per_round=config.server.devices_per_round,
        instructions=TrainInstructions(0, config.fleet.local_epochs, rate,
                                       config.server.proximal_mu,
                                       config.privacy.device.enabled),
        max_update_norm=config.server.max_update_norm, evaluate=evaluate, seed=config.seed,
        round_timeout_s=config.server.round_timeout_s,
    )
    fleet_grid = FleetGrid(grid, population, config.server.round_timeout_s)
    settings.out_dir.mkdir(parents=True, exist_ok=True)
    metrics = settings.out_dir / "metrics.jsonl"
    metrics.write_text("")
    for server_round in range(1, config.server.rounds + 1):
        record = loop.run_round(fleet_grid, server_round)
        with metrics.open("a") as handle:
            handle.write(json.dumps(record.to_dict()) + "\n")
    np.savez(settings.out_dir / "global_weights.npz",
             **dict(zip(loop.names, loop.weights, strict=True)))
    return loop.weights


def make_server_app(settings: AppSettings | None = None) -> Any:
    """A ServerApp running devicetune's round loop over whatever grid Flower gives it."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        run_server(grid, settings or AppSettings.from_run_config(dict(context.run_config)))

    return app


# For `flwr run`: settings come from [tool.flwr.app.config] / --run-config.
server_app = make_server_app()
client_app = make_client_app()
