from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devicetune.config import DataFileFields
from devicetune.data import LabeledData
from devicetune.data.files import load_file, read_table
from devicetune.errors import DataError, DevicetuneWarning
from tests.conftest import run_cli
from tests.data.team_files import CLASSES, team_table, write_table


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_table_loads_in_time_order_with_text_labels_and_users(tmp_path: Path,
                                                                suffix: str) -> None:
    columns = team_table()
    path = write_table(columns, tmp_path / f"team{suffix}")
    data = load_file(DataFileFields(path=path), class_names=list(CLASSES))
    assert len(data) == 240 and data.example_shape == (6,)
    assert data.class_names == CLASSES
    assert data.meta["features"] == [f"f{j}" for j in range(6)]
    # Every row is where its time says, and carries its own label and features.
    first = data.select(data.user == 0)
    originals = sorted((t, lab, f0) for u, t, lab, f0 in zip(
        columns["user"], columns["time"], columns["label"], columns["f0"], strict=True)
        if u == "person-00")
    assert [CLASSES[i] for i in first.y] == [lab for _, lab, _ in originals]
    np.testing.assert_allclose(first.x[:, 0], [f0 for *_, f0 in originals], rtol=1e-6)
    assert data.user_name(3) == "person-03"


def test_text_labels_take_the_models_class_order(tmp_path: Path) -> None:
    path = write_table(team_table(), tmp_path / "team.csv")
    data = load_file(DataFileFields(path=path), class_names=["lie", "sit", "walk"])
    assert data.class_names == ("lie", "sit", "walk")
    with pytest.raises(DataError, match=r"label\(s\) 'walk' that are not model.classes"):
        load_file(DataFileFields(path=path), class_names=["lie", "sit", "run"])


def _with(columns: dict[str, list], **changes) -> dict[str, list]:
    return {**columns, **changes}


def test_missing_values_are_counted_per_column_and_refused(tmp_path: Path) -> None:
    columns = team_table()
    f1 = list(columns["f1"])
    f1[3] = f1[7] = None
    path = write_table(_with(columns, f1=f1), tmp_path / "team.parquet")
    assert read_table(DataFileFields(path=path)).missing == {"f1": 2}
    with pytest.raises(DataError, match=r"missing values in 1 feature column\(s\) \(f1: 2\)"
                       r".*impute = \"median\""):
        load_file(DataFileFields(path=path))
    filled = load_file(DataFileFields(path=path, impute="median"))
    assert np.isfinite(filled.x).all()
    assert np.isclose(np.sort(filled.x[:, 1]), np.sort(np.nan_to_num(
        np.array(f1, dtype=float), nan=np.nanmedian(np.array(f1, dtype=float))))).all()


def test_a_constant_column_is_reported(tmp_path: Path) -> None:
    columns = team_table()
    path = write_table({**columns, "gyro_z": [0.0] * len(columns["user"])},
                       tmp_path / "team.csv")
    with pytest.warns(DevicetuneWarning, match="constant column.*gyro_z"):
        load_file(DataFileFields(path=path))


@pytest.mark.parametrize("change, message", [
    ({"drop": "user"}, r"no column 'user' \(fleet.data.user_column\)"),
    ({"label": ["walk"] * 240}, r"every row has the label 'walk'.*at least 2 classes"),
    ({"label": [-1] + [0] * 239}, r"negative label -1"),
    ({"f0": ["a"] * 240}, r"feature column 'f0' holds string, not numbers"),
])
def test_a_malformed_table_gets_one_line_naming_the_column(tmp_path: Path, change: dict,
                                                           message: str) -> None:
    columns = team_table()
    if "drop" in change:
        columns.pop(change["drop"])
    else:
        columns.update(change)
    path = write_table(columns, tmp_path / "team.csv")
    with pytest.raises(DataError, match=message) as caught:
        load_file(DataFileFields(path=path))
    assert str(path) in str(caught.value)


def test_hostile_tables_are_refused_in_one_line(tmp_path: Path) -> None:
    twice = tmp_path / "twice.csv"
    twice.write_text("user,label,f0,f0\na,walk,1,2\nb,sit,2,3\n")
    with pytest.raises(DataError, match="'f0' appear more than once"):
        load_file(DataFileFields(path=twice))
    huge = tmp_path / "huge.csv"  # finite in float64, infinite as the float32 a model takes
    huge.write_text("user,label,f0\na,walk,1\na,sit,1e308\nb,walk,2\nb,sit,3\n")
    with pytest.raises(DataError, match="beyond float32's range, in 1 rows"):
        load_file(DataFileFields(path=huge))


