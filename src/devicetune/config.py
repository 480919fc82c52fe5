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

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from devicetune.errors import ConfigError

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


def _resolve_path(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    if value is None or value.is_absolute() or base is None:
        return value
    return (Path(base) / value).resolve()


def _parse_id_list(value: Any) -> Any:
    """Accept ``[1, 2, 3]``, ``"1-15"`` or ``"1-5,9,12-13"`` for user/subject ids."""
    if not isinstance(value, str):
        return value
    ids: list[int] = []
    for part in value.replace(" ", "").split(","):
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise ValueError(f"{value!r} is not a list of ids like '1-15' or '1-5,9'")
        ids.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return ids


# ----------------------------------------------------------------------------- model


class PretrainSpec(_Section):
    """Central pretraining of a built-in backbone before it ships."""

    dataset: Literal["synthetic", "har", "fsdd"]
    subjects: list[int] = Field(default_factory=list, description="users to pretrain on")
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(64, ge=1)
    learning_rate: PositiveFloat = 1e-3
    synthetic_devices: int = Field(200, ge=1, description="users drawn when synthetic")

    _ids = field_validator("subjects", mode="before")(_parse_id_list)


class BackboneSpec(_Section):
    """The frozen feature extractor: a built-in architecture or a saved Keras model."""

    architecture: Literal["conv1d_small", "conv2d_small"] | None = None
    path: Path | None = Field(None, description="a .keras file")
    embedding_dim: int = Field(64, ge=2, le=4096)
    trainable_dense_layers: int = Field(
        0, ge=0, le=4, description="how many of the backbone's last Dense layers also train"
    )
    pretrain: PretrainSpec | None = None

    _path = field_validator("path", mode="after")(_resolve_path)

    @model_validator(mode="after")
    def _one_source(self) -> BackboneSpec:
        if (self.architecture is None) == (self.path is None):
            raise ValueError(
                "set exactly one of architecture ('conv1d_small' or 'conv2d_small') "
                "or path (a .keras file)"
            )
        if self.path is not None and self.path.suffix != ".keras":
            raise ValueError(f"path {str(self.path)!r} must be a .keras file")
        return self


class HeadLayers(_Section):
    """The trainable head on top of the backbone's embedding."""

    type: Literal["linear", "mlp"] = "linear"
    hidden_units: int = Field(64, ge=1, le=4096, description="MLP only")


class OptimizerSpec(_Section):
    """The optimizer compiled into the on-device training step."""

    name: Literal["sgd", "adam"] = "adam"
    learning_rate: PositiveFloat = 1e-3
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD only")
    beta_1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam only")
    beta_2: float = Field(0.999, ge=0.0, lt=1.0, description="Adam only")
    epsilon: PositiveFloat = Field(1e-7, description="Adam only")


class HeadSpec(_Section):
    """What ships and learns on the device: backbone, head, optimizer, batch."""

    classes: list[str] = Field(min_length=2, max_length=1000)
    input_shape: list[int] | None = Field(
        None, min_length=1, max_length=4, description="per example, without the batch"
    )
    backbone: BackboneSpec
    head: HeadLayers = HeadLayers()
    optimizer: OptimizerSpec = OptimizerSpec()
    batch_size: int = Field(8, ge=1, le=1024, description="static batch of train signatures")
    epochs: int = Field(5, ge=1, le=1000, description="default on-device epochs")

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_from_count(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 2:
                raise ValueError(f"{value} classes: at least 2 are needed")
            return [str(i) for i in range(value)]
        return value

    @field_validator("classes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("class names must be unique")
        return value

    @field_validator("input_shape")
    @classmethod
    def _positive_dims(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(d < 1 for d in value):
            raise ValueError(f"every dimension must be >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _builtin_needs_shape(self) -> HeadSpec:
        if self.backbone.architecture is not None and self.input_shape is None:
            raise ValueError(
                "input_shape is required with a built-in architecture, e.g. [128, 9]"
            )
        return self


class ExportConfig(_Section):
    """Which artifacts `build` writes, and the constants baked into them."""

    tflite: bool = True
    coreml: bool = True
    coreml_knn: bool = Field(False, description="also write an updatable kNN Core ML model")
    knn_neighbors: int = Field(3, ge=1, le=100)
    dp_clip_norm: PositiveFloat = Field(1.0, description="train_dp per-example clip norm")
    dp_noise_multiplier: float = Field(1.0, ge=0.0, description="train_dp noise / clip_norm")
    parity_steps: int = Field(100, ge=1, le=10_000, description="train steps in parity")


# ----------------------------------------------------------------------------- fleet


class TierSpec(_Section):
    """A class of phone hardware: its share of the fleet and its relative speed."""

    name: str = Field(min_length=1)
    share: Probability
    speed: PositiveFloat = 1.0


def _default_tiers() -> list[TierSpec]:
    return [
        TierSpec(name="high", share=0.3, speed=1.0),
        TierSpec(name="mid", share=0.5, speed=0.6),
        TierSpec(name="low", share=0.2, speed=0.3),
    ]


class FleetData(_Section):
    """Where each device's data comes from and how it is split."""

    source: Literal["synthetic", "har", "fsdd"] = "synthetic"
    partition: Literal["natural", "dirichlet"] = "natural"
    dirichlet_alpha: PositiveFloat = 0.5
    subjects: list[int] = Field(
        default_factory=list, description="natural users forming the fleet; empty = all"
    )
    test_fraction: float = Field(0.5, gt=0.0, lt=1.0, description="time-ordered local test")
    windows_per_device: int = Field(60, ge=4, le=10_000, description="synthetic: mean")

    _ids = field_validator("subjects", mode="before")(_parse_id_list)


class PersonalizationConfig(_Section):
    """How each device fine-tunes the global model on its own data, and on whom it is
    measured. Every step is one an app can do with the artifact's signatures."""

    subjects: list[int] = Field(
        default_factory=list,
        description="natural users to personalise (e.g. never-seen subjects); empty = the "
        "fleet's own devices",
    )
    max_devices: int = Field(200, ge=1, description="personalise at most this many devices")
    epochs: int = Field(20, ge=0, le=1000, description="most epochs cross-validation may pick")
    learning_rate: PositiveFloat | None = Field(None, description="default: the model's")
    validation_fraction: float = Field(
        0.2, ge=0.0, lt=1.0, description="share of local data each validation fold holds"
    )
    interpolation: float = Field(
        1.0, gt=0.0, le=1.0, description="weight of the personal head against the global one"
    )
    protect_unseen_classes: bool = Field(
        True, description="keep the global classifier for classes absent from local data"
    )
    gate: bool = Field(True, description="keep the global head unless personal is better")
    gate_margin: float = Field(
        2.0, ge=0.0, description="gain needed, in standard errors of validation accuracy"
    )
    compare_naive: bool = Field(
        True, description="also measure naive fine-tuning (all epochs, no safeguards)"
    )

    _ids = field_validator("subjects", mode="before")(_parse_id_list)


class FleetConfig(_Section):
    """A population of simulated phones."""

    devices: int = Field(ge=1, le=10_000_000)
    platform_mix: dict[Literal["android", "ios"], Probability] = Field(
        default_factory=lambda: {"android": 0.7, "ios": 0.3}
    )
    tiers: list[TierSpec] = Field(default_factory=_default_tiers, min_length=1)
    availability: float = Field(0.8, gt=0.0, le=1.0, description="P(available in a round)")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="P(drops out mid-round)")
    local_epochs: int = Field(1, ge=1, le=1000)
    learning_rate: PositiveFloat | None = Field(
        None, description="local training rate in federated rounds; default: the model's"
    )
    eval_devices: int = Field(
        50, ge=1, description="devices whose local test data measure global accuracy"
    )
    data: FleetData = FleetData()
    personalization: PersonalizationConfig = PersonalizationConfig()

    @field_validator("platform_mix")
    @classmethod
    def _mix_sums_to_one(cls, value: dict[str, float]) -> dict[str, float]:
        if not value or not math.isclose(sum(value.values()), 1.0, abs_tol=1e-6):
            raise ValueError(f"shares must sum to 1, got {sum(value.values()):g}")
        return value

    @field_validator("tiers")
    @classmethod
    def _tiers_sum_to_one(cls, value: list[TierSpec]) -> list[TierSpec]:
        total = sum(t.share for t in value)
        if not math.isclose(total, 1.0, abs_tol=1e-6):
            raise ValueError(f"tier shares must sum to 1, got {total:g}")
        if len({t.name for t in value}) != len(value):
            raise ValueError("tier names must be unique")
        return value


# ----------------------------------------------------------------------------- server


class ServerConfig(_Section):
    """The federation: rounds, sampling, aggregation, quorum, address."""

    rounds: int = Field(5, ge=1, le=1_000_000)
    devices_per_round: int = Field(10, ge=1)
    strategy: Literal["fedavg", "fedadam", "fedmedian", "fedtrimmedavg", "krum"] = "fedavg"
    server_learning_rate: PositiveFloat = Field(1.0, description="FedAdam eta")
    trimmed_fraction: float = Field(0.2, ge=0.0, lt=0.5, description="FedTrimmedAvg beta")
    krum_byzantine: int = Field(0, ge=0, description="Krum: number of malicious devices")
    proximal_mu: float = Field(0.0, ge=0.0, description="FedProx term in local training")
    max_update_norm: PositiveFloat = Field(100.0, description="updates above are rejected")
    min_devices: int = Field(2, ge=1, description="replies a round needs")
    round_timeout_s: PositiveFloat = 120.0
    initial_head: Literal["artifact", "fresh"] = Field(
        "artifact", description="start from the build's head, or federate one from scratch"
    )
    on_quorum_failure: Literal["retry", "stop"] = "stop"
    max_retries: int = Field(2, ge=0)
    secagg: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9092, ge=1, le=65535)
    insecure: bool = Field(False, description="plain gRPC; local development only")
    root_certificate: Path | None = None
    server_certificate: Path | None = None
    server_private_key: Path | None = None

    _paths = field_validator(
        "root_certificate", "server_certificate", "server_private_key", mode="after"
    )(_resolve_path)

    @model_validator(mode="after")
    def _quorum_fits(self) -> ServerConfig:
        if self.min_devices > self.devices_per_round:
            raise ValueError(
                f"min_devices ({self.min_devices}) cannot exceed devices_per_round "
                f"({self.devices_per_round})"
            )
        if self.secagg and self.devices_per_round < 3:
            raise ValueError("secagg needs devices_per_round >= 3 (Flower's SecAgg+)")
        return self


# ----------------------------------------------------------------------------- privacy


class DevicePrivacy(_Section):
    """Sample-level DP-SGD on the phone, through the artifact's train_dp signature."""

    enabled: bool = False


class PrivacyConfig(_Section):
    """User-level DP at the server, its accounting and its budget."""

    mode: Literal["off", "fixed", "adaptive"] = "off"
    noise_multiplier: float = Field(1.0, ge=0.0)
    clip_norm: PositiveFloat = 1.0
    target_quantile: float = Field(0.5, gt=0.0, lt=1.0, description="adaptive clipping")
    clip_learning_rate: PositiveFloat = Field(0.2, description="adaptive clipping")
    delta: float = Field(1e-5, gt=0.0, lt=1.0)
    max_epsilon: PositiveFloat | None = None
    accountant: Literal["rdp", "pld"] = Field("rdp", description="the one the gate uses")
    device: DevicePrivacy = DevicePrivacy()


# ----------------------------------------------------------------------------- emit


class EmitConfig(_Section):
    """New model versions: where they go, when, signed and encrypted how."""

    enabled: bool = False
    registry: Path | None = None
    every_rounds: int = Field(1, ge=1)
    max_regression: float = Field(0.02, ge=0.0, le=1.0, description="accuracy, 0..1")
    private_key: Path | None = Field(None, description="PEM key that signs each version")
    encrypt_for: Path | None = Field(None, description="PEM public key of the app")

    _paths = field_validator("registry", "private_key", "encrypt_for", mode="after")(
        _resolve_path
    )

    @model_validator(mode="after")
    def _needs_registry(self) -> EmitConfig:
        if self.enabled and self.registry is None:
            raise ValueError("enabled = true needs registry (a folder)")
        return self


# ----------------------------------------------------------------------------- the file


class DevicetuneConfig(_Section):
    """A whole config file. Sections a command does not use may be absent."""

    name: str = Field("model", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    seed: int = Field(0, ge=0)
    model: HeadSpec | None = None
    export: ExportConfig = ExportConfig()
    fleet: FleetConfig | None = None
    server: ServerConfig = ServerConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    emit: EmitConfig = EmitConfig()

    source: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _ios_can_do_it(self) -> DevicetuneConfig:
        # Core ML's update task has no proximal term and no per-example clipping.
        if self.fleet is not None and self.fleet.platform_mix.get("ios", 0) > 0:
            if self.server.proximal_mu > 0:
                raise ValueError("server.proximal_mu > 0 needs an all-android fleet: Core ML "
                                 "updates have no proximal term (set fleet.platform_mix)")
            if self.privacy.device.enabled:
                raise ValueError("privacy.device.enabled needs an all-android fleet: Core "
                                 "ML updates cannot clip per-example gradients")
        return self

    def require(self, *sections: str, command: str) -> None:
        """Raise `ConfigError` unless every named section is present."""
        for section in sections:
            if getattr(self, section) is None:
                where = self.source or "config"
                raise ConfigError(f"{where}: section [{section}] is required by {command}")


# ----------------------------------------------------------------------------- loading


def load_config(path: str | os.PathLike[str]) -> DevicetuneConfig:
    """Read and validate a TOML config file.

    Raises:
        ConfigError: the file is missing, is not TOML, or a field is invalid.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return parse_config(raw, source=path)


def parse_config(raw: dict[str, Any], source: Path | None = None) -> DevicetuneConfig:
    """Validate an already-parsed mapping; ``source`` names it in errors."""
    base_dir = source.resolve().parent if source is not None else None
    try:
        config = DevicetuneConfig.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None
    return config.model_copy(update={"source": source})


def describe_validation_error(exc: ValidationError, source: Path | None) -> str:
    """One line: file, field, bad value, what is allowed (first error, count of others)."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    where = f"{source}: " if source is not None else ""
    kind = first["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(first["loc"])
        message = f"{field} is not a known key; allowed keys: {allowed}"
    elif kind == "missing":
        message = f"{field} is required"
    else:
        reason = first["msg"].replace("Input should be", "must be")
        reason = reason.replace("String should match", "must match")
        reason = reason.removeprefix("Value error, ")
        value = first.get("input")
        # A check across a whole section names the section, not its every value.
        shown = "" if _is_section(first["loc"]) else f" = {_short(value)}"
        message = f"{field}{shown}: {reason}"
    more = len(errors) - 1
    if more:
        message += f" (and {more} more error{'s' if more > 1 else ''})"
    return where + message


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _section_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The section model that the path ``loc`` points at, or None for a plain value."""
    model: type[BaseModel] | None = DevicetuneConfig
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if model is not None else None
        if field is None:
            return None
        model = _section_type(field.annotation)
    return model


def _is_section(loc: tuple[int | str, ...]) -> bool:
    return not loc or _section_at(loc) is not None


def _allowed_keys(loc: tuple[int | str, ...]) -> str:
    """The field names of the section that holds the unknown key at ``loc``."""
    model = _section_at(loc[:-1]) or DevicetuneConfig
    names = sorted(name for name, f in model.model_fields.items() if not f.exclude)
    return ", ".join(names)


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def to_toml(config: DevicetuneConfig) -> str:
    """The resolved config as TOML (every default filled in), for run folders."""
    import tomli_w

    data = config.model_dump(mode="json", exclude_none=True)
    return tomli_w.dumps(data)


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the shared datasets live: ``explicit``, else ``$DEVICETUNE_DATA``, else
    ``../shared/datasets`` beside the project root (or an ancestor of it).

    Reading the environment belongs here, at the edge; the library receives the path.
    """
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("DEVICETUNE_DATA")
    if env:
        return Path(env)
    # ../shared/datasets beside the project, or beside the nearest ancestor that has one
    # (a CI clone may sit a level deeper than the working copy).
    project_root = Path(__file__).resolve().parents[2]
    for start in (project_root, Path.cwd().resolve()):
        for ancestor in start.parents:
            candidate = ancestor / "shared" / "datasets"
            if candidate.is_dir():
                return candidate
    return (project_root / ".." / "shared" / "datasets").resolve()


__all__ = [
    "BackboneSpec",
    "DevicePrivacy",
    "DevicetuneConfig",
    "EmitConfig",
    "ExportConfig",
    "FleetConfig",
    "FleetData",
    "HeadLayers",
    "HeadSpec",
    "OptimizerSpec",
    "PersonalizationConfig",
    "PretrainSpec",
    "PrivacyConfig",
    "ServerConfig",
    "TierSpec",
    "load_config",
    "parse_config",
    "resolve_data_dir",
    "to_toml",
]
