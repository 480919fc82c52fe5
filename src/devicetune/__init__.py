"""devicetune: on-device personalization, from the model an app ships to the federated
server that emits its next signed version.

The public API is exactly what this module re-exports. It stays light to import:
TensorFlow, coremltools and Flower load only inside the functions that use them.
"""

from devicetune.api import build, report, simulate
from devicetune.config import (
    DevicetuneConfig,
    EmitConfig,
    ExportConfig,
    FleetConfig,
    HeadSpec,
    PrivacyConfig,
    ServerConfig,
    load_config,
    parse_config,
)
from devicetune.data import (
    DeviceDataSource,
    LabeledData,
    SyntheticFleet,
    load_fsdd,
    load_har,
    load_har_uci,
    open_fleet_data,
)
from devicetune.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    DevicetuneError,
    DevicetuneWarning,
    ExportError,
    ParityError,
    PrivacyBudgetExceeded,
    RegistryError,
    ServerError,
    UpdateRejected,
)

__version__ = "0.1.0"

__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "DeviceDataSource",
    "DevicetuneConfig",
    "DevicetuneError",
    "DevicetuneWarning",
    "EmitConfig",
    "ExportConfig",
    "ExportError",
    "FleetConfig",
    "HeadSpec",
    "LabeledData",
    "ParityError",
    "PrivacyBudgetExceeded",
    "PrivacyConfig",
    "RegistryError",
    "ServerConfig",
    "ServerError",
    "SyntheticFleet",
    "UpdateRejected",
    "build",
    "load_config",
    "load_fsdd",
    "load_har",
    "load_har_uci",
    "open_fleet_data",
    "parse_config",
    "report",
    "simulate",
]
