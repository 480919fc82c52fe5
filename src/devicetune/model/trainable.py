"""`TrainableModel`: one definition of what ships, from which every artifact is made.

From a `HeadSpec`: the backbone (built-in or `.keras`, optionally pretrained), cut into
a frozen feature extractor and the trainable dense layers (the backbone's trainable
tail, then the head). TFLite, Core ML and the fleet simulation all start from here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from devicetune.config import ExportConfig, HeadSpec
from devicetune.data.labeled import LabeledData
from devicetune.errors import ConfigError
from devicetune.model.backbone import DenseParams

if TYPE_CHECKING:
    import keras

    from devicetune.model.program import DeviceProgram


@dataclass(frozen=True)
class TrainableModel:
    """A frozen feature extractor plus trainable dense layers, and where they came from.

    Attributes:
        spec: the HeadSpec it was built from.
        backbone: the whole backbone (pretrained if asked), as Keras.
        feature_model: the frozen part, ``x -> features``.
        layers: the trainable dense layers, first to last (the last is the classifier).
        sample: examples for parity checks (a slice of the pretraining data, if any).
        head_source: where the head's first weights came from, in words.
    """

    spec: HeadSpec
    backbone: keras.Model
    feature_model: keras.Model
    layers: list[DenseParams]
    sample: LabeledData | None
    head_source: str = "random (Glorot uniform, seeded)"

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.feature_model.inputs[0].shape[1:])

    @property
    def feature_dim(self) -> int:
        return int(self.layers[0].kernel.shape[0])

    def with_weights(self, weights: list[np.ndarray]) -> TrainableModel:
        """The same model with new trainable weights (in `weight_names` order)."""
        if len(weights) != 2 * len(self.layers):
            raise ValueError(f"expected {2 * len(self.layers)} tensors, got {len(weights)}")
        layers = [replace(layer, kernel=np.asarray(k, np.float32),
                          bias=np.asarray(b, np.float32))
                  for layer, k, b in zip(self.layers, weights[0::2], weights[1::2], strict=True)]
        return replace(self, layers=layers)

    def weights(self) -> list[np.ndarray]:
        """Trainable weights in `weight_names` order."""
        return [t for layer in self.layers for t in (layer.kernel, layer.bias)]

    def program(self, export: ExportConfig) -> DeviceProgram:
        """The TensorFlow module whose signatures the TFLite artifact carries."""
        from devicetune.model.backbone import freeze
        from devicetune.model.program import DeviceProgram

        return DeviceProgram(
            frozen=freeze(self.feature_model), input_shape=self.input_shape,
            layers=self.layers, optimizer=self.spec.optimizer,
            batch_size=self.spec.batch_size, dp_clip_norm=export.dp_clip_norm,
            dp_noise_multiplier=export.dp_noise_multiplier,
        )


def build_trainable_model(spec: HeadSpec, seed: int, data_dir: Path,
                          verbose: int = 0, pretrain_data: LabeledData | None = None
                          ) -> TrainableModel:
    """Build the backbone, pretrain it if asked, and cut it into frozen and trainable.

    Args:
        pretrain_data: a team's arrays to pretrain on instead of
            ``[model.backbone.pretrain]``'s dataset (which must still be configured, for
            epochs and rate).

    Raises:
        ConfigError: the spec does not fit the data or the backbone file.
        DataError: a data or head-weights file is missing or malformed.
        ExportError: the backbone has a layer the export paths cannot carry.
    """
    from devicetune.model.backbone import (
        builtin_backbone,
        check_exportable,
        load_backbone,
        split_trainable,
        unadapted_normalization,
    )
    from devicetune.model.pretrain import pretrain, pretraining_data

    source = spec.backbone
    if source.architecture is not None:
        assert spec.input_shape is not None  # the config guarantees it
        backbone = builtin_backbone(source.architecture, spec.input_shape,
                                    source.embedding_dim, seed)
    else:
        assert source.path is not None
        backbone = load_backbone(source.path)
        shape = [int(d) for d in backbone.inputs[0].shape[1:]]
        if spec.input_shape is not None and list(spec.input_shape) != shape:
            raise ConfigError(f"model.input_shape = {list(spec.input_shape)}: the backbone "
                              f"{source.path.name} takes {shape}")
    check_exportable(backbone)
    backbone, head, head_source = _initial_head(backbone, spec, seed)
    if pretrain_data is not None and source.pretrain is None:
        raise ConfigError("pretraining data was given but [model.backbone.pretrain] is not "
                          "configured (it sets epochs, batch size and rate)")
    sample = None
    if source.pretrain is not None:
        shape = tuple(int(d) for d in backbone.inputs[0].shape[1:])
        data = pretraining_data(source.pretrain, seed, data_dir, shape, list(spec.classes),
                                given=pretrain_data)
        # The whole model trains on this data, so its input statistics come from it too.
        head = pretrain(backbone, head, data, source.pretrain, seed,
                        adapt_normalization=True, verbose=verbose)
        head_source += f", then pretrained on {_data_name(source.pretrain, pretrain_data)}"
        rows = np.random.default_rng(seed).choice(len(data), min(512, len(data)),
                                                  replace=False)
        sample = data.select(np.sort(rows))
    else:
        stale = unadapted_normalization(backbone)
        if stale:
            import warnings

            from devicetune.errors import DevicetuneWarning

            warnings.warn(DevicetuneWarning(
                f"Normalization layer(s) {', '.join(stale)} of the backbone are not adapted "
                "(mean 0, variance 1): configure [model.backbone.pretrain] to adapt them "
                "on data, or adapt them before saving the model"), stacklevel=2)
    feature_model, tail = split_trainable(backbone, source.trainable_dense_layers)
    return TrainableModel(spec=spec, backbone=backbone, feature_model=feature_model,
                          layers=[*tail, *head], sample=sample, head_source=head_source)


def _initial_head(backbone: keras.Model, spec: HeadSpec, seed: int
                  ) -> tuple[keras.Model, list[DenseParams], str]:
    """The head's first weights, the backbone under it, and a sentence saying where the
    weights came from (printed by the build)."""
    from devicetune.model.backbone import split_classifier
    from devicetune.model.head import init_head, read_head_weights

    source = spec.backbone
    hidden = spec.head.hidden_units if spec.head.type == "mlp" else None
    if source.head_init in ("auto", "model") and source.path is not None:
        found = split_classifier(backbone, hidden, len(spec.classes))
        if found is not None:
            features, head = found
            names = ", ".join(repr(layer.source) for layer in head)
            return features, head, f"the model's own trained layers {names}"
        if source.head_init == "model":
            shape = "a ReLU Dense of head.hidden_units then " if hidden else ""
            raise ConfigError(
                f"model.backbone.head_init = 'model': the last layers of "
                f"{source.path.name} are not {shape}a Dense of {len(spec.classes)} units "
                "(one per class); set head_init = 'random' or match the head section")
    embedding = backbone.outputs[0]
    if len(embedding.shape) != 2:
        raise ConfigError(f"model.backbone: the backbone's output must be a flat embedding "
                          f"(batch, features), got {tuple(embedding.shape)}; end it with a "
                          "pooling or Flatten layer")
    head = init_head(int(embedding.shape[-1]), spec.head, len(spec.classes), seed)
    if source.head_init == "file":
        assert source.head_weights is not None
        head = read_head_weights(source.head_weights, head)
        return backbone, head, f"the weights in {source.head_weights.name}"
    return backbone, head, "random (Glorot uniform, seeded)"


def _data_name(spec, given: LabeledData | None) -> str:
    if given is not None:
        return f"the data given ({len(given):,} rows)"
    if spec.dataset == "file":
        return str(spec.path.name)
    return spec.dataset
