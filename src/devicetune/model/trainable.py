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
    """

    spec: HeadSpec
    backbone: keras.Model
    feature_model: keras.Model
    layers: list[DenseParams]
    sample: LabeledData | None

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
                          verbose: int = 0) -> TrainableModel:
    """Build the backbone, pretrain it if asked, and cut it into frozen and trainable.

    Raises:
        ConfigError: the spec does not fit the data or the backbone file.
        ExportError: the backbone has a layer the export paths cannot carry.
    """
    from devicetune.model.backbone import (
        builtin_backbone,
        check_exportable,
        load_backbone,
        split_trainable,
    )
    from devicetune.model.head import init_head
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
    embedding_dim = int(backbone.outputs[0].shape[-1])
    if len(backbone.outputs[0].shape) != 2:
        raise ConfigError(f"model.backbone: the backbone's output must be a flat embedding "
                          f"(batch, features), got {tuple(backbone.outputs[0].shape)}; end "
                          "it with a pooling or Flatten layer")
    head = init_head(embedding_dim, spec.head, len(spec.classes), seed)
    sample = None
    if source.pretrain is not None:
        shape = tuple(int(d) for d in backbone.inputs[0].shape[1:])
        data = pretraining_data(source.pretrain, seed, data_dir, shape, len(spec.classes))
        head = pretrain(backbone, head, data, source.pretrain, seed,
                        adapt_normalization=source.architecture is not None,
                        verbose=verbose)
        rows = np.random.default_rng(seed).choice(len(data), min(512, len(data)),
                                                  replace=False)
        sample = data.select(np.sort(rows))
    feature_model, tail = split_trainable(backbone, source.trainable_dense_layers)
    return TrainableModel(spec=spec, backbone=backbone, feature_model=feature_model,
                          layers=[*tail, *head], sample=sample)
