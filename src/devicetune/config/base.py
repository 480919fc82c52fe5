"""What every config section shares: unknown keys refused, values frozen, relative
paths resolved against the config file, id lists like "1-15"."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


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
