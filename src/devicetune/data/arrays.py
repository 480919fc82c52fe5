"""A team's arrays as `LabeledData`: labels and users encoded, rows put in time order,
and everything checked once, here at the edge, with errors that name what to fix.

Every route into a fleet (`LabeledData.from_arrays`, a data file named in a config, the
built-in loaders) ends in `validate`, so the core never sees a NaN feature, a label
outside the classes, or arrays of different lengths.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from devicetune.data.labeled import LabeledData
from devicetune.errors import DataError


def labeled_from_arrays(x: np.ndarray, y: np.ndarray, user: np.ndarray,
                        time: np.ndarray | None = None,
                        class_names: Sequence[str] | None = None,
                        source: str = "arrays", names: dict[str, str] | None = None
                        ) -> LabeledData:
    """Validate and encode arrays into `LabeledData` (see `LabeledData.from_arrays`).

    ``names`` says what to call ``x``, ``y``, ``user`` and ``time`` in errors (a file's
    column names); ``source`` names the file or object.

    Raises:
        DataError: lengths differ, a value is missing or not finite, a label is not one
            of the classes, or there is only one class.
    """
    label = {"x": "x", "y": "y", "user": "user", "time": "time", **(names or {})}
    x = np.asarray(x)
    y, user = np.asarray(y), np.asarray(user)
    arrays = {"x": x, "y": y, "user": user}
    if time is not None:
        arrays["time"] = time = np.asarray(time)
    for key, array in arrays.items():
        if array.ndim == 0:
            raise DataError(f"{source}: {label[key]} is a scalar; give one value per row")
    lengths = {label[k]: len(a) for k, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k} {n}" for k, n in lengths.items())
        raise DataError(f"{source}: every array needs one entry per row, got {shown}")
    if len(x) == 0:
        raise DataError(f"{source}: no rows")
    if x.ndim == 1:
        x = x[:, None]
    if x.dtype == object or not np.issubdtype(x.dtype, np.number) or x.dtype == bool:
        raise DataError(f"{source}: {label['x']} must be numbers (got {x.dtype}); encode "
                        "text or categories as numbers first")
    codes, classes = encode_labels(y, class_names, source, label["y"])
    users, user_names = _encode_users(user, source, label["user"])
    data = LabeledData(x=x.astype(np.float32, copy=False), y=codes, user=users,
                       class_names=classes,
                       meta={"source": source,
                             **({"user_names": user_names} if user_names else {})})
    if time is not None:
        data = data.select(_time_order(time, source, label["time"]))
    validate(data, source, x_name=label["x"])
    return data


def validate(data: LabeledData, source: str, x_name: str = "x",
             min_classes: int = 2) -> None:
    """Refuse data a fleet cannot learn from or be measured on.

    Raises:
        DataError: no rows, non-finite features, labels outside the classes, or fewer
            than ``min_classes`` classes present.
    """
    if len(data) == 0:
        raise DataError(f"{source}: no rows")
    finite = np.isfinite(data.x.reshape(len(data), -1))
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        raise DataError(f"{source}: {x_name}: {int((~finite).sum())} values are NaN, "
                        f"infinite or beyond float32's range, in {len(bad_rows)} rows "
                        f"(first: row {int(bad_rows[0])}); drop or fix those rows")
    if len(data.y) and (data.y.min() < 0 or data.y.max() >= data.num_classes):
        bad = data.y[(data.y < 0) | (data.y >= data.num_classes)]
        raise DataError(f"{source}: label {int(bad[0])} is outside 0..{data.num_classes - 1} "
                        f"({len(bad)} rows); labels must index the {data.num_classes} "
                        "classes")
    present = np.unique(data.y)
    if len(present) < min_classes:
        only = data.class_names[int(present[0])]
        raise DataError(f"{source}: every row has the label {only!r}; a classifier needs "
                        f"at least {min_classes} classes")


def encode_labels(y: np.ndarray, class_names: Sequence[str] | None, source: str,
                  column: str = "y") -> tuple[np.ndarray, tuple[str, ...]]:
    """Class indices and class names from integer or text labels.

    Text labels take the order of ``class_names`` (the model's classes) when given, else
    sorted order; integer labels index ``class_names`` (default ``"0".."max"``).
    """
    if y.dtype == bool:
        raise DataError(f"{source}: {column} is true/false; give class indices or names")
    if y.dtype.kind in "iu":
        if len(y) and y.min() < 0:
            raise DataError(f"{source}: {column} has the negative label {int(y.min())}; "
                            "labels are class indices 0, 1, ... or class names")
        count = int(y.max()) + 1 if len(y) else 0
        names = tuple(class_names) if class_names is not None else tuple(
            str(i) for i in range(count))
        return y.astype(np.int64), names
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"{source}: {column} has {int((~np.isfinite(y)).sum())} "
                            "missing labels; every row needs one")
        if not np.all(y == np.round(y)):
            raise DataError(f"{source}: {column} has fractional labels such as "
                            f"{y[y != np.round(y)][0]}; labels are class indices or names")
        return encode_labels(y.astype(np.int64), class_names, source, column)
    text = np.asarray([str(v) for v in y.tolist()]) if y.dtype == object else y.astype(str)
    found = sorted(set(text.tolist()))
    if class_names is None:
        names = tuple(found)
    else:
        names = tuple(class_names)
        unknown = sorted(set(found) - set(names))
        if unknown:
            shown = ", ".join(map(repr, unknown[:5]))
            raise DataError(f"{source}: {column} has label(s) {shown} that are not "
                            f"model.classes ({', '.join(names)}); add them to model.classes "
                            "or relabel those rows")
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[v] for v in text.tolist()], dtype=np.int64), names


def _encode_users(user: np.ndarray, source: str, column: str
                  ) -> tuple[np.ndarray, list[str] | None]:
    """Integer user ids as given; text ids numbered 0.. in sorted order (names kept)."""
    if user.dtype.kind in "iu":
        return user.astype(np.int64), None
    if user.dtype.kind == "f":
        if not np.isfinite(user).all() or not np.all(user == np.round(user)):
            raise DataError(f"{source}: {column} has missing or fractional user ids; every "
                            "row needs the id of the person it came from")
        return user.astype(np.int64), None
    text = np.asarray([str(v) for v in user.tolist()])
    empty = (text == "") | (text == "None")
    if empty.any():
        raise DataError(f"{source}: {column} is empty in {int(empty.sum())} rows; every row "
                        "needs the id of the person it came from")
    names = sorted(set(text.tolist()))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[v] for v in text.tolist()], dtype=np.int64), names


def _time_order(time: np.ndarray, source: str, column: str) -> np.ndarray:
    """A stable order by time: within each user, rows as they happened."""
    if time.dtype.kind in "iufM":
        keys = time
    else:
        try:
            keys = np.asarray(time.astype(str), dtype="datetime64[ns]")
        except ValueError:
            raise DataError(f"{source}: {column} is neither numbers nor ISO dates (e.g. "
                            f"{time[0]!r}); give a sortable time per row") from None
    if keys.dtype.kind == "f" and not np.isfinite(keys).all():
        raise DataError(f"{source}: {column} has missing times; every row needs one")
    if keys.dtype.kind == "M" and np.isnat(keys).any():
        raise DataError(f"{source}: {column} has missing times; every row needs one")
    return np.argsort(keys, kind="stable")
