from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from devicetune.data import LabeledData
from devicetune.data.inspect import inspect_users
from tests.conftest import run_cli
from tests.data.team_files import team_table, write_table


def _person(labels: list[int], user: int) -> LabeledData:
    return LabeledData(np.zeros((len(labels), 2), np.float32), np.array(labels),
                       np.full(len(labels), user), ("a", "b", "c"))


def test_pasts_that_lack_a_future_class_are_counted() -> None:
    people = [
        _person([0, 0, 1, 1, 0, 1, 0, 1], 0),  # past {0, 1}, future {0, 1}: fine
        _person([0, 0, 0, 0, 1, 2, 1, 2], 1),  # past {0}, future {1, 2}: all unseen
        _person([0, 1, 0, 1, 0, 1, 2, 2], 2),  # past {0, 1}, future 2 of 4 rows unseen
    ]
    result = inspect_users(people, ("a", "b", "c"), (2,), 0.5, "three people")
    assert result.users == 3 and result.rows == 24
    assert result.users_past_lacks_future_class == 2
    assert result.future_rows_unseen["median"] == 0.5
    assert result.class_counts == [11, 9, 4]
    assert result.rows_per_user == {"min": 8.0, "median": 8.0, "max": 8.0}


def test_inspect_reports_what_loading_would_refuse(tmp_path: Path) -> None:
    columns = team_table(users=4, rows_per_user=10)
    f3 = list(columns["f3"])
    f3[0] = None
    columns.update(f3=f3, battery=[1.0] * 40)
    path = write_table(columns, tmp_path / "team.csv")
    result = run_cli("data", "inspect", str(path), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["missing"] == {"f3": 1} and report["constant"] == ["battery"]
    assert report["users"] == 4 and report["example_shape"] == [7]
    assert any("impute" in note for note in report["notes"])
    table = run_cli("data", "inspect", str(path))
    assert "past lacks a future class" in table.stdout and "battery" in table.stdout
    missing_label = run_cli("data", "inspect", str(path), "--label-column", "activity")
    assert missing_label.returncode == 2
    assert "no column 'activity'" in missing_label.stderr


def test_inspect_a_config_describes_the_people_it_personalises(tmp_path: Path,
                                                              data_dir: Path) -> None:
    config = tmp_path / "har.toml"
    config.write_text('[fleet]\ndevices = 15\n[fleet.data]\nsource = "har"\n'
                      '[fleet.personalization]\nsubjects = "16-20"\ntest_fraction = 0.3\n')
    result = run_cli("data", "inspect", str(config), "--json", "--data", str(data_dir))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["users"] == 5 and report["test_fraction"] == 0.3
    assert report["rows"] == 366 + 368 + 364 + 360 + 354  # subjects 16-20 of har.npz
