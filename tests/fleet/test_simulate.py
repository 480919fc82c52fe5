"""`devicetune simulate` on a small synthetic fleet."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from devicetune.config import load_config
from devicetune.fleet.simulate import simulate
from tests.conftest import run_cli, small_config


def _summary_without_timing(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    for key in ("wall_s", "device_rounds_per_s"):
        summary.pop(key)
    return summary


def test_a_small_fleet_writes_the_run_folder(tmp_path: Path, data_dir: Path,
                                             small_artifacts: Path) -> None:
    result = simulate(small_config(), tmp_path, data_dir, artifacts=small_artifacts)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in lines] == [1, 2]
    for row in lines:
        assert set(row) >= {"round", "sampled", "completed", "dropped", "rejected",
                            "global_accuracy", "mean_local_loss", "wall_s"}
        assert row["sampled"] == 4 and row["completed"] + row["dropped"] + row["rejected"] == 4
    with (tmp_path / "devices.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 5
    assert set(rows[0]) >= {"device_id", "platform", "tier", "n_train", "n_test",
                            "acc_global", "acc_personal", "blend"}
    summary = result.summary
    # The method personalization used and its resolved settings (the default here).
    assert summary["personalization_method"]["name"] == "seen_rerank"
    assert "blend = global_error" in summary["personalization_method"]["settings"]
    assert "gate_margin = 1.0" in summary["personalization_method"]["settings"]
    assert summary["devices"] == 5 and summary["rounds"] == 2
    for key in ("accuracy_global", "accuracy_personal"):
        assert set(summary[key]) == {"mean", "median", "p10"}
    assert summary["device_rounds"] == 8 and summary["device_rounds_per_s"] > 0
    assert load_config(tmp_path / "config.toml").fleet.devices == 5  # resolved config


def test_a_mixed_fleet_runs_both_runtimes(tmp_path: Path, data_dir: Path,
                                         small_artifacts: Path) -> None:
    config = small_config(fleet={"platform_mix": {"android": 0.5, "ios": 0.5}})
    result = simulate(config, tmp_path, data_dir, artifacts=small_artifacts)
    platforms = {r.platform for r in result.devices}
    assert platforms == {"android", "ios"}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["completed"] == 4 for row in rows)


def test_the_same_seed_gives_the_same_summary(tmp_path: Path, data_dir: Path,
                                              small_artifacts: Path) -> None:
    config = small_config(fleet={"availability": 0.7, "dropout": 0.2})
    simulate(config, tmp_path / "a", data_dir, artifacts=small_artifacts)
    simulate(config, tmp_path / "b", data_dir, artifacts=small_artifacts)
    assert _summary_without_timing(tmp_path / "a") == _summary_without_timing(tmp_path / "b")
    assert (tmp_path / "a" / "devices.csv").read_text() == \
        (tmp_path / "b" / "devices.csv").read_text()
    other = small_config(seed=4, fleet={"availability": 0.7, "dropout": 0.2})
    simulate(other, tmp_path / "c", data_dir, artifacts=small_artifacts)
    assert _summary_without_timing(tmp_path / "c") != _summary_without_timing(tmp_path / "a")


def test_global_weights_improve_over_rounds(tmp_path: Path, data_dir: Path,
                                            small_artifacts: Path) -> None:
    config = small_config(server={"rounds": 6, "devices_per_round": 5},
                          fleet={"devices": 12, "data": {"windows_per_device": 48}})
    result = simulate(config, tmp_path, data_dir, artifacts=small_artifacts)
    accuracy = [json.loads(line)["global_accuracy"]
                for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert result.summary["global_accuracy_final"] == accuracy[-1]
    assert accuracy[-1] > result.summary["global_accuracy_initial"]


def test_simulate_cli_builds_and_reports(tmp_path: Path) -> None:
    config = tmp_path / "tiny.toml"
    config.write_text("""
