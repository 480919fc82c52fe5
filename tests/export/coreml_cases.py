"""Core ML specs of the export variants, converted once per session (about 1.5 s each).

The variants are the TFLite tests' own (same arguments, so the `variant` fixture's cache
shares their models and flatbuffers): SGD with momentum and Adam, linear and MLP heads, a
trainable backbone tail, and the small image backbone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from coremltools.proto import Model_pb2

    from tests.export.conftest import Variant

VARIANTS = [
    dict(head="linear", optimizer="adam"),
    dict(head="mlp", optimizer="sgd"),
    dict(head="mlp", optimizer="adam"),
    dict(head="linear", optimizer="adam", tail=1),
    dict(head="mlp", optimizer="sgd", architecture="conv2d_small"),
]
IDS = ["-".join(str(v) for v in kw.values()) for kw in VARIANTS]

_CONVERTED: dict[int, tuple[Model_pb2.Model, Model_pb2.Model]] = {}


def converted(v: Variant) -> tuple[Model_pb2.Model, Model_pb2.Model]:
    """``(backbone spec, updatable classifier spec)`` of a variant; do not modify them."""
    from devicetune.export.coreml import build_classifier_spec, convert_backbone

    if id(v) not in _CONVERTED:
        backbone = convert_backbone(v.model.feature_model)
        spec = build_classifier_spec(backbone, v.model)
        _CONVERTED[id(v)] = (backbone, spec)
    return _CONVERTED[id(v)]
