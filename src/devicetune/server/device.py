"""`devicetune device`: one simulated phone as a Flower SuperNode.

The command checks its arguments (device id within the fleet, ``HOST:PORT``, the TLS
CA file unless ``insecure``, the artifacts if given), then becomes ``flower-supernode``
(exec), so that the process a user starts, and may kill, is the SuperNode itself. Its
node config tells the devicetune ClientApp which device it is and which config (and,
optionally, artifacts and data) to use; Flower keeps the app bundle in a home of the
device's own (`devicetune.server.processes.device_flwr_home`). The SuperNode exits,
with a line saying why, once its SuperLink has not answered for ``--patience-s``
seconds: the federation finished (it had answered before) or none came.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def device_argv(config_path: Path, superlink: str, device_id: int,
                artifacts: Path | None = None, data_dir: Path | None = None,
                auth_key: Path | None = None, patience_s: float | None = None
                ) -> tuple[list[str], dict[str, str]]:
    """The ``flower-supernode`` command and environment of simulated device
    ``device_id``; raises `ConfigError` / `ArtifactError` for what a user can fix."""
    from devicetune.artifacts.manifest import check_artifacts
    from devicetune.config import load_config
    from devicetune.errors import ConfigError
    from devicetune.server.processes import (
        DEFAULT_PATIENCE_S,
        Transport,
        device_flwr_home,
        flower_env,
        free_port,
        parse_address,
        supernode_command,
    )

    config = load_config(config_path)
    config.require("fleet", command="devicetune device")
    devices = config.fleet.devices
    if not 0 <= device_id < devices:
        raise ConfigError(f"--device-id {device_id}: the fleet in {config_path} has devices "
                          f"0 to {devices - 1}")
    patience_s = DEFAULT_PATIENCE_S if patience_s is None else patience_s
    if not 0 < patience_s <= 7 * 24 * 3600:
        raise ConfigError(f"--patience-s {patience_s:g}: must be above 0 and at most a week "
                          "(604800)")
    host, port = parse_address(superlink)
    node_config: dict[str, Any] = {"device-id": device_id,
                                   "config": str(Path(config_path).resolve())}
    if artifacts is not None:
        check_artifacts(artifacts)
        node_config["artifacts"] = str(Path(artifacts).resolve())
    if data_dir is not None:
        node_config["data"] = str(Path(data_dir).resolve())
    if auth_key is not None and not Path(auth_key).is_file():
        raise ConfigError(f"--auth-key {auth_key}: no such file (device-{device_id} from "
                          "`devicetune keys devices`)")
    if config.server.device_keys is not None and auth_key is None:
        raise ConfigError(f"{config_path}: server.device_keys is set, so only devices with "
                          f"a registered key join; pass --auth-key .../device-{device_id}")
    command = supernode_command(f"{host}:{port}", Transport.for_device(config.server),
                                node_config, free_port(),
                                Path(auth_key).resolve() if auth_key else None,
                                patience_s=patience_s, label=f"device {device_id}")
    home = device_flwr_home(device_id)
    home.mkdir(parents=True, exist_ok=True)
    return command, flower_env(home)


def become_device(argv: list[str], env: dict[str, str]) -> None:
    """Replace this process with the SuperNode (never returns)."""
    os.execve(argv[0], argv, env)
