"""A team's data as it arrives: a table of feature vectors with text labels and users,
rows shuffled (time says their order), written as CSV or Parquet with pyarrow."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("walk", "sit", "lie")
FEATURES = 6


def team_table(users: int = 8, rows_per_user: int = 30, seed: int = 0) -> dict[str, list]:
    """Columns of a separable 3-class problem; each user leans towards one class early on
    and has a personal offset, as real people do."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(len(CLASSES), FEATURES))
    columns: dict[str, list] = {"user": [], "label": [], "time": []}
    for name in (f"f{j}" for j in range(FEATURES)):
        columns[name] = []
    for u in range(users):
        offset = rng.normal(scale=0.5, size=FEATURES)
        for t in range(rows_per_user):
            label = int(rng.integers(len(CLASSES)))
            x = centers[label] + offset + rng.normal(size=FEATURES)
            columns["user"].append(f"person-{u:02d}")
            columns["label"].append(CLASSES[label])
            columns["time"].append(1_000 * u + t)
            for j in range(FEATURES):
                columns[f"f{j}"].append(float(x[j]))
    order = rng.permutation(len(columns["user"]))  # a file is rarely in time order
    return {name: [values[i] for i in order] for name, values in columns.items()}


def write_table(columns: dict[str, list], path: Path) -> Path:
    import pyarrow as pa

    table = pa.table(columns)
    if path.suffix == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    else:
        import pyarrow.parquet as pq

        pq.write_table(table, path)
    return path
