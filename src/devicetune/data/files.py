"""A team's own data file: ``.npz`` arrays or a ``.csv`` / ``.parquet`` table.

The file is read once, checked column by column (missing values counted, constant
columns reported, labels mapped onto the model's classes) and handed on as
`LabeledData`, rows in time order within each user. `read_table` stops before refusing
anything, so `devicetune data inspect` can describe a file that would be refused.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from devicetune.config.data_file import DataFileFields
from devicetune.data.arrays import labeled_from_arrays
from devicetune.data.labeled import LabeledData
from devicetune.data.npz import read_npz
from devicetune.errors import DataError, DevicetuneWarning


@dataclass
class RawTable:
    """A file's columns before any refusal: features may still hold NaN.

    Attributes:
        x: features ``(n, ...)`` float64, NaN where a value is missing.
        missing: missing values per feature column (only columns that have some).
        constant: feature columns with a single value in every row.
    """

    path: Path
    x: np.ndarray
    y: np.ndarray
    user: np.ndarray
    time: np.ndarray | None
    feature_names: list[str]
    class_names: tuple[str, ...] | None = None
    missing: dict[str, int] = field(default_factory=dict)
    constant: list[str] = field(default_factory=list)
    columns: dict[str, str] = field(default_factory=dict)  # role -> column name


def load_file(spec: DataFileFields, class_names: Sequence[str] | None = None,
              section: str = "fleet.data") -> LabeledData:
    """The file a config section names, as `LabeledData` in time order.

    Args:
        spec: the section (its ``path`` and column names).
        class_names: the model's classes; text labels are mapped onto them.
        section: where the section sits in the config, for messages.

    Raises:
        DataError: the file is missing or unreadable, a column is missing, a value is
            missing (without ``impute = "median"``), or the labels do not fit.
    """
    table = read_table(spec, section)
    where = str(table.path)
    if table.missing:
        if spec.impute != "median":
            counts = ", ".join(f"{name}: {n}" for name, n in table.missing.items())
            raise DataError(f"{where}: missing values in {len(table.missing)} feature "
                            f"column(s) ({counts}); fill them, or set impute = \"median\" "
                            f"in [{section}]")
        impute_median(table.x)
    if table.constant:
        warnings.warn(DevicetuneWarning(
            f"{where}: constant column(s) {', '.join(table.constant[:8])}: they carry no "
            "information, and a Normalization layer divides them by almost zero"),
            stacklevel=2)
    kind = "array" if table.path.suffix.lower() == ".npz" else "column"
    names = {"x": "array 'x'" if kind == "array" else "the features",
             **{role: f"{kind} {table.columns.get(role, role)!r}"
                for role in ("y", "user", "time")}}
    data = labeled_from_arrays(table.x, table.y, table.user, time=table.time,
                               class_names=class_names or table.class_names,
                               source=where, names=names)
    meta = {**data.meta, "features": table.feature_names}
    return LabeledData(x=data.x, y=data.y, user=data.user, class_names=data.class_names,
                       meta=meta)


def read_table(spec: DataFileFields, section: str = "fleet.data") -> RawTable:
    """Read the columns of ``spec.path`` without refusing missing values.

    Raises:
        DataError: the file is missing or unreadable, or a named column is missing.
    """
    if spec.path is None:
        raise DataError(f"[{section}] names no path")
    path = Path(spec.path)
    if not path.exists():
        raise DataError(f"{path}: no such data file ([{section}] path)")
    suffix = path.suffix.lower()
    table = _read_npz(path) if suffix == ".npz" else _read_columns(path, spec, section)
    if table.x.ndim >= 2 and len(table.x):
        flat = table.x.reshape(len(table.x), -1)
        nan = np.isnan(flat)
        if table.x.ndim == 2:
            table.missing = {name: int(n) for name, n in zip(table.feature_names, nan.sum(0),
                                                             strict=True) if n}
        elif nan.any():
            table.missing = {"x": int(nan.sum())}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
            spread = np.nanmax(flat, axis=0) - np.nanmin(flat, axis=0)
        if table.x.ndim == 2:
            table.constant = [name for name, s in zip(table.feature_names, spread, strict=True)
                              if s == 0]
    return table


def impute_median(x: np.ndarray) -> None:
    """Fill NaN in place with each feature's median over the rows that have it."""
    flat = x.reshape(len(x), -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        medians = np.nanmedian(flat, axis=0)
    medians = np.where(np.isnan(medians), 0.0, medians)  # a column with no value at all
    rows, cols = np.nonzero(np.isnan(flat))
    flat[rows, cols] = medians[cols]


def _read_npz(path: Path) -> RawTable:
    arrays = read_npz(path, {"x", "y", "user"})
    x = arrays["x"]
    if x.dtype == object or not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{path}: array 'x' must be numbers, got {x.dtype}")
    names = [f"x{i}" for i in range(x.shape[1])] if x.ndim == 2 else ["x"]
    class_names = tuple(str(c) for c in arrays["class_names"]) if "class_names" in arrays \
        else None
    return RawTable(path=path, x=x.astype(np.float64), y=arrays["y"], user=arrays["user"],
                    time=arrays.get("time"), feature_names=names, class_names=class_names,
                    columns={"y": "y", "user": "user", "time": "time"})


def _read_columns(path: Path, spec: DataFileFields, section: str) -> RawTable:
    """A CSV or Parquet table through pyarrow: typed columns, nulls kept as nulls."""
    arrow = _arrow_table(path)
    present = list(arrow.column_names)
    twice = sorted({c for c in present if present.count(c) > 1})
    if twice:
        raise DataError(f"{path}: column name(s) {', '.join(map(repr, twice))} appear more "
                        "than once; give every column its own name")
    time_column = spec.time_column or ("time" if "time" in present else None)
    for role, column in (("user_column", spec.user_column),
                         ("label_column", spec.label_column),
                         ("time_column", spec.time_column)):
        if column is not None and column not in present:
            raise DataError(f"{path}: no column {column!r} ({section}.{role}); the file has "
                            f"{_listing(present)}")
    roles = {spec.user_column, spec.label_column, time_column}
    features = list(spec.feature_columns) or [c for c in present if c not in roles]
    unknown = [c for c in features if c not in present]
    if unknown:
        raise DataError(f"{path}: no column(s) {', '.join(map(repr, unknown))} "
                        f"({section}.feature_columns); the file has {_listing(present)}")
    if not features:
        raise DataError(f"{path}: no feature columns besides user, label and time")
    for role, column in (("user", spec.user_column), ("label", spec.label_column)):
        nulls = arrow.column(column).null_count
        if nulls:
            raise DataError(f"{path}: column {column!r} is empty in {nulls} rows; every row "
                            f"needs its {role}")
    x = _feature_matrix(arrow, features, path)
    time = None
    if time_column is not None:
        time = _column_numpy(arrow, time_column)
    return RawTable(
        path=path, x=x, y=_column_numpy(arrow, spec.label_column),
        user=_column_numpy(arrow, spec.user_column), time=time, feature_names=features,
        columns={"y": spec.label_column, "user": spec.user_column,
                 "time": time_column or "time"},
    )


def _arrow_table(path: Path):  # -> pyarrow.Table
    import pyarrow as pa

    try:
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pacsv

            return pacsv.read_csv(path)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        detail = " ".join(str(exc).split())
        if len(detail) > 200:
            detail = detail[:197] + "..."
        raise DataError(f"{path}: not a readable {path.suffix.lstrip('.')} table "
                        f"({detail})") from None


def _feature_matrix(arrow, features: list[str], path: Path) -> np.ndarray:
    """``(n, features)`` float64 from numeric columns, or ``(n, k)`` from one list column
    (every row the same length)."""
    import pyarrow as pa

    first = arrow.schema.field(features[0]).type
    if len(features) == 1 and (pa.types.is_list(first) or pa.types.is_large_list(first)
                               or pa.types.is_fixed_size_list(first)):
        column = arrow.column(features[0]).combine_chunks()
        if column.null_count:
            raise DataError(f"{path}: column {features[0]!r} is empty in "
                            f"{column.null_count} rows")
        lengths = np.asarray(pa.compute.list_value_length(column))
        if len(lengths) and lengths.min() != lengths.max():
            raise DataError(f"{path}: column {features[0]!r} holds {lengths.min()} to "
                            f"{lengths.max()} values per row; every row needs the same "
                            "number of features")
        values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), np.float64)
        return values.reshape(len(column), int(lengths[0]) if len(lengths) else 0)
    columns = []
    for name in features:
        kind = arrow.schema.field(name).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)
                or pa.types.is_boolean(kind) or pa.types.is_null(kind)):
            raise DataError(f"{path}: feature column {name!r} holds {kind}, not numbers; "
                            "list the feature columns in feature_columns or encode it")
        column = arrow.column(name).cast(pa.float64())
        columns.append(column.to_numpy(zero_copy_only=False))
    return np.stack(columns, axis=1).astype(np.float64)


def _column_numpy(arrow, name: str) -> np.ndarray:
    import pyarrow as pa

    column = arrow.column(name).combine_chunks()
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        return np.asarray(column.cast(pa.timestamp("ns")).to_numpy(zero_copy_only=False))
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) \
            or pa.types.is_dictionary(column.type):
        return np.asarray(column.cast(pa.string()).to_pylist(), dtype=object)
    if column.null_count and (pa.types.is_integer(column.type)):
        column = column.cast(pa.float64())
    return column.to_numpy(zero_copy_only=False)


def _listing(columns: list[str]) -> str:
    shown = ", ".join(columns[:12])
    return shown + (f" and {len(columns) - 12} more" if len(columns) > 12 else "")
