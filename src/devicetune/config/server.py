"""`[server]`, `[privacy]` and `[emit]`: what the federated server does each round, the
differential privacy it applies, and how it publishes new versions."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from devicetune.config.base import PositiveFloat, Section, resolve_relative_path


class GatewayConfig(Section):
    """HTTP devices (apps) beside SuperNodes: `devicetune.server.gateway`, protocol v1."""

    enabled: bool = False
    port: int = Field(9094, ge=1, le=65535, description="on server.host; TLS unless insecure")
    enrollment_token_file: Path | None = Field(
        None, description="file holding the fleet enrollment token apps exchange")
    max_report_bytes: int = Field(16 << 20, ge=1024, le=1 << 31,
                                  description="larger report bodies are refused unread")
    over_selection: float = Field(1.3, ge=1.0, le=10.0,
                                  description="sample this many times devices_per_round")
    checkin_interval_s: PositiveFloat = Field(
        30.0, le=86_400.0, description="pace steering: base wait between check-ins")

    _paths = field_validator("enrollment_token_file", mode="after")(resolve_relative_path)

    @model_validator(mode="after")
    def _needs_token(self) -> GatewayConfig:
        if self.enabled and self.enrollment_token_file is None:
            raise ValueError("enabled = true needs enrollment_token_file (a file holding "
                             "the fleet's enrollment token)")
        return self


class ServerConfig(Section):
    """The federation: rounds, sampling, aggregation, quorum, address."""

    rounds: int = Field(5, ge=0, le=1_000_000, description="0: personalise the initial model")
    devices_per_round: int = Field(10, ge=1, le=10_000_000)
    strategy: Literal["fedavg", "fedavgm", "fedadam", "fedmedian", "fedtrimmedavg",
                      "krum"] = "fedavg"
    server_learning_rate: PositiveFloat = Field(1.0, le=100.0,
                                                description="FedAdam eta, FedAvgM rate")
    server_momentum: float = Field(0.9, ge=0.0, lt=1.0, description="FedAvgM momentum")
    trimmed_fraction: float = Field(0.2, ge=0.0, lt=0.5, description="FedTrimmedAvg beta")
    krum_byzantine: int = Field(0, ge=0, le=10_000_000,
                                description="Krum: number of malicious devices")
    proximal_mu: float = Field(0.0, ge=0.0, le=1e6, description="FedProx term in local training")
    class_mask: bool = Field(
        False, description="FedRS: a device trains only the logits of classes it holds")
    acceptance_tolerance: float | None = Field(
        None, ge=0.0, le=1.0,
        description="commit a round only if accuracy on the server's own labelled data "
                    "stays within this (0..1) of its best so far; needs pretraining data")
    max_update_norm: PositiveFloat = Field(100.0, le=1e9,
                                           description="updates above are rejected")
    min_devices: int = Field(2, ge=1, le=10_000_000, description="replies a round needs")
    round_timeout_s: PositiveFloat = Field(120.0, le=86_400.0, description="at most a day")
    initial_head: Literal["artifact", "fresh"] = Field(
        "artifact", description="start from the build's head, or federate one from scratch"
    )
    on_quorum_failure: Literal["retry", "stop"] = "stop"
    max_retries: int = Field(2, ge=0, le=1000)
    secagg: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9092, ge=1, le=65535)
    insecure: bool = Field(False, description="plain gRPC; local development only")
    root_certificate: Path | None = None
    server_certificate: Path | None = None
    server_private_key: Path | None = None
    device_keys: Path | None = Field(
        None, description="folder of device-K.pub keys: only those SuperNodes join (TLS)")
    gateway: GatewayConfig = GatewayConfig()

    _paths = field_validator(
        "root_certificate", "server_certificate", "server_private_key", "device_keys",
        mode="after"
    )(resolve_relative_path)

    @model_validator(mode="after")
    def _quorum_fits(self) -> ServerConfig:
        if self.min_devices > self.devices_per_round:
            raise ValueError(
                f"min_devices ({self.min_devices}) cannot exceed devices_per_round "
                f"({self.devices_per_round})"
            )
        if self.device_keys is not None and self.insecure:
            raise ValueError("device_keys needs insecure = false: Flower authenticates "
                             "SuperNodes over TLS only")
        if self.secagg and self.devices_per_round < 3:
            raise ValueError("secagg needs devices_per_round >= 3 (Flower's SecAgg+)")
        return self


# ----------------------------------------------------------------------------- privacy


class DevicePrivacy(Section):
    """Sample-level DP-SGD on the phone, through the artifact's train_dp signature."""

    enabled: bool = False


class PrivacyConfig(Section):
    """User-level DP at the server, its accounting and its budget."""

    mode: Literal["off", "fixed", "adaptive"] = "off"
    noise_multiplier: float = Field(1.0, ge=0.0, le=1e6)
    clip_norm: PositiveFloat = 1.0
    target_quantile: float = Field(0.5, gt=0.0, lt=1.0, description="adaptive clipping")
    clip_learning_rate: PositiveFloat = Field(0.2, description="adaptive clipping")
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    max_epsilon: PositiveFloat | None = None
    accountant: Literal["rdp", "pld"] = Field("rdp", description="the one the gate uses")
    device: DevicePrivacy = DevicePrivacy()


# ----------------------------------------------------------------------------- emit


class EmitConfig(Section):
    """New model versions: where they go, when, signed and encrypted how."""

    enabled: bool = False
    registry: Path | None = None
    every_rounds: int = Field(1, ge=1, le=1_000_000)
    max_regression: float = Field(0.02, ge=0.0, le=1.0, description="accuracy, 0..1")
    private_key: Path | None = Field(None, description="PEM key that signs each version")
    encrypt_for: Path | None = Field(None, description="PEM public key of the app")

    _paths = field_validator("registry", "private_key", "encrypt_for", mode="after")(
        resolve_relative_path
    )

    @model_validator(mode="after")
    def _needs_registry(self) -> EmitConfig:
        if self.enabled and self.registry is None:
            raise ValueError("enabled = true needs registry (a folder)")
        return self
