"""Core ML's rules for an updatable neural network classifier, as devicetune relies on
them: what its validator would refuse (no Core ML runtime runs on Linux to ask it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from coremltools.proto import Model_pb2


def updatable_problems(spec: Model_pb2.Model) -> list[str]:
    """What Core ML's validator would refuse in an updatable neural network classifier
    (the rules devicetune relies on; empty when all hold)."""
    problems = []
    if not spec.isUpdatable:
        problems.append("isUpdatable is false")
    if spec.specificationVersion < 4:
        problems.append(f"specification version {spec.specificationVersion} < 4")
    if spec.WhichOneof("Type") != "neuralNetworkClassifier":
        return [*problems, f"the model is a {spec.WhichOneof('Type')}, not a classifier"]
    nn = spec.neuralNetworkClassifier
    updatable = [layer for layer in nn.layers if layer.isUpdatable]
    if not updatable:
        problems.append("no layer is updatable")
    for layer in updatable:
        kind = layer.WhichOneof("layer")
        params = getattr(layer, kind)
        if kind not in ("innerProduct", "convolution"):
            problems.append(f"layer {layer.name!r} ({kind}) cannot be updatable")
        elif not params.weights.isUpdatable or (params.hasBias and not params.bias.isUpdatable):
            problems.append(f"layer {layer.name!r} has weights not marked updatable")
    losses = nn.updateParams.lossLayers
    producers = {out: layer for layer in nn.layers for out in layer.output}
    if len(losses) != 1 or losses[0].WhichOneof("LossLayerType") != (
            "categoricalCrossEntropyLossLayer"):
        problems.append("expected exactly one categorical cross-entropy loss")
    else:
        source = producers.get(losses[0].categoricalCrossEntropyLossLayer.input)
        if source is None or source.WhichOneof("layer") != "softmax":
            problems.append("the loss does not sit on a softmax output")
    problems += _backprop_problems(nn, producers)
    inputs = {t.name for t in spec.description.input}
    training = {t.name for t in spec.description.trainingInput}
    if not inputs <= training or spec.description.predictedFeatureName not in training:
        problems.append(f"training inputs {sorted(training)} must hold {sorted(inputs)} and "
                        f"{spec.description.predictedFeatureName!r}")
    optimizer = nn.updateParams.optimizer.WhichOneof("OptimizerType")
    if optimizer is None:
        problems.append("no optimizer")
    if nn.updateParams.epochs.defaultValue < 1:
        problems.append("epochs not set")
    return problems


def _backprop_problems(nn: Any, producers: dict[str, Any]) -> list[str]:
    """Core ML backpropagates only through some layer types; an updatable layer above
    any other layer (on the way from the loss) is refused. The set is Core ML's own
    (``isLayerSupportedForBackprop`` in coremltools' mlmodel validator); reshape and
    elementwise layers are not in it."""
    passable = {"convolution", "innerProduct", "flatten", "pooling", "batchnorm"}
    passable_activations = {"ReLU", "sigmoid", "tanh"}
    problems = []
    if len(nn.updateParams.lossLayers) != 1:
        return problems
    blocked = None
    queue = [nn.updateParams.lossLayers[0].categoricalCrossEntropyLossLayer.input]
    seen: set[str] = set()
    while queue:
        layer = producers.get(queue.pop(0))
        if layer is None or layer.name in seen:
            continue
        seen.add(layer.name)
        kind = layer.WhichOneof("layer")
        if layer.isUpdatable and blocked is not None:
            problems.append(f"layer {blocked!r} cannot backpropagate to updatable layer "
                            f"{layer.name!r}")
        ok = kind in passable or kind == "softmax" or (
            kind == "activation"
            and layer.activation.WhichOneof("NonlinearityType") in passable_activations)
        if not ok and blocked is None:
            blocked = layer.name
        queue.extend(layer.input)
    return problems
