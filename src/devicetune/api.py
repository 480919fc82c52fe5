"""The three jobs for Python callers: `build`, `simulate`, `report`.

The same as the CLI commands, for a team's notebooks and pipelines: a config is a file
path, a mapping, or a `DevicetuneConfig`; data can be given as arrays
(`LabeledData.from_arrays`) or as any `DeviceDataSource`. This is an edge, like the
CLI, so it is where the data folder is resolved from the environment.

Example::

    data = devicetune.LabeledData.from_arrays(x, y, user, time=t)
    config = devicetune.parse_config({...})
    devicetune.build(config, "out/build", pretrain_data=data)
    result = devicetune.simulate(config, "out/run", data=data, artifacts="out/build")
    devicetune.report("out/run")
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from devicetune.config import DevicetuneConfig, load_config, parse_config, resolve_data_dir
from devicetune.data.labeled import LabeledData
from devicetune.data.sources import FleetInput

if TYPE_CHECKING:
    from devicetune.export.build import BuildResult
    from devicetune.fleet.simulate import Progress, SimulationResult
    from devicetune.report.write import Report

ConfigLike = DevicetuneConfig | Mapping[str, Any] | str | os.PathLike[str]


def build(config: ConfigLike, out: str | os.PathLike[str], *,
          data_dir: str | os.PathLike[str] | None = None,
          pretrain_data: LabeledData | None = None,
          fleet_data: FleetInput | None = None) -> BuildResult:
    """Build the TFLite and Core ML models an app ships (`devicetune build`).

    Args:
        config: a TOML path, a mapping of its sections, or a `DevicetuneConfig`.
        out: the folder to write (model.tflite, Model.mlmodel, manifest, parity.json).
        data_dir: the shared datasets folder (default: ``$DEVICETUNE_DATA`` or the
            per-user folder `devicetune data download` writes).
        pretrain_data: arrays to pretrain on (``[model.backbone.pretrain]`` sets epochs).
        fleet_data: the fleet's data; parity checks run on its rows when nothing is
            pretrained.

    Raises:
        DevicetuneError: a config, data or export problem, in one readable line.
    """
    from devicetune.export.build import build as build_artifacts

    return build_artifacts(as_config(config), Path(out), resolve_data_dir(data_dir),
                           pretrain_data=pretrain_data, fleet_data=fleet_data)


def simulate(config: ConfigLike, out: str | os.PathLike[str], *,
             data: FleetInput | None = None, pretrain_data: LabeledData | None = None,
             artifacts: str | os.PathLike[str] | None = None, engine: str = "inline",
             data_dir: str | os.PathLike[str] | None = None,
             progress: Progress | None = None) -> SimulationResult:
    """Simulate the fleet federating and personalising the artifacts (`devicetune
    simulate`).

    Args:
        data: the fleet's data instead of ``[fleet.data]``: a `LabeledData` (split as
            ``partition`` says) or any `DeviceDataSource`.
        pretrain_data: arrays to pretrain on when building.
        artifacts: a build folder to run (default: build into ``out/artifacts``).
        engine: "inline", "vectorized" or "flower" (not with ``data``).

    Raises:
        DevicetuneError: a config, data or export problem, in one readable line.
    """
    from devicetune.fleet.simulate import simulate as run_simulation

    return run_simulation(as_config(config), Path(out), resolve_data_dir(data_dir),
                          engine=engine, artifacts=None if artifacts is None
                          else Path(artifacts), progress=progress, data=data,
                          pretrain_data=pretrain_data)


def report(run_dir: str | os.PathLike[str]) -> Report:
    """Write report.html and its plots into a simulate or serve run folder."""
    from devicetune.report.write import write_report

    return write_report(run_dir)


def as_config(config: ConfigLike) -> DevicetuneConfig:
    """A `DevicetuneConfig` from a path, a mapping, or itself."""
    if isinstance(config, DevicetuneConfig):
        return config
    if isinstance(config, Mapping):
        return parse_config(dict(config))
    return load_config(config)
