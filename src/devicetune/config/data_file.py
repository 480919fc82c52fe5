"""A team's own data file, as `[fleet.data]` and `[model.backbone.pretrain]` name it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from devicetune.config.base import Section, resolve_relative_path

DATA_FILE_SUFFIXES = (".npz", ".csv", ".parquet")


class DataFileFields(Section):
    """Where a team's file is and which of its columns mean what.

    A ``.npz`` holds the arrays ``x``, ``y``, ``user`` and optionally ``time`` and
    ``class_names``; a ``.csv`` or ``.parquet`` table holds one row per example with a
    user column, a label column (class indices or names), an optional time column and
    the feature columns.
    """

    path: Path | None = Field(None, description="a .npz, .csv or .parquet file")
    user_column: str = Field("user", min_length=1)
    label_column: str = Field("label", min_length=1)
    time_column: str | None = Field(
        None, description="rows are ordered by it within a user; default: 'time' if present"
    )
    feature_columns: list[str] = Field(
        default_factory=list, description="the features, in order; empty = every other column"
    )
    impute: Literal["none", "median"] = Field(
        "none", description="missing feature values: refuse, or fill with the column median"
    )

    _path = field_validator("path", mode="after")(resolve_relative_path)

    @field_validator("path")
    @classmethod
    def _known_format(cls, value: Path | None) -> Path | None:
        if value is not None and value.suffix.lower() not in DATA_FILE_SUFFIXES:
            raise ValueError(f"{str(value)!r} must end in {', '.join(DATA_FILE_SUFFIXES)}")
        return value

    def check_file_source(self, is_file: bool, where: str) -> None:
        """``path`` goes with a file source, and only with it (raised as a field error)."""
        if is_file and self.path is None:
            raise ValueError(f"{where} = 'file' needs path (a .npz, .csv or .parquet file)")
        if not is_file and self.path is not None:
            raise ValueError(f"path is set, so set {where} = 'file' (or remove path)")
