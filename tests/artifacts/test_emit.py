"""Emitting versions: rebuilt artifacts, signed, published, fetched and run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from devicetune.artifacts.emit import VersionEmitter
from devicetune.artifacts.keys import generate_key_pair
from devicetune.device.coreml import CoreMLDevice
from devicetune.device.litert import LiteRTModel
from devicetune.errors import ConfigError
from devicetune.registry import Registry, RegistryClient, RegistryServer
from devicetune.run_files import VERSIONS_FILE
from tests.conftest import small_config


@pytest.fixture
def keys(tmp_path: Path):
    return generate_key_pair(tmp_path / "keys")


def emitter(tmp_path: Path, small_artifacts: Path, keys, **emit) -> VersionEmitter:
    config = small_config(emit={"enabled": True, "registry": str(tmp_path / "registry"),
                                "private_key": str(keys.private_key), **emit})
    return VersionEmitter(config, small_artifacts, tmp_path / "run", {"accuracy": 0.5})


def start_weights(small_artifacts: Path) -> tuple[list[str], list[np.ndarray]]:
    lite = LiteRTModel(small_artifacts / "model.tflite")
    weights = lite.get_weights()
    names = sorted(weights, key=lambda n: (int(n[5:n.index("_")]), n.endswith("bias")))
    return names, [weights[n] for n in names]


def test_a_version_is_rebuilt_signed_published_and_runs(tmp_path: Path,
                                                        small_artifacts: Path,
                                                        keys) -> None:
    emit = emitter(tmp_path, small_artifacts, keys)
    names, weights = start_weights(small_artifacts)
    new = [w + np.float32(0.01) * np.arange(w.size, dtype=np.float32).reshape(w.shape) / w.size
           for w in weights]
    outcome = emit.emit(3, new, {"accuracy": 0.55, "by_platform": {"android": 0.56}})
    assert outcome.emitted and outcome.version == 2
    with RegistryServer(Registry(tmp_path / "registry"), token=None) as server:
        client = RegistryClient(server.url)
        assert [v.version for v in client.versions("small")] == [1, 2]
        manifest = client.fetch("small", 2, tmp_path / "app", public_key=keys.public_key)
    assert manifest.parent_version == 1 and manifest.metrics["by_platform.android"] == 0.56
    assert set(manifest.files) == {"model.tflite", "Model.mlmodel", "update.npz"}
    # The downloaded TFLite model runs and holds exactly the emitted weights.
    lite = LiteRTModel(tmp_path / "app" / "model.tflite")
    stored = lite.get_weights()
    for name, expected in zip(names, new, strict=True):
        np.testing.assert_array_equal(stored[name], expected)
    probabilities = lite.infer(np.zeros((2, 128, 9), np.float32))
    assert probabilities.shape == (2, 6) and np.allclose(probabilities.sum(axis=1), 1)
    ios = CoreMLDevice(tmp_path / "app" / "Model.mlmodel", 0.01)
    for mine, expected in zip(ios.get_weights(), new, strict=True):
        np.testing.assert_allclose(mine, expected, atol=1e-7)
    with np.load(tmp_path / "app" / "update.npz") as update:
        assert [n for n in update.files] == names


def test_the_quality_gate_refuses_a_regression(tmp_path: Path, small_artifacts: Path,
                                               keys) -> None:
    emit = emitter(tmp_path, small_artifacts, keys, max_regression=0.05)
    _, weights = start_weights(small_artifacts)
    assert emit.emit(1, weights, {"accuracy": 0.47}).emitted  # within 0.05 of 0.5
    refused = emit.emit(2, weights, {"accuracy": 0.40})
    assert not refused.emitted and "quality gate" in refused.reason
    privacy = emit.emit(3, weights, {"accuracy": 0.9}, refused="privacy budget spent")
    assert not privacy.emitted
    rows = [json.loads(line) for line in (tmp_path / "run" / VERSIONS_FILE).read_text()
            .splitlines()]
    assert [(r["version"], r["emitted"]) for r in rows] == [(1, True), (2, True), (3, False),
                                                           (3, False)]
    assert rows[2]["parent_metrics"]["accuracy"] == 0.47
    assert [v.version for v in Registry(tmp_path / "registry").versions("small")] == [1, 2]


def test_encrypted_versions_decrypt_only_for_the_app(tmp_path: Path, small_artifacts: Path,
                                                     keys) -> None:
    app = generate_key_pair(tmp_path / "app-keys")
    emit = emitter(tmp_path, small_artifacts, keys, encrypt_for=str(app.public_key))
    _, weights = start_weights(small_artifacts)
    assert emit.emit(1, weights, {"accuracy": 0.6}).emitted
    with RegistryServer(Registry(tmp_path / "registry"), token=None) as server:
        client = RegistryClient(server.url)
        manifest = client.fetch("small", 2, tmp_path / "plain", public_key=keys.public_key,
                                decryption_key=app.private_key)
        assert (tmp_path / "plain" / "model.tflite").exists()
        assert manifest.version == 2
        with pytest.raises(Exception, match="decrypt|key"):
            client.fetch("small", 2, tmp_path / "wrong", public_key=keys.public_key,
                         decryption_key=keys.private_key)


def test_emitting_needs_a_signing_key(tmp_path: Path, small_artifacts: Path) -> None:
    config = small_config(emit={"enabled": True, "registry": str(tmp_path / "registry")})
    with pytest.raises(ConfigError, match="emit.private_key"):
        VersionEmitter(config, small_artifacts, tmp_path / "run", {"accuracy": 0.5})
