"""A team's own models: a .keras classifier keeps its trained head; parity runs on the
team's rows, says so, and catches a broken layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from devicetune.config import parse_config
from devicetune.errors import ConfigError, DevicetuneWarning, ParityError
from devicetune.export.build import build
from tests.data.team_files import CLASSES, team_table, write_table


def _team_rows(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    columns = team_table(users=6, rows_per_user=40, seed=7)
    path = write_table(columns, folder / "team.csv")
    x = np.column_stack([columns[f"f{j}"] for j in range(6)]).astype(np.float32)
    y = np.array([CLASSES.index(label) for label in columns["label"]])
    return path, x, y


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray,
                                                                   np.ndarray]:
    """A Keras classifier trained outside devicetune: Normalization, a hidden layer, a
    softmax over the three classes, saved as .keras."""
    import keras

    folder = tmp_path_factory.mktemp("keras")
    csv, x, y = _team_rows(folder)
    keras.utils.set_random_seed(0)
    normalize = keras.layers.Normalization()
    normalize.adapt(x)
    model = keras.Sequential([keras.Input((6,)), normalize,
                              keras.layers.Dense(16, activation="relu", name="hidden"),
                              keras.layers.Dense(3, activation="softmax",
                                                 name="classifier")])
    model.compile(optimizer=keras.optimizers.Adam(0.01),
                  loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=30, batch_size=32, verbose=0)
    path = folder / "classifier.keras"
    model.save(path)
    return folder, path, x, y


def _config(folder: Path, model_path: Path, coreml: bool = True, **backbone: object
            ) -> object:
    return parse_config({
        "name": "team", "seed": 0,
        "model": {"classes": list(CLASSES), "backbone": {"path": str(model_path), **backbone}},
        "export": {"parity_steps": 5, "calibration": "file", "coreml": coreml,
                   "calibration_path": str(folder / "team.csv")},
    })


def test_a_keras_classifier_keeps_its_accuracy_and_its_head(classifier, data_dir: Path
                                                             ) -> None:
    import keras

    from devicetune.device.litert import LiteRTModel

    folder, path, x, y = classifier
    keras_accuracy = float(np.mean(np.argmax(keras.saving.load_model(path).predict(
        x, verbose=0), axis=1) == y))
    result = build(_config(folder, path, coreml=False), folder / "build", data_dir)
    assert result.head_source == "the model's own trained layers 'classifier'"
    lite = LiteRTModel((folder / "build" / "model.tflite").read_bytes())
    artifact_accuracy = float(np.mean(np.argmax(lite.infer(x), axis=1) == y))
    assert keras_accuracy > 0.6  # the classifier learned something worth keeping
    assert abs(artifact_accuracy - keras_accuracy) <= 0.005
    # Federation starts from the shipped weights: the Keras classifier's own.
    shipped = lite.get_weights()
    kernel = keras.saving.load_model(path).layers[-1].get_weights()[0]
    assert any(w.shape == kernel.shape and np.allclose(w, kernel) for w in shipped.values())
    parity = json.loads((folder / "build" / "parity.json").read_text())
    assert parity["inputs"] == f"240 rows of {folder / 'team.csv'}"


def test_a_head_that_does_not_match_is_refused_when_asked_for(classifier, data_dir: Path
                                                              ) -> None:
    folder, path, _, _ = classifier
    config = _config(folder, path, head_init="model")
    config = config.model_copy(update={"model": config.model.model_copy(update={
        "head": config.model.head.model_copy(update={"type": "mlp", "hidden_units": 32})})})
    with pytest.raises(ConfigError, match="head_init = 'model'.*not a ReLU Dense of "
                       "head.hidden_units then a Dense of 3 units"):
        build(config, folder / "mismatch", data_dir)
    assert not (folder / "mismatch" / "model.tflite").exists()


def test_a_broken_layer_fails_the_build(classifier, data_dir: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An artifact whose backbone layer was damaged after conversion must not pass."""
    import coremltools as ct

    import devicetune.export.coreml as coreml

    real_build = coreml.build_coreml

    def damaged(*args, **kwargs):
        artifacts = real_build(*args, **kwargs)
        spec = ct.utils.load_spec(str(artifacts.path))
        for layer in spec.neuralNetworkClassifier.layers:
            kind = layer.WhichOneof("layer")
            if kind in ("innerProduct", "batchedMatmul") and not layer.isUpdatable:
                getattr(layer, kind).weights.floatValue[0] += 0.5  # the backbone's first
                break
        ct.utils.save_spec(spec, str(artifacts.path))
        return artifacts

    monkeypatch.setattr(coreml, "build_coreml", damaged)
    folder, path, _, _ = classifier
    with pytest.raises(ParityError, match=r"coreml\.(predict|features)"):
        build(_config(folder, path), folder / "broken", data_dir)
    report = json.loads((folder / "broken" / "parity.json").read_text())
    assert not report["passed"]


def test_parity_on_random_inputs_warns(tmp_path: Path, data_dir: Path) -> None:
    config = parse_config({
        "model": {"classes": 3, "input_shape": [6],
                  "backbone": {"architecture": "dense_small", "embedding_dim": 8}},
        "export": {"parity_steps": 5, "coreml": False},
    })
    with pytest.warns(DevicetuneWarning, match="random normal inputs"):
        result = build(config, tmp_path / "build", data_dir)
    assert result.parity.inputs == "random normal inputs (no data named)"


def test_an_unadapted_normalization_layer_is_warned_about(tmp_path: Path,
                                                          data_dir: Path) -> None:
    import keras

    from devicetune.model.trainable import build_trainable_model

    model = keras.Sequential([keras.Input((6,)), keras.layers.Normalization(),
                              keras.layers.Dense(8, activation="relu")])
    model.save(tmp_path / "backbone.keras")
    config = parse_config({"model": {"classes": 3, "backbone": {
        "path": str(tmp_path / "backbone.keras")}}})
    with pytest.warns(DevicetuneWarning, match="Normalization layer.*not adapted"):
        built = build_trainable_model(config.model, 0, data_dir)
    assert built.head_source == "random (Glorot uniform, seeded)"


def test_head_weights_from_a_file_are_used_and_checked(tmp_path: Path, data_dir: Path
                                                       ) -> None:
    from devicetune.errors import DataError
    from devicetune.model.trainable import build_trainable_model

    kernel = np.arange(8 * 3, dtype=np.float32).reshape(8, 3) / 10
    np.savez(tmp_path / "head.npz", kernel_0=kernel, bias_0=np.ones(3, np.float32))
    config = parse_config({"model": {"classes": 3, "input_shape": [6], "backbone": {
        "architecture": "dense_small", "embedding_dim": 8, "head_init": "file",
        "head_weights": str(tmp_path / "head.npz")}}})
    with pytest.warns(DevicetuneWarning, match="not adapted"):
        model = build_trainable_model(config.model, 0, data_dir)
    np.testing.assert_array_equal(model.layers[-1].kernel, kernel)
    assert model.head_source == "the weights in head.npz"
    np.savez(tmp_path / "head.npz", kernel_0=kernel[:4], bias_0=np.ones(3, np.float32))
    with pytest.raises(DataError, match=r"kernel_0 \(4, 3\).*needs \(8, 3\)"):
        build_trainable_model(config.model, 0, data_dir)
