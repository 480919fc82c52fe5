"""The model registry: a versioned, content-addressed store, its HTTP API, a client."""

from devicetune.registry.api import create_app
from devicetune.registry.client import RegistryClient
from devicetune.registry.rollout import (
    Assignment,
    LatestAnswer,
    RolloutArm,
    RolloutPolicy,
    assign,
    bucket,
)
from devicetune.registry.server import RegistryServer, serve
from devicetune.registry.store import FileRecord, Registry, VersionRecord

__all__ = [
    "Assignment",
    "FileRecord",
    "LatestAnswer",
    "Registry",
    "RegistryClient",
    "RegistryServer",
    "RolloutArm",
    "RolloutPolicy",
    "VersionRecord",
    "assign",
    "bucket",
    "create_app",
    "serve",
]
