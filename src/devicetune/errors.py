"""Every error a user can cause, in one tree.

::

    DevicetuneError                 base: the CLI prints its message in one line, exit 2
    ├── ConfigError                 a config file or option is malformed
    ├── DataError                   a dataset file is missing or not what was expected
    ├── ExportError                 a model cannot be exported as asked (layer, op, shape)
    │   └── ParityError             an exported artifact disagrees with TensorFlow
    ├── PrivacyBudgetExceeded       a round or an emit would overspend epsilon
    ├── UpdateRejected              a device update failed validation
    ├── ArtifactError               a file is corrupt, tampered, unsigned or undecryptable
    ├── RegistryError               a registry request cannot be served (bad name, ...)
    │   ├── VersionExists           publishing a version that exists (never overwritten)
    │   └── NotInRegistry           no such model, version or file
    ├── ServerError                 the federation cannot go on (quorum, resume state)
    └── RunFolderError              a folder is not a simulate/serve run, or unwritable

Messages say what is wrong and what to change; they never need a traceback to be
understood. What deserves attention but stops nothing (a constant data column, parity
on random inputs, an unadapted Normalization layer) is a `DevicetuneWarning`, which the
CLI prints as one ``warning:`` line.
"""

from __future__ import annotations


class DevicetuneError(Exception):
    """Base of every error devicetune raises on purpose."""


class DevicetuneWarning(UserWarning):
    """Something a user should know that does not stop the command."""


class ConfigError(DevicetuneError):
    """A config file or command-line option is malformed."""


class DataError(DevicetuneError):
    """A dataset is missing, unreadable, or not shaped as expected."""


class ExportError(DevicetuneError):
    """A model cannot be exported as asked."""


class ParityError(ExportError):
    """An exported artifact does not reproduce TensorFlow within tolerance."""


class PrivacyBudgetExceeded(DevicetuneError):
    """Running or emitting would push epsilon past the configured budget."""


class UpdateRejected(DevicetuneError):
    """A device update failed validation (shape, dtype, finiteness, norm bound)."""


class ArtifactError(DevicetuneError):
    """An artifact is corrupt, tampered with, wrongly signed, or cannot be decrypted."""


class RegistryError(DevicetuneError):
    """A registry operation cannot be carried out (bad name, existing version, ...)."""


class VersionExists(RegistryError):
    """A published version is never overwritten; publish the next version instead."""


class NotInRegistry(RegistryError):
    """The registry has no such model, version or file."""


class ServerError(DevicetuneError):
    """The federation cannot continue (no quorum, unusable saved state, ...)."""


class RunFolderError(DevicetuneError):
    """A folder given as a run is not one (no metrics, devices or versions), or the
    report cannot be written into it."""


__all__ = [
    "ArtifactError",
    "ConfigError",
    "DataError",
    "DevicetuneError",
    "DevicetuneWarning",
    "ExportError",
    "NotInRegistry",
    "ParityError",
    "PrivacyBudgetExceeded",
    "RegistryError",
    "RunFolderError",
    "ServerError",
    "UpdateRejected",
    "VersionExists",
]
