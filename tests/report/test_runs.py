"""Reading a run folder: what a crash leaves behind is read, noted, never fatal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from devicetune.errors import RunFolderError
from devicetune.report.runs import read_run


def _round(n: int, **extra: object) -> str:
    return json.dumps({"round": n, "sampled": 4, "completed": 4, "dropped": 0,
                       "rejected": 0, "global_accuracy": 0.5 + n / 100,
                       "mean_local_loss": 1.0, "wall_s": 0.1, **extra})


def test_a_finished_simulation_reads_whole(simulation_run: Path) -> None:
    run = read_run(simulation_run)
    assert run.kind == "simulation" and run.notes == []
    assert [r["round"] for r in run.rounds] == [1, 2]
    assert len(run.devices or []) == run.summary["devices"] == 10
    assert {d.platform for d in run.devices or []} == {"android", "ios"}
    assert run.name == "small" and run.config.fleet.devices == 10


def test_a_last_line_cut_mid_write_is_left_out_with_a_note(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(_round(1) + "\n" + _round(2) + "\n"
                                            + _round(3)[:30])
    run = read_run(tmp_path)
    assert [r["round"] for r in run.rounds] == [1, 2]
    assert any("last line" in note and "cut off" in note for note in run.notes)


def test_a_bad_line_inside_the_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(f"{_round(1)}\nnot json\n{_round(2)}\n")
    run = read_run(tmp_path)
    assert [r["round"] for r in run.rounds] == [1, 2]
    assert any("line 2" in note for note in run.notes)


def test_a_round_written_twice_keeps_its_last_record(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join([_round(1), _round(2, completed=1), _round(2, completed=3)]) + "\n")
    run = read_run(tmp_path)
    assert [(r["round"], r["completed"]) for r in run.rounds] == [(1, 4), (2, 3)]
    assert any("more than once" in note for note in run.notes)


def test_unknown_keys_are_kept(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(_round(1, epsilon_rdp=0.3, clip="x") + "\n")
    assert read_run(tmp_path).rounds[0]["epsilon_rdp"] == 0.3


def test_a_cut_devices_row_and_a_broken_summary_become_notes(run_copy: Path) -> None:
    devices = run_copy / "devices.csv"
    text = devices.read_text()
    devices.write_text(text[:text.rstrip("\n").rfind("\n") + 12])  # last row cut
    (run_copy / "summary.json").write_text('{"devices": 10, "rou')
    run = read_run(run_copy)
    assert len(run.devices or []) == 9
    assert run.summary is None
    notes = " ".join(run.notes)
    assert "devices.csv: 1 row incomplete" in notes
    assert "summary.json is not valid JSON" in notes


def test_files_that_disagree_are_noted(run_copy: Path) -> None:
    summary = json.loads((run_copy / "summary.json").read_text())
    (run_copy / "summary.json").write_text(json.dumps({**summary, "devices": 12}))
    assert any("counts 12 devices" in note for note in read_run(run_copy).notes)


def test_an_unloadable_config_is_a_note_not_a_crash(run_copy: Path) -> None:
    (run_copy / "config.toml").write_text("[fleet]\ndevices = 0\n")
    run = read_run(run_copy)
    assert run.config is None and run.name == "run"
    assert any("config.toml does not load" in note for note in run.notes)


def test_a_folder_without_run_files_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match="not a run folder"):
        read_run(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(RunFolderError, match="no such folder"):
        read_run(tmp_path / "file")


def test_privacy_on_without_epsilon_is_noted(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text(_round(1) + "\n")
    (tmp_path / "config.toml").write_text("[privacy]\nmode = 'fixed'\n")
    assert any("records no epsilon" in note for note in read_run(tmp_path).notes)
    (tmp_path / "metrics.jsonl").write_text(_round(1, epsilon_rdp=0.2, delta=1e-5) + "\n")
    assert not any("epsilon" in note for note in read_run(tmp_path).notes)