name = "tiny"
[model]
classes = 6
input_shape = [128, 9]
[model.backbone]
architecture = "conv1d_small"
embedding_dim = 8
[export]
coreml = false
parity_steps = 5
[fleet]
devices = 4
platform_mix = { android = 1.0 }
[fleet.data]
windows_per_device = 20
[fleet.personalization]
epochs = 2
[server]
rounds = 1
devices_per_round = 3
""")
    result = run_cli("simulate", str(config), "--out", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "artifacts" / "model.tflite").exists()
    assert "devices personalised" in result.stdout
    assert "round 1/1" in result.stderr  # the progress bar


def test_simulate_refuses_artifacts_of_another_shape(tmp_path: Path, data_dir: Path,
                                                     small_artifacts: Path) -> None:
    config = small_config(fleet={"data": {"source": "fsdd"}, "devices": 3})
    result = run_cli("simulate", "--artifacts", str(small_artifacts), "--out",
                     str(tmp_path / "run"), str(_write(tmp_path, config)))
    assert result.returncode == 2
    assert "classes" in result.stderr or "shape" in result.stderr


def _write(tmp_path: Path, config) -> Path:
    from devicetune.config import to_toml

    path = tmp_path / "config.toml"
    path.write_text(to_toml(config))
    return path


def test_flower_engine_gives_the_inline_result(tmp_path: Path, data_dir: Path,
                                               small_artifacts: Path) -> None:
    """20 devices as virtual SuperNodes in Flower's Simulation Engine (Ray), running the
    devicetune ClientApp and ServerApp: the same devices, the same weights as inline."""
    config = small_config(fleet={"devices": 20, "platform_mix": {"android": 0.5, "ios": 0.5},
                                 "dropout": 0.1},
                          server={"rounds": 2, "devices_per_round": 8})
    flower = simulate(config, tmp_path / "flower", data_dir, engine="flower",
                      artifacts=small_artifacts)
    inline = simulate(config, tmp_path / "inline", data_dir, artifacts=small_artifacts)
    rows = {}
    for name in ("flower", "inline"):
        rows[name] = [json.loads(line) for line in
                      (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    for ours, theirs in zip(rows["flower"], rows["inline"], strict=True):
        for key in ("sampled", "completed", "dropped", "rejected"):
            assert ours[key] == theirs[key]
        assert abs(ours["global_accuracy"] - theirs["global_accuracy"]) < 1e-6
    with np.load(tmp_path / "flower" / "global_weights.npz") as a, \
            np.load(tmp_path / "inline" / "global_weights.npz") as b:
        assert max(float(np.abs(a[k] - b[k]).max()) for k in a.files) < 1e-4
    assert flower.summary["accuracy_personal"] == inline.summary["accuracy_personal"]


def test_vectorized_engine_gives_the_inline_result(tmp_path: Path, data_dir: Path,
                                                   small_artifacts: Path) -> None:
    """A round's devices trained as one batch: the same weights and metrics as each
    device running its artifact in turn, within 1e-4."""
    cases = [({"name": "adam", "learning_rate": 0.005}, {"android": 0.5, "ios": 0.5}, 0.0),
             ({"name": "sgd", "learning_rate": 0.05, "momentum": 0.9}, {"android": 1.0},
              0.01)]
    for optimizer, platforms, proximal_mu in cases:
        config = small_config(fleet={"devices": 12, "dropout": 0.1, "local_epochs": 2,
                                     "platform_mix": platforms,
                                     "data": {"windows_per_device": 40}},
                              server={"rounds": 3, "devices_per_round": 6,
                                      "proximal_mu": proximal_mu},
                              model={**small_config().model.model_dump(mode="json"),
                                     "optimizer": optimizer})
        out = tmp_path / optimizer["name"]
        runs = {}
        for engine in ("inline", "vectorized"):
            runs[engine] = simulate(config, out / engine, data_dir, engine=engine,
                                    artifacts=small_artifacts if optimizer["name"] == "adam"
                                    else None)
        rows = {e: [json.loads(line) for line in (out / e / "metrics.jsonl").read_text()
                    .splitlines()] for e in runs}
        for ours, theirs in zip(rows["vectorized"], rows["inline"], strict=True):
            assert {k: ours[k] for k in ("sampled", "completed", "dropped")} == \
                {k: theirs[k] for k in ("sampled", "completed", "dropped")}
            assert abs(ours["mean_local_loss"] - theirs["mean_local_loss"]) < 1e-4
            assert abs(ours["global_accuracy"] - theirs["global_accuracy"]) < 1e-4
        with np.load(out / "inline" / "global_weights.npz") as a, \
                np.load(out / "vectorized" / "global_weights.npz") as b:
            assert max(float(np.abs(a[k] - b[k]).max()) for k in a.files) < 1e-4


def test_simulate_refuses_artifacts_that_do_not_match_their_manifest(tmp_path: Path
                                                                     ) -> None:
    from tests.artifacts.folders import write_model_folder

    write_model_folder(tmp_path / "build")
    data = bytearray((tmp_path / "build" / "model.tflite").read_bytes())
    data[200] ^= 0x01  # one bit of one weight
    (tmp_path / "build" / "model.tflite").write_bytes(bytes(data))
    config = small_config()
    result = run_cli("simulate", "--artifacts", str(tmp_path / "build"), "--out",
                     str(tmp_path / "run"), str(_write(tmp_path, config)))
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "model.tflite: sha256" in result.stderr and "does not match" in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_run_with_no_round_at_quorum_reports_no_gain_and_exits_2(
        tmp_path: Path, small_artifacts: Path) -> None:
    # Every update is above the norm bound, so every one is rejected: nothing federated.
    config = small_config(server={"max_update_norm": 1e-9})
    result = run_cli("simulate", "--artifacts", str(small_artifacts), "--out",
                     str(tmp_path / "run"), str(_write(tmp_path, config)))
    assert result.returncode == 2, (result.stdout[-2000:], result.stderr[-2000:])
    # stderr also carries the log of every rejected update; the error is one line.
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "no round reached its quorum of 2" in errors[0]
    assert "gain" not in result.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds_aggregated"] == 0 and summary["mean_gain"] is None
    rounds = [json.loads(line) for line in
              (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rounds and all(r["quorum"] is False for r in rounds)
