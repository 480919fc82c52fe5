"""A team's own file through build and simulate, by the CLI and by Python."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import devicetune
from tests.conftest import run_cli
from tests.data.team_files import CLASSES, team_table, write_table

CONFIG = """
name = "team"
seed = 1
[model]
classes = ["walk", "sit", "lie"]
input_shape = [6]
[model.backbone]
architecture = "dense_small"
embedding_dim = 16
[model.backbone.pretrain]
dataset = "file"
path = "team.csv"
subjects = "0-5"
epochs = 15
[export]
parity_steps = 10
[fleet]
devices = 6
platform_mix = { android = 0.5, ios = 0.5 }
availability = 1.0
dropout = 0.0
[fleet.data]
source = "file"
path = "team.csv"
subjects = "6-11"
[fleet.personalization]
epochs = 5
[server]
rounds = 2
devices_per_round = 4
min_devices = 2
"""


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A team's folder: its CSV and Parquet files, a config, and a CLI build of it."""
    folder = tmp_path_factory.mktemp("team")
    columns = team_table(users=12, rows_per_user=24, seed=4)
    write_table(columns, folder / "team.csv")
    write_table(columns, folder / "team.parquet")
    (folder / "team.toml").write_text(CONFIG)
    result = run_cli("build", str(folder / "team.toml"), "--out", str(folder / "build"))
    assert result.returncode == 0, result.stderr
    assert "head started from: random (Glorot uniform, seeded), then pretrained on team.csv" \
        in result.stdout
    return folder


def test_the_build_checked_parity_on_the_teams_rows(team: Path) -> None:
    parity = json.loads((team / "build" / "parity.json").read_text())
    assert parity["passed"] and parity["inputs"] == "144 rows of the pretraining data"
    assert {c["name"] for c in parity["checks"]} >= {"tflite.infer", "coreml.predict"}


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_the_cli_simulates_a_file_and_names_its_users(team: Path, suffix: str) -> None:
    config = team / f"team{suffix}.toml"
    config.write_text(CONFIG.replace('path = "team.csv"\nsubjects = "6-11"',
                                     f'path = "team{suffix}"\nsubjects = "6-11"'))
    assert f'path = "team{suffix}"\nsubjects = "6-11"' in config.read_text()
    run = team / f"run{suffix}"
    result = run_cli("simulate", str(config), "--out", str(run),
                     "--artifacts", str(team / "build"))
    assert result.returncode == 0, result.stderr
    with (run / "devices.csv").open() as handle:
        users = sorted(row["user"] for row in csv.DictReader(handle))
    assert users == [f"person-{u:02d}" for u in range(6, 12)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds_run"] == 2 and summary["devices"] == 6


def test_python_simulates_arrays_from_parquet_with_no_rounds(team: Path) -> None:
    import pyarrow.parquet as pq

    table = pq.read_table(team / "team.parquet").to_pydict()
    data = devicetune.LabeledData.from_arrays(
        x=np.column_stack([table[f"f{j}"] for j in range(6)]), y=np.array(table["label"]),
        user=np.array(table["user"]), time=np.array(table["time"]), class_names=CLASSES)
    config = devicetune.load_config(team / "team.toml")
    config = config.model_copy(update={
        "server": config.server.model_copy(update={"rounds": 0}),
        "fleet": config.fleet.model_copy(update={
            "personalization": config.fleet.personalization.model_copy(
                update={"test_fraction": 0.25})}),
    })
    result = devicetune.simulate(config, team / "python_run", data=data,
                                 artifacts=team / "build")
    summary = result.summary
    assert summary["rounds_run"] == 0
    assert summary["global_accuracy_final"] == summary["global_accuracy_initial"]
    assert all(d.n_test == 6 and d.n_train == 18 for d in result.devices)  # 25% of 24
    assert sorted(d.user for d in result.devices) == [f"person-{u:02d}" for u in range(6, 12)]
    # The same people, split in time the same way, as the CLI's run on the CSV saw them.
    assert 0.5 < summary["accuracy_global"]["mean"] <= 1.0


def test_a_data_source_object_is_taken_as_it_is(team: Path) -> None:
    class TwoPeople:
        devices = 2
        class_names = CLASSES
        example_shape = (6,)

        def device(self, device_id: int) -> devicetune.LabeledData:
            rng = np.random.default_rng(device_id)
            return devicetune.LabeledData.from_arrays(
                rng.normal(size=(20, 6)), np.arange(20) % 3, np.full(20, device_id),
                class_names=CLASSES)

    config = devicetune.load_config(team / "team.toml")
    config = config.model_copy(update={
        "fleet": config.fleet.model_copy(update={"devices": 2}),
        "server": config.server.model_copy(update={"devices_per_round": 2, "rounds": 1})})
    result = devicetune.simulate(config, team / "object_run", data=TwoPeople(),
                                 artifacts=team / "build")
    assert result.summary["devices"] == 2 and result.summary["rounds_run"] == 1
