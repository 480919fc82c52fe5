"""Central pretraining: the backbone and head a team trains on its own data before
personalising on devices.

The pretraining data is a slice of a dataset (HAR subjects, FSDD speakers, or a
synthetic population disjoint from the simulated fleet). The head trained here becomes
the head every device starts from.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from devicetune.config import PretrainSpec
from devicetune.data.labeled import LabeledData
from devicetune.errors import ConfigError
from devicetune.model.backbone import DenseParams

if TYPE_CHECKING:
    import keras

PRETRAIN_COHORT = 1  # synthetic users for pretraining are not the simulated fleet's users


def pretraining_data(spec: PretrainSpec, seed: int, data_dir: Path,
                     input_shape: tuple[int, ...], class_names: list[str],
                     given: LabeledData | None = None) -> LabeledData:
    """The slice of data a `PretrainSpec` names (or ``given``, a team's arrays), checked
    against the model's shape and classes.

    Raises:
        ConfigError: the dataset does not fit the model, or the subjects do not exist.
        DataError: a data file is missing or malformed.
    """
    num_classes = len(class_names)
    if given is not None:
        data = given
    elif spec.dataset == "synthetic":
        from devicetune.data.synthetic import SyntheticFleet

        fleet = SyntheticFleet(spec.synthetic_devices, seed=seed, cohort=PRETRAIN_COHORT)
        data = fleet.pooled(spec.subjects or range(spec.synthetic_devices))
    else:
        from devicetune.data.sources import load_source

        data = load_source(spec, data_dir, class_names, section="model.backbone.pretrain")
    if (given is not None or spec.dataset != "synthetic") and spec.subjects:
        unknown = sorted(set(spec.subjects) - set(data.users()))
        if unknown:
            raise ConfigError(f"model.backbone.pretrain.subjects = {unknown}: not users "
                              f"of {spec.dataset} (they are {data.users()})")
        data = data.for_users(spec.subjects)
    if data.example_shape != input_shape:
        raise ConfigError(f"model.input_shape = {list(input_shape)}: the {spec.dataset} "
                          f"examples have shape {list(data.example_shape)}")
    if data.num_classes != num_classes:
        raise ConfigError(f"model.classes: {num_classes} classes, but {spec.dataset} has "
                          f"{data.num_classes}")
    return data


def pretrain(backbone: keras.Model, head: list[DenseParams], data: LabeledData,
             spec: PretrainSpec, seed: int, adapt_normalization: bool,
             verbose: int = 0) -> list[DenseParams]:
    """Train backbone and head together on ``data``; the backbone is updated in place.

    ``adapt_normalization`` sets the input Normalization layers' statistics from
    ``data`` first (built-in backbones; a user's backbone keeps its own).

    Returns:
        The trained head layers (the backbone's own trainable tail is inside ``backbone``).
    """
    import keras

    keras.utils.set_random_seed(seed)
    if adapt_normalization:
        for layer in backbone.layers:
            if type(layer).__name__ == "Normalization":
                layer.adapt(data.x)
    head_layers = [keras.layers.Dense(h.units, activation=h.activation, name=f"head{i}")
                   for i, h in enumerate(head)]
    hidden = backbone.outputs[0]
    for layer in head_layers:
        hidden = layer(hidden)
    probabilities = keras.layers.Softmax(name="probabilities")(hidden)
    model = keras.Model(backbone.inputs, probabilities)
    for layer, init in zip(head_layers, head, strict=True):
        layer.set_weights([init.kernel, init.bias])
    model.compile(optimizer=keras.optimizers.Adam(spec.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    order = np.random.default_rng(seed).permutation(len(data))
    model.fit(data.x[order], data.y[order], epochs=spec.epochs, batch_size=spec.batch_size,
              verbose=verbose)
    return [DenseParams(*(w.astype(np.float32) for w in layer.get_weights()), init.activation)
            for layer, init in zip(head_layers, head, strict=True)]

