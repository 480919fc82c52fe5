"""Typed configuration, read from TOML and validated once, at the edge.

One file may hold every section; each command requires the ones it needs::

    name = "har"                 # model name, used in manifests and the registry
    seed = 0
    [model]                      # HeadSpec: backbone, head, optimizer, static batch
    [export]                     # ExportConfig: which artifacts, train_dp constants
    [fleet]                      # FleetConfig: devices, platforms, tiers, data
    [server]                     # ServerConfig: rounds, strategy, quorum, address
    [privacy]                    # PrivacyConfig: DP-FedAvg, accountant, budget
    [emit]                       # EmitConfig: registry, gates, signing, encryption

Unknown keys are errors. Every error is one line naming the file, the field, the bad
value and what is allowed. Relative paths are resolved against the config file's folder.
"""

from devicetune.config.data_dir import download_dir, resolve_data_dir
from devicetune.config.data_file import DataFileFields
from devicetune.config.file import (
    DevicetuneConfig,
    describe_validation_error,
    load_config,
    parse_config,
    to_toml,
)
from devicetune.config.fleet import FleetConfig, FleetData, PersonalizationConfig, TierSpec
from devicetune.config.model import (
    BackboneSpec,
    ExportConfig,
    HeadLayers,
    HeadSpec,
    OptimizerSpec,
    PretrainSpec,
)
from devicetune.config.server import (
    DevicePrivacy,
    EmitConfig,
    GatewayConfig,
    PrivacyConfig,
    ServerConfig,
)

__all__ = [
    "BackboneSpec",
    "DataFileFields",
    "DevicePrivacy",
    "DevicetuneConfig",
    "EmitConfig",
    "ExportConfig",
    "FleetConfig",
    "FleetData",
    "GatewayConfig",
    "HeadLayers",
    "HeadSpec",
    "OptimizerSpec",
    "PersonalizationConfig",
    "PretrainSpec",
    "PrivacyConfig",
    "ServerConfig",
    "TierSpec",
    "describe_validation_error",
    "download_dir",
    "load_config",
    "parse_config",
    "resolve_data_dir",
    "to_toml",
]
