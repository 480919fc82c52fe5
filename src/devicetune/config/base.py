"""What every config section shares: unknown keys refused, values frozen, numbers
finite and of their own type (no true/false or "5" for a number, no 1 for true),
relative paths resolved against the config file, id lists like "1-15"."""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class Section(BaseModel):
    # allow_inf_nan=False: `inf` turned checks off (max_update_norm = inf) or ran a
    # diverging FedAdam (server_learning_rate = inf); every float here must be finite.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True,
                              allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _scalar_of_its_own_type(cls, value: Any, info: ValidationInfo) -> Any:
        """TOML has real booleans, integers and floats: a bool where a number goes
        (`devices = true` became 1), a string for a number, a number for a bool or a
        float for an integer is a mistake to refuse, not to coerce. (Not pydantic's
        strict mode, which would also refuse a string for a Path.)"""
        field = cls.model_fields.get(info.field_name or "")
        if field is None:
            return value
        kinds = _scalar_kinds(field.annotation)
        numeric = kinds & {int, float}
        if isinstance(value, bool):
            if numeric and bool not in kinds:
                raise ValueError("must be a number, not true/false")
        elif isinstance(value, int | float):
            if kinds == {bool}:
                raise ValueError("must be true or false")
            if isinstance(value, float) and int in kinds and float not in kinds:
                raise ValueError("must be an integer")
        elif isinstance(value, str) and numeric and not kinds & {str, Path, Literal}:
            raise ValueError("must be a number, not a string")
        return value


def _scalar_kinds(annotation: Any) -> set[Any]:
    """The scalar types an annotation admits (Optional, unions, Annotated unwrapped);
    Literal stands for any literal. None is left out; containers add nothing."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _scalar_kinds(typing.get_args(annotation)[0])
    if origin is typing.Union or origin is types.UnionType:
        return set().union(*(_scalar_kinds(arg) for arg in typing.get_args(annotation)))
    if origin is Literal:
        return {Literal}
    if isinstance(annotation, type) and issubclass(annotation, Path):
        return {Path}
    return {annotation} if annotation in (bool, int, float, str) else set()


def resolve_relative_path(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    if value is None or value.is_absolute() or base is None:
        return value
    return (Path(base) / value).resolve()


def parse_id_list(value: Any) -> Any:
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
