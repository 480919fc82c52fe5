"""The kNN variant for iOS: learn new classes on the phone from a few examples.

``ModelKNN.mlmodel`` is a pipeline classifier: the backbone (with its trainable tail frozen
at the shipped weights) maps ``x`` to the embedding, then a k-nearest-neighbours
classifier, empty and updatable, labels it. An app adds labelled examples with
`MLUpdateTask`; any string is a label, so classes the model never saw are learned too.
Until the first example it predicts ``unknown``.

`KNNReference` runs and updates the pipeline in numpy, from the spec::

    knn = KNNReference("ModelKNN.mlmodel")
    knn.features(x) -> (N, D) embedding
    knn.update(data, labels)               # adds the examples (what MLUpdateTask does)
    knn.predict_labels(data) -> (N,) str
    knn.save(path)

Prediction: squared Euclidean distance to every stored example, the ``k`` nearest vote,
each with weight ``1 / distance`` (inverse-distance weighting; exact matches outvote
everything else) or 1 (uniform); ties go to the label met first among the neighbours,
nearest first. Core ML does not document its tie-breaking; this is the reference's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from devicetune.artifacts.manifest import KNNEntry, sha256_file
from devicetune.device.coreml_files import import_coremltools, load_spec, write_spec
from devicetune.device.coreml_layers import compile_layer, run_layers
from devicetune.device.coreml_reference import CHUNK
from devicetune.errors import ArtifactError
from devicetune.export.coreml import EMBEDDING, INPUT, KNN_DEFAULT_LABEL, LABEL, PROBABILITIES

if TYPE_CHECKING:
    from coremltools.proto import Model_pb2

    from devicetune.model.backbone import DenseParams

COREML_KNN_FILE = "ModelKNN.mlmodel"


def build_knn_spec(backbone: Model_pb2.Model, tail: Sequence[DenseParams], feature_dim: int,
                   neighbors: int) -> Model_pb2.Model:
    """The pipeline: backbone, tail dense layers (not updatable), the embedding flattened
    to ``(D,)``, then an empty updatable kNN classifier with string labels."""
    import_coremltools()
    from coremltools.models.nearest_neighbors import KNearestNeighborsClassifierBuilder
    from coremltools.models.neural_network import NeuralNetworkBuilder
    from coremltools.proto import Model_pb2, NeuralNetwork_pb2

    embedder = Model_pb2.Model()
    embedder.specificationVersion = max(backbone.specificationVersion, 4)
    embedder.description.input.extend(backbone.description.input)
    embedder.neuralNetwork.arrayInputShapeMapping = NeuralNetwork_pb2.EXACT_ARRAY_MAPPING
    embedder.neuralNetwork.layers.extend(backbone.neuralNetwork.layers)
    builder = NeuralNetworkBuilder(spec=embedder)
    previous, dim = backbone.description.output[0].name, feature_dim
    if tail:
        builder.add_expand_dims("tail_expand", input_name=previous, output_name="tail_in",
                                axes=[2, 3])
        previous = "tail_in"
        for i, layer in enumerate(tail):
            builder.add_inner_product(
                f"tail{i}", W=np.ascontiguousarray(layer.kernel.T, np.float32),
                b=np.asarray(layer.bias, np.float32), input_channels=layer.kernel.shape[0],
                output_channels=layer.units, has_bias=True, input_name=previous,
                output_name=f"tail{i}_out")
            previous = f"tail{i}_out"
            if layer.activation == "relu":
                builder.add_activation(f"tail{i}_relu", non_linearity="RELU",
                                       input_name=previous, output_name=f"tail{i}_relu_out")
                previous = f"tail{i}_relu_out"
        dim = tail[-1].units
    builder.add_reshape_static("embedding_flat", previous, EMBEDDING, [dim])
    output = embedder.description.output.add()
    output.name = EMBEDDING
    output.type.multiArrayType.dataType = Model_pb2.ArrayFeatureType.FLOAT32
    output.type.multiArrayType.shape.append(dim)

    knn = KNearestNeighborsClassifierBuilder(
        input_name=EMBEDDING, output_name=LABEL, number_of_dimensions=dim,
        default_class_label=KNN_DEFAULT_LABEL, number_of_neighbors=neighbors,
        weighting_scheme="inverse_distance", index_type="linear").spec
    knn.description.output[1].name = PROBABILITIES
    knn.description.predictedProbabilitiesName = PROBABILITIES

    pipeline = Model_pb2.Model()
    pipeline.specificationVersion = max(embedder.specificationVersion,
                                        knn.specificationVersion)
    pipeline.isUpdatable = True  # only the last model is: Core ML's rule for pipelines
    description = pipeline.description
    description.input.extend(embedder.description.input)
    description.output.extend(knn.description.output)
    description.predictedFeatureName = LABEL
    description.predictedProbabilitiesName = PROBABILITIES
    description.trainingInput.extend(embedder.description.input)
    description.trainingInput.extend([t for t in knn.description.trainingInput
                                      if t.name == LABEL])
    description.metadata.shortDescription = (
        f"devicetune: an empty {neighbors}-nearest-neighbours classifier on the backbone's "
        "embedding; add labelled examples with MLUpdateTask")
    models = pipeline.pipelineClassifier.pipeline
    models.models.add().CopyFrom(embedder)
    models.models.add().CopyFrom(knn)
    models.names.extend(["embedder", "knn"])
    return pipeline


def knn_entry(spec: Model_pb2.Model, path: Path) -> KNNEntry:
    """The manifest entry of the kNN pipeline."""
    knn = spec.pipelineClassifier.pipeline.models[-1].kNearestNeighborsClassifier
    return KNNEntry(
        file=Path(path).name, sha256=sha256_file(path),
        neighbors=int(knn.numberOfNeighbors.defaultValue),
        embedding_dim=int(knn.nearestNeighborsIndex.numberOfDimensions),
        default_label=knn.defaultStringLabel,
        weighting="inverse_distance" if knn.HasField("inverseDistanceWeighting")
        else "uniform",
    )


class KNNReference:
    """The kNN pipeline run and updated in numpy.

    Args:
        model: path of ``ModelKNN.mlmodel`` or its spec (copied).

    Raises:
        ArtifactError: not a pipeline ending in a kNN classifier.
        ExportError: the embedder has a layer type without a reference kernel.
    """

    def __init__(self, model: str | Path | Model_pb2.Model) -> None:
        loaded = load_spec(model)
        self._spec = type(loaded)()
        self._spec.CopyFrom(loaded)
        models = self._spec.pipelineClassifier.pipeline.models
        if (self._spec.WhichOneof("Type") != "pipelineClassifier" or len(models) != 2
                or models[1].WhichOneof("Type") != "kNearestNeighborsClassifier"):
            raise ArtifactError("not a devicetune kNN model (a pipeline of an embedder and "
                                "a k-nearest-neighbours classifier)")
        embedder, knn = models[0], models[1].kNearestNeighborsClassifier
        self.input_shape = tuple(int(d) for d in
                                 embedder.description.input[0].type.multiArrayType.shape)
        self._input = embedder.description.input[0].name or INPUT
        self._output = embedder.description.output[0].name
        self._steps = [(list(layer.input), list(layer.output), compile_layer(layer))
                       for layer in embedder.neuralNetwork.layers]
        index = knn.nearestNeighborsIndex
        self.embedding_dim = int(index.numberOfDimensions)
        self.neighbors = int(knn.numberOfNeighbors.defaultValue)
        self.default_label = knn.defaultStringLabel
        self.inverse_distance = knn.HasField("inverseDistanceWeighting")
        self._samples = np.array([list(v.vector) for v in index.floatSamples],
                                 np.float32).reshape(-1, self.embedding_dim)
        self._labels = [str(v) for v in knn.stringClassLabels.vector]

    @property
    def examples(self) -> int:
        """How many labelled examples the model holds."""
        return len(self._labels)

    def features(self, x: np.ndarray) -> np.ndarray:
        """The embedding the kNN compares, ``(N, D)``."""
        x = np.asarray(x, np.float32)
        if x.shape[1:] != self.input_shape:
            x = x.reshape(len(x), *self.input_shape)
        out = [run_layers(self._steps, {self._input: x[i:i + CHUNK]},
                          stop_at=self._output)[self._output]
               for i in range(0, len(x), CHUNK)]
        return np.concatenate(out).reshape(len(x), -1)

    def update(self, data: np.ndarray, labels: Sequence[Any]) -> None:
        """Add labelled examples (inputs ``x`` or embeddings)."""
        embedding = self._as_embedding(data)
        if len(labels) != len(embedding):
            raise ValueError(f"{len(labels)} labels for {len(embedding)} examples")
        self._samples = np.concatenate([self._samples, embedding])
        self._labels += [str(label) for label in labels]

    def predict_labels(self, data: np.ndarray) -> np.ndarray:
        """The label Core ML reports for each example."""
        embedding = self._as_embedding(data).astype(np.float64)
        if not self._labels:
            return np.array([self.default_label] * len(embedding))
        samples = self._samples.astype(np.float64)
        distances = (np.sum(embedding ** 2, axis=1)[:, None] - 2 * embedding @ samples.T
                     + np.sum(samples ** 2, axis=1)[None, :])
        distances = np.maximum(distances, 0.0)
        k = min(self.neighbors, len(self._labels))
        nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
        return np.array([self._vote(distances[row, idx], idx)
                         for row, idx in enumerate(nearest)])

    @property
    def spec(self) -> Model_pb2.Model:
        """The pipeline with the examples added so far."""
        from coremltools.proto import Model_pb2

        spec = Model_pb2.Model()
        spec.CopyFrom(self._spec)
        knn = spec.pipelineClassifier.pipeline.models[1].kNearestNeighborsClassifier
        knn.nearestNeighborsIndex.ClearField("floatSamples")
        for row in self._samples:
            knn.nearestNeighborsIndex.floatSamples.add().vector.extend(row.tolist())
        knn.stringClassLabels.ClearField("vector")
        knn.stringClassLabels.vector.extend(self._labels)
        return spec

    def save(self, path: str | Path) -> Path:
        """Write the pipeline with the examples added so far."""
        return write_spec(self.spec, path)

    def _vote(self, distances: np.ndarray, indices: np.ndarray) -> str:
        exact = distances == 0.0
        if self.inverse_distance and exact.any():
            weights = exact.astype(np.float64)
        elif self.inverse_distance:
            weights = 1.0 / distances
        else:
            weights = np.ones_like(distances)
        votes: dict[str, float] = {}
        for index, weight in zip(indices, weights, strict=True):
            label = self._labels[index]
            votes[label] = votes.get(label, 0.0) + float(weight)
        best = max(votes.values())
        return next(label for label, vote in votes.items() if vote == best)

    def _as_embedding(self, data: np.ndarray) -> np.ndarray:
        data = np.asarray(data, np.float32)
        shape = data.shape[1:]
        if shape in (self.input_shape, self.input_shape[1:]):
            return self.features(data)
        if shape != (self.embedding_dim,):
            raise ValueError(f"data of shape {data.shape} is neither inputs "
                             f"{self.input_shape} nor embeddings ({self.embedding_dim},)")
        return data
