"""`devicetune build` end to end, as a user runs it."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import pytest

from devicetune.artifacts.manifest import read_manifest, sha256_file
from devicetune.config import parse_config
from devicetune.errors import ParityError
from devicetune.export import verify
from devicetune.export.build import build
from tests.conftest import run_cli

SIGNATURES = {"infer", "embed", "train", "train_dp", "train_masked", "evaluate", "get_weights",
              "set_weights", "configure"}


def test_har_build_from_the_shipped_config(tmp_path: Path, har_build) -> None:
    out, result = har_build
    assert result.returncode == 0, result.stderr
    manifest = read_manifest(out)
    assert manifest.name == "har" and manifest.version == 1
    assert manifest.classes[0] == "WALKING" and len(manifest.classes) == 6
    assert manifest.tflite.sha256 == sha256_file(out / "model.tflite")
    assert manifest.files["model.tflite"] == manifest.tflite.sha256
    assert set(manifest.files) == {"model.tflite", "Model.mlmodel", "parity.json",
                                   "backbone.keras"}
    assert all(manifest.files[f] == sha256_file(out / f) for f in manifest.files)
    assert set(manifest.tflite.signatures) == SIGNATURES
    assert manifest.tflite.signatures["train"].inputs[0].shape == [8, 64]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] is True
    names = {c["name"] for c in parity["checks"]}
    assert {"tflite.infer", "tflite.train.100_steps", "tflite.weights_roundtrip"} <= names
    assert all(set(c) >= {"name", "max_abs_diff", "tolerance", "passed"}
               for c in parity["checks"])
    assert "parity check" in result.stdout
    # The build folder is a release: it signs and verifies as it is.
    keys = run_cli("keys", "generate", "--out", str(tmp_path / "keys"))
    assert keys.returncode == 0, keys.stderr
    signed = run_cli("sign", str(out), "--private-key", str(tmp_path / "keys" / "private_key.pem"))
    assert signed.returncode == 0, signed.stderr
    checked = run_cli("verify", str(out), "--public-key", str(tmp_path / "keys" / "public_key.pem"))
    assert checked.returncode == 0, checked.stderr


def test_unsupported_layer_fails_the_build_in_one_line(tmp_path: Path) -> None:
    backbone = keras.Sequential([keras.Input((16, 3)), keras.layers.LSTM(4, name="rnn")])
    backbone.save(tmp_path / "rnn.keras")
    config = tmp_path / "rnn.toml"
    config.write_text('[model]\nclasses = 3\n[model.backbone]\npath = "rnn.keras"\n')
    result = run_cli("build", str(config), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: layer 'rnn' (LSTM) cannot be exported")
    assert len(result.stderr.strip().splitlines()) == 1


def test_failed_parity_writes_the_report_then_fails(tmp_path: Path, data_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    config = parse_config({"model": {
        "classes": 3, "input_shape": [32, 3],
        "backbone": {"architecture": "conv1d_small", "embedding_dim": 8},
    }, "export": {"parity_steps": 5}})
    # Demand bit-exact results: LiteRT's float reordering cannot meet that everywhere.
    monkeypatch.setattr(verify, "INFER_TOLERANCE", 0.0)
    monkeypatch.setattr(verify, "TRAIN_RELATIVE_TOLERANCE", 0.0)
    with pytest.raises(ParityError, match=r"parity failed: tflite\..*parity.json"):
        build(config, tmp_path, data_dir)
    report = json.loads((tmp_path / "parity.json").read_text())
    assert report["passed"] is False
    assert (tmp_path / "manifest.json").exists()
