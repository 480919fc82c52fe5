"""A whole config file: its sections, loading it from TOML, and one-line errors."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from devicetune.config.base import Section
from devicetune.config.fleet import FleetConfig
from devicetune.config.model import ExportConfig, HeadSpec
from devicetune.config.server import EmitConfig, PrivacyConfig, ServerConfig
from devicetune.errors import ConfigError


class DevicetuneConfig(Section):
    """A whole config file. Sections a command does not use may be absent."""

    name: str = Field("model", pattern=r"^[a-z0-9][a-z0-9_.-]{0,63}$")
    seed: int = Field(0, ge=0, le=2**32 - 1)
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
        if self.server.class_mask and self.privacy.device.enabled:
            raise ValueError("server.class_mask: the restricted-softmax step has no DP-SGD "
                             "variant; turn privacy.device off or class_mask off")
        if self.server.acceptance_tolerance is not None and (
                self.model is None or self.model.backbone.pretrain is None):
            raise ValueError("server.acceptance_tolerance checks each round on the "
                             "server's own labelled data, the pretraining set: configure "
                             "[model.backbone.pretrain] or remove the tolerance")
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
    except RecursionError:
        raise ConfigError(f"{path}: arrays or tables nested too deeply to be a devicetune "
                          "config") from None
    return parse_config(raw, source=path)


def parse_config(raw: dict[str, Any], source: Path | None = None) -> DevicetuneConfig:
    """Validate an already-parsed mapping; ``source`` names it in errors."""
    base_dir = source.resolve().parent if source is not None else None
    try:
        config = DevicetuneConfig.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source)) from None
    except RecursionError:
        where = f"{source}: " if source is not None else ""
        raise ConfigError(f"{where}values nested too deeply to be a devicetune config"
                          ) from None
    return config.model_copy(update={"source": source})


def describe_validation_error(exc: ValidationError, source: Path | None) -> str:
    """One line: file, field, bad value, what is allowed (first error, count of others).

    An unknown key or section comes first, whatever pydantic's order: a typo such as
    ``[fleat]`` also makes ``fleet`` look missing, and the typo is the mistake to show.
    """
    errors = sorted(exc.errors(include_url=False),
                    key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    field = ".".join(str(part) for part in first["loc"]) or "(top level)"
    where = f"{source}: " if source is not None else ""
    kind = first["type"]
    if kind == "extra_forbidden":
        message = _unknown_key(first["loc"], first.get("input"))
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


def _unknown_key(loc: tuple[int | str, ...], value: Any) -> str:
    """``unknown section 'fleat' (did you mean 'fleet'?); allowed ...``."""
    import difflib

    model = _section_at(loc[:-1]) or DevicetuneConfig
    names = sorted(name for name, f in model.model_fields.items() if not f.exclude)
    name = str(loc[-1])
    parent = ".".join(str(part) for part in loc[:-1])
    what = "section" if isinstance(value, dict) else "key"
    dotted = f"{parent}.{name}" if parent else name
    shown = f"[{dotted}]" if what == "section" else dotted
    close = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    scope = f"in [{parent}]" if parent else "at the top level"
    return f"unknown {what} {shown}{hint}; allowed {scope}: {', '.join(names)}"


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        return "[[[...]]] (nested too deeply)"
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
