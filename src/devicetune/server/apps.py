"""The devicetune Flower apps: a ServerApp that runs the round loop, a ClientApp that is
one simulated device.

The same two apps run under Flower's Simulation Engine (``--engine flower``), under
``flwr run`` (pyproject's ``[tool.flwr.app]``), and as real SuperLink/SuperNode
processes (``devicetune serve`` / ``devicetune device``). Their settings come from the
factory that made them or, for ``flwr run``, from the run config: ``config`` (a
devicetune TOML), ``artifacts`` (a build folder), ``data`` (the datasets folder) and
``out`` (where the server writes its run folder), ``resume`` (continue from the
state committed in ``out``) and ``rounds`` (overrides ``server.rounds``; 0 keeps it).

A ClientApp learns which device it is from its node config: ``device-id`` (SuperNodes
started by ``devicetune device``) or ``partition-id`` (the Simulation Engine). A
SuperNode's node config may also name its own ``config``, ``artifacts`` and ``data``,
which take precedence over the run config (a device on another machine has its own
paths). Train messages of a SecAgg+ round go through `devicetune.server.secagg`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

from devicetune.fleet.messages import METRICS
from devicetune.server.fleet_grid import QUERY_DEVICE

DROPPED_OUT = "dropped out mid-round"


@dataclass(frozen=True)
class AppSettings:
    """Where the apps find their config, artifacts and data, and write results."""

    config: Path
    artifacts: Path
    data_dir: Path
    out_dir: Path
    resume: bool = False
    serve_pid: int = 0  # the `devicetune serve` process to live and die with (0: none)
    rounds: int = 0  # overrides server.rounds (0: the config's), e.g. --run-config rounds=5

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
                   out_dir=Path(str(run_config.get("out") or "runs/flower")),
                   resume=bool(run_config.get("resume", False)),
                   serve_pid=int(run_config.get("serve-pid", 0)),
                   rounds=_rounds(run_config.get("rounds", 0)))

    def configured(self, config: Any) -> Any:
        """``config`` with this run's overrides (``rounds``) applied."""
        if not self.rounds:
            return config
        return config.model_copy(update={
            "server": config.server.model_copy(update={"rounds": self.rounds})})

    def to_run_config(self) -> dict[str, str | bool | int]:
        return {"config": str(self.config), "artifacts": str(self.artifacts),
                "data": str(self.data_dir), "out": str(self.out_dir), "resume": self.resume,
                "rounds": self.rounds}

    def for_node(self, node_config: dict[str, Any]) -> AppSettings:
        """These settings with a SuperNode's own ``config``/``artifacts``/``data``."""
        from devicetune.config import resolve_data_dir

        own = {k: node_config.get(k) for k in ("config", "artifacts", "data")}
        return replace(
            self, config=Path(str(own["config"])) if own["config"] else self.config,
            artifacts=Path(str(own["artifacts"])) if own["artifacts"] else self.artifacts,
            data_dir=resolve_data_dir(str(own["data"])) if own["data"] else self.data_dir)


def _rounds(value: Any) -> int:
    from devicetune.errors import ConfigError

    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100_000:
        raise ConfigError(f"run config rounds = {value!r}: give a whole number of rounds "
                          "(0 keeps the devicetune config's server.rounds)")
    return value


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
    from devicetune.device.runtime import open_runtimes
    from devicetune.fleet.features import FeatureCache
    from devicetune.fleet.population import Population

    config = load_config(settings.config)
    config.require("model", "fleet", command="the devicetune ClientApp")
    population = Population.from_config(config.fleet, config.seed, settings.data_dir,
                                        class_names=config.model.classes)
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
    from devicetune.fleet.round_data import train_data_of
    from devicetune.server.secagg import is_secagg_train, secagg_when_asked, train_for_secagg

    app = ClientApp(mods=[secagg_when_asked])

    def side(context: Any) -> _DeviceSide:
        base = settings or AppSettings.from_run_config(dict(context.run_config))
        return _device_side(base.for_node(dict(context.node_config)))

    @app.train()
    def train(message: Message, context: Any) -> Message:
        if is_secagg_train(message):
            names = next(iter(side(context).runtimes.values())).weight_names
            return train_for_secagg(message, names, lambda plain: train_plain(plain, context))
        return train_plain(message, context)

    def train_plain(message: Message, context: Any) -> Message:
        device = side(context)
        device_id = _device_id(context)
        server_round = int(message.content["config"].get("server-round", 0))
        if device.population.drops_out(device_id, server_round):
            # The phone went offline: the server hears nothing useful from it.
            return Message(Error(code=0, reason=DROPPED_OUT), reply_to=message)
        profile = device.population.profile(device_id)
        runtime = device.runtimes[profile.platform]
        compute = training_data(
            runtime, lambda: train_data_of(device.population, [device_id])[0])
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


def make_server_app(settings: AppSettings | None = None) -> Any:
    """A ServerApp running devicetune's round loop over whatever grid Flower gives it."""
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        from devicetune.errors import DevicetuneError
        from devicetune.server.federation import run_server

        try:
            chosen = settings or AppSettings.from_run_config(dict(context.run_config))
            if settings is None:  # `flwr run` or `serve`: check the build before running
                from devicetune.artifacts.manifest import check_artifacts

                check_artifacts(chosen.artifacts)
            # Made for `flwr run` or `serve` (no settings): its stream gets each round.
            run_server(grid, chosen, announce=settings is None)
        except DevicetuneError as exc:
            if settings is not None:
                raise
            # One line a user can act on; then the run must fail (`flwr ls`: failed),
            # which takes an exception (a SystemExit would be recorded as completed).
            import sys

            line = f"error: {' '.join(str(exc).split())}"
            print(line, file=sys.stderr, flush=True)
            raise RuntimeError(line) from None

    return app


# For `flwr run`: settings come from [tool.flwr.app.config] / --run-config.
server_app = make_server_app()
client_app = make_client_app()
