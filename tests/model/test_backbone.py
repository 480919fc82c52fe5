from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from devicetune.config import parse_config
from devicetune.errors import ConfigError, ExportError
from devicetune.model.backbone import check_exportable, split_trainable
from devicetune.model.trainable import build_trainable_model


def spec_for(path: Path, **extra):
    model = {"classes": 3, "backbone": {"path": str(path), **extra}}
    return parse_config({"model": model}).model


def save(model: keras.Model, tmp_path: Path, name: str = "bb.keras") -> Path:
    path = tmp_path / name
    model.save(path)
    return path


def test_sequential_keras_backbone_builds(tmp_path: Path, data_dir: Path) -> None:
    backbone = keras.Sequential([
        keras.Input((20, 3)), keras.layers.Conv1D(4, 3, activation="relu"),
        keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(8, activation="relu"),
    ])
    model = build_trainable_model(spec_for(save(backbone, tmp_path)), 0, data_dir)
    assert model.input_shape == (20, 3)
    assert model.feature_dim == 8
    assert [layer.units for layer in model.layers] == [3]


def test_functional_backbone_with_trainable_tail(tmp_path: Path, data_dir: Path) -> None:
    inputs = keras.Input((6, 6, 1))
    hidden = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    hidden = keras.layers.Flatten()(hidden)
    hidden = keras.layers.Dense(10, activation="relu", name="fc1")(hidden)
    hidden = keras.layers.Dropout(0.2)(hidden)
    outputs = keras.layers.Dense(5, activation="relu", name="fc2")(hidden)
    path = save(keras.Model(inputs, outputs), tmp_path)
    model = build_trainable_model(spec_for(path, trainable_dense_layers=2), 0, data_dir)
    assert [layer.source for layer in model.layers[:2]] == ["fc1", "fc2"]
    assert model.feature_dim == 64  # the Flatten output feeds the first trainable layer
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 1)).astype(np.float32)
    assert model.feature_model(x).shape == (2, 64)


def test_recurrent_layer_is_refused_by_name(tmp_path: Path, data_dir: Path) -> None:
    backbone = keras.Sequential([keras.Input((20, 3)), keras.layers.LSTM(8, name="memory")])
    with pytest.raises(ExportError, match=r"layer 'memory' \(LSTM\) cannot be exported.*"
                                          r"replace it"):
        build_trainable_model(spec_for(save(backbone, tmp_path)), 0, data_dir)


def test_unsupported_activation_is_refused(tmp_path: Path) -> None:
    backbone = keras.Sequential([keras.Input((4,)),
                                 keras.layers.Dense(3, activation="gelu", name="fancy")])
    with pytest.raises(ExportError, match=r"'fancy'.*activation 'gelu'"):
        check_exportable(backbone)


def test_trainable_tail_must_be_dense(tmp_path: Path) -> None:
    backbone = keras.Sequential([keras.Input((20, 3)), keras.layers.Conv1D(4, 3),
                                 keras.layers.GlobalAveragePooling1D(name="pool")])
    with pytest.raises(ExportError, match=r"'pool' \(GlobalAveragePooling1D\) sits where a "
                                          "Dense layer was expected"):
        split_trainable(backbone, 1)


def test_missing_keras_file_is_a_config_error(tmp_path: Path, data_dir: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        build_trainable_model(spec_for(tmp_path / "absent.keras"), 0, data_dir)


def test_corrupt_keras_file_is_a_config_error(tmp_path: Path, data_dir: Path) -> None:
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(ConfigError, match="not a loadable .keras model"):
        build_trainable_model(spec_for(path), 0, data_dir)


def test_pretraining_learns_the_task(data_dir: Path) -> None:
    spec = parse_config({"model": {
        "classes": 6, "input_shape": [128, 9],
        "backbone": {"architecture": "conv1d_small", "embedding_dim": 16,
                     "pretrain": {"dataset": "synthetic", "synthetic_devices": 40,
                                  "epochs": 3}},
    }}).model
    model = build_trainable_model(spec, 0, data_dir)
    from devicetune.model.head import head_as_numpy_forward

    features = model.feature_model(model.sample.x).numpy()
    accuracy = (head_as_numpy_forward(model.layers, features).argmax(1) == model.sample.y).mean()
    assert accuracy > 0.6  # far above the 1/6 of an untrained head
