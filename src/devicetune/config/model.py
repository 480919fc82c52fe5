"""`[model]` and `[export]`: the backbone, head and optimizer an app ships, and the
artifacts built from them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from devicetune.config.base import PositiveFloat, Section, parse_id_list, resolve_relative_path
from devicetune.config.data_file import DataFileFields

BUILTIN_ARCHITECTURES = ("conv1d_small", "conv2d_small", "dense_small")


class PretrainSpec(DataFileFields):
    """Central pretraining of the backbone and head before they ship, on a dataset
    slice: synthetic, a shared dataset, or a team's own file (``dataset = "file"``)."""

    dataset: Literal["synthetic", "har", "fsdd", "file"]
    subjects: list[int] = Field(default_factory=list, description="users to pretrain on")
    epochs: int = Field(5, ge=1, le=1000)
    batch_size: int = Field(64, ge=1)
    learning_rate: PositiveFloat = 1e-3
    synthetic_devices: int = Field(200, ge=1, description="users drawn when synthetic")

    _ids = field_validator("subjects", mode="before")(parse_id_list)

    @model_validator(mode="after")
    def _path_with_file(self) -> PretrainSpec:
        self.check_file_source(self.dataset == "file", "dataset")
        return self


class BackboneSpec(Section):
    """The frozen feature extractor: a built-in architecture or a saved Keras model."""

    architecture: Literal["conv1d_small", "conv2d_small", "dense_small"] | None = None
    path: Path | None = Field(None, description="a .keras file")
    head_init: Literal["auto", "model", "random", "file"] = Field(
        "auto",
        description="where the head's first weights come from: 'model' = the .keras "
        "model's own last Dense layers (its trained classifier), 'random', 'file' = "
        "head_weights; 'auto' = 'model' when those layers match the head, else 'random'",
    )
    head_weights: Path | None = Field(
        None, description="head_init = 'file': a .npz of kernel_0, bias_0, kernel_1, ..."
    )
    embedding_dim: int = Field(64, ge=2, le=4096)
    trainable_dense_layers: int = Field(
        0, ge=0, le=4, description="how many of the backbone's last Dense layers also train"
    )
    pretrain: PretrainSpec | None = None

    _path = field_validator("path", "head_weights", mode="after")(resolve_relative_path)

    @model_validator(mode="after")
    def _one_source(self) -> BackboneSpec:
        if (self.architecture is None) == (self.path is None):
            raise ValueError(
                f"set exactly one of architecture ({', '.join(map(repr, BUILTIN_ARCHITECTURES))}"
                ") or path (a .keras file)"
            )
        if self.path is not None and self.path.suffix != ".keras":
            raise ValueError(f"path {str(self.path)!r} must be a .keras file")
        if (self.head_init == "file") != (self.head_weights is not None):
            raise ValueError("head_weights (a .npz) goes with head_init = 'file', and only "
                             "with it")
        if self.head_init == "model" and self.path is None:
            raise ValueError("head_init = 'model' takes the head from a .keras model: set "
                             "path")
        return self


class HeadLayers(Section):
    """The trainable head on top of the backbone's embedding."""

    type: Literal["linear", "mlp"] = "linear"
    hidden_units: int = Field(64, ge=1, le=4096, description="MLP only")


class OptimizerSpec(Section):
    """The optimizer compiled into the on-device training step."""

    name: Literal["sgd", "adam"] = "adam"
    learning_rate: PositiveFloat = 1e-3
    momentum: float = Field(0.0, ge=0.0, lt=1.0, description="SGD only")
    beta_1: float = Field(0.9, ge=0.0, lt=1.0, description="Adam only")
    beta_2: float = Field(0.999, ge=0.0, lt=1.0, description="Adam only")
    epsilon: PositiveFloat = Field(1e-7, description="Adam only")


class HeadSpec(Section):
    """What ships and learns on the device: backbone, head, optimizer, batch."""

    classes: list[str] = Field(min_length=2, max_length=1000)
    input_shape: list[int] | None = Field(
        None, min_length=1, max_length=4, description="per example, without the batch"
    )
    backbone: BackboneSpec
    head: HeadLayers = HeadLayers()
    optimizer: OptimizerSpec = OptimizerSpec()
    batch_size: int = Field(8, ge=1, le=1024, description="static batch of train signatures")
    epochs: int = Field(5, ge=1, le=1000, description="default on-device epochs")

    @field_validator("classes", mode="before")
    @classmethod
    def _classes_from_count(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 2:
                raise ValueError(f"{value} classes: at least 2 are needed")
            return [str(i) for i in range(value)]
        return value

    @field_validator("classes")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("class names must be unique")
        return value

    @field_validator("input_shape")
    @classmethod
    def _positive_dims(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(d < 1 for d in value):
            raise ValueError(f"every dimension must be >= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _builtin_needs_shape(self) -> HeadSpec:
        if self.backbone.architecture is not None and self.input_shape is None:
            raise ValueError(
                "input_shape is required with a built-in architecture, e.g. [128, 9]"
            )
        return self


class ExportConfig(Section):
    """Which artifacts `build` writes, and the constants baked into them."""

    tflite: bool = True
    coreml: bool = True
    coreml_knn: bool = Field(False, description="also write an updatable kNN Core ML model")
    knn_neighbors: int = Field(3, ge=1, le=100)
    dp_clip_norm: PositiveFloat = Field(1.0, description="train_dp per-example clip norm")
    dp_noise_multiplier: float = Field(1.0, ge=0.0, description="train_dp noise / clip_norm")
    parity_steps: int = Field(100, ge=1, le=10_000, description="train steps in parity")
    quantize: Literal["none", "float16", "int8", "int8_full"] = Field(
        "none", description="the frozen backbone: float32, float16 or int8 kernels (one "
        "scale per output channel), or int8_full (int8 kernels, and in LiteRT int8 "
        "activations calibrated on the model's sample rows); the head stays float32")
    calibration: Literal["auto", "file", "random"] = Field(
        "auto",
        description="the rows parity checks run on: 'auto' = the pretraining data, else the "
        "fleet's data, else random (with a warning); 'file' = calibration_path",
    )
    calibration_path: Path | None = Field(
        None, description="calibration = 'file': a data file (.npz, .csv, .parquet)"
    )
    calibration_rows: int = Field(256, ge=8, le=100_000, description="rows parity uses")

    _calibration = field_validator("calibration_path", mode="after")(resolve_relative_path)

    @model_validator(mode="after")
    def _calibration_file(self) -> ExportConfig:
        if (self.calibration == "file") != (self.calibration_path is not None):
            raise ValueError("calibration_path goes with calibration = 'file', and only "
                             "with it")
        return self

    @model_validator(mode="after")
    def _knn_float_backbone(self) -> ExportConfig:
        if self.coreml_knn and self.quantize != "none":
            raise ValueError("coreml_knn = true needs quantize = \"none\" (the kNN model's "
                             "parity is checked against the float32 backbone)")
        return self