def test_mixed_feature_lengths_are_refused(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    lists = [[1.0, 2.0, 3.0]] * 9 + [[1.0, 2.0]]
    path = tmp_path / "lists.parquet"
    pq.write_table(pa.table({"user": [0, 1] * 5, "label": [0, 1] * 5, "x": lists}), path)
    with pytest.raises(DataError, match="'x' holds 2 to 3 values per row"):
        load_file(DataFileFields(path=path))
    csv = tmp_path / "ragged.csv"
    csv.write_text("user,label,f0,f1\n0,0,1.0,2.0\n1,1,1.0,2.0,3.0\n")
    with pytest.raises(DataError, match=r"ragged.csv: not a readable csv table"):
        load_file(DataFileFields(path=csv))


def test_npz_arrays_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "team.npz"
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4))
    np.savez(path, x=x, y=np.arange(20) % 3, user=np.arange(20) % 4,
             class_names=np.array(["a", "b", "c"]))
    assert load_file(DataFileFields(path=path)).class_names == ("a", "b", "c")
    np.savez(path, x=x, y=np.arange(19) % 3, user=np.arange(20) % 4)
    with pytest.raises(DataError, match="one entry per row, got array 'x' 20, "
                       "array 'y' 19, array 'user' 20"):
        load_file(DataFileFields(path=path))
    np.savez(path, x=x, y=np.full(20, 99), user=np.arange(20) % 4,
             class_names=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match=r"label 99 is outside 0..2"):
        load_file(DataFileFields(path=path))
    bad = x.copy()
    bad[5, 1] = np.inf
    np.savez(path, x=bad, y=np.arange(20) % 3, user=np.arange(20) % 4)
    with pytest.raises(DataError, match="1 values are NaN, infinite or beyond float32's "
                       "range, in 1 rows"):
        load_file(DataFileFields(path=path))
    np.savez(path, x=np.zeros((0, 4)), y=np.zeros(0, int), user=np.zeros(0, int))
    with pytest.raises(DataError, match="no rows"):
        load_file(DataFileFields(path=path))


def test_from_arrays_orders_by_time_and_maps_text(tmp_path: Path) -> None:
    data = LabeledData.from_arrays(
        x=np.arange(6, dtype=float)[:, None], y=np.array(["b", "a", "b", "a", "b", "a"]),
        user=np.array(["u", "v", "u", "v", "u", "v"]),
        time=np.array(["2024-01-03", "2024-01-02", "2024-01-01", "2024-01-01",
                       "2024-01-02", "2024-01-03"]))
    u = data.select(data.user == 0)
    assert u.x[:, 0].tolist() == [2.0, 4.0, 0.0]
    assert data.class_names == ("a", "b") and data.user_name(1) == "v"
    with pytest.raises(DataError, match="one entry per row"):
        LabeledData.from_arrays(np.zeros((3, 2)), np.array([0, 1]), np.zeros(3))


def test_the_shared_har_file_is_refused_when_damaged(tmp_path: Path, data_dir: Path) -> None:
    from devicetune.data.sources import load_dataset

    with np.load(data_dir / "har.npz") as har:
        arrays = {k: har[k][:300] if har[k].shape[:1] == (10299,) else har[k]
                  for k in har.files}
    arrays["label"] = arrays["label"][:299]
    np.savez(tmp_path / "har.npz", **arrays)
    with pytest.raises(DataError, match="har.npz: .*same length"):
        load_dataset("har", tmp_path)
    arrays["label"] = np.full(300, 99, dtype=np.int8)
    np.savez(tmp_path / "har.npz", **arrays)
    with pytest.raises(DataError, match="label 99 is outside 0..5"):
        load_dataset("har", tmp_path)


def test_the_cli_names_the_file_and_column_and_exits_2(tmp_path: Path) -> None:
    columns = team_table()
    f2 = list(columns["f2"])
    f2[0] = None
    path = write_table(_with(columns, f2=f2), tmp_path / "team.csv")
    config = tmp_path / "team.toml"
    config.write_text(f"""
[model]
classes = ["walk", "sit", "lie"]
input_shape = [6]
[model.backbone]
architecture = "dense_small"
[fleet]
devices = 4
[fleet.data]
source = "file"
path = "{path.name}"
""")
    result = run_cli("build", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert str(path) in lines[-1] and "f2: 1" in lines[-1] and "impute" in lines[-1]
    assert not (tmp_path / "out" / "model.tflite").exists()


def test_a_file_can_be_dealt_out_by_dirichlet(tmp_path: Path) -> None:
    from devicetune.config import FleetConfig
    from devicetune.data.sources import open_fleet_data

    path = write_table(team_table(), tmp_path / "team.csv")
    fleet = FleetConfig(devices=5, data={"source": "file", "path": path,
                                         "partition": "dirichlet", "dirichlet_alpha": 0.3})
    source = open_fleet_data(fleet, seed=0, data_dir=tmp_path, class_names=CLASSES)
    devices = [source.device(k) for k in range(5)]
    assert sum(len(d) for d in devices) == 240  # every row lands on exactly one device
    assert len({tuple(np.bincount(d.y, minlength=3)) for d in devices}) > 1  # skewed mixes
