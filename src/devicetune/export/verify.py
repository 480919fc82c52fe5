"""Parity: the exported artifacts compute what the TensorFlow definition computes.

Each check runs the same inputs through TensorFlow (the `DeviceProgram` itself) and
through an exported artifact, and records the largest absolute difference against a
tolerance. The build writes them to ``parity.json`` and fails if any check fails.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from devicetune.atomic import atomic_write_json
from devicetune.device.batching import padded_batches

if TYPE_CHECKING:
    from devicetune.device.coreml_reference import CoreMLReference
    from devicetune.device.litert import LiteRTModel
    from devicetune.export.coreml_knn import KNNReference
    from devicetune.model.program import DeviceProgram

PARITY_FILE = "parity.json"
INFER_TOLERANCE = 1e-5
TRAIN_RELATIVE_TOLERANCE = 1e-4
# Of the learning rate: see `tflite_parity`. A wrong gradient, rate, mask or bias
# correction moves the weights by many steps over a parity run, not by half of one.
ADAM_STEP_FRACTION = 0.5
# The Core ML reference interpreter against TensorFlow (absolute, on probabilities and
# on weights after an epoch).
COREML_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Check:
    """One comparison. For relative checks ``tolerance`` is already scaled by the
    reference's magnitude, so ``passed == (max_abs_diff <= tolerance)`` always."""

    name: str
    max_abs_diff: float
    tolerance: float
    passed: bool
    note: str = ""

    @classmethod
    def compare(cls, name: str, ours: np.ndarray, reference: np.ndarray, tolerance: float,
                relative: bool = False, note: str = "") -> Check:
        ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
        if ours.shape != reference.shape:
            return cls(name, float("inf"), tolerance, False,
                       f"shape {ours.shape} != {reference.shape}")
        diff = float(np.max(np.abs(ours - reference))) if ours.size else 0.0
        if relative:
            tolerance = tolerance * max(1e-12, float(np.max(np.abs(reference))))
            note = note or "tolerance relative to the reference's largest magnitude"
        return cls(name, diff, float(tolerance), bool(diff <= tolerance), note)


@dataclass
class ParityReport:
    """Every check, which inputs they ran on (real rows, or random ones), and for a
    quantized build the float32 model's drift (reported, not checked: each artifact must
    equal the quantized reference; see export/quantize)."""

    checks: list[Check]
    inputs: str = "random normal inputs"
    drift: dict[str, float | str] | None = None

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"passed": self.passed, "inputs": self.inputs,
                                  "checks": [asdict(c) for c in self.checks]}
        if self.drift is not None:
            out["quantization_drift"] = self.drift
        return out

    def write(self, folder: Path) -> Path:
        return atomic_write_json(Path(folder) / PARITY_FILE, self.to_dict())

    @classmethod
    def read(cls, folder: Path) -> ParityReport:
        raw = json.loads((Path(folder) / PARITY_FILE).read_text())
        return cls([Check(**c) for c in raw["checks"]],
                   inputs=str(raw.get("inputs", "random normal inputs")),
                   drift=raw.get("quantization_drift"))


def tflite_parity(program: DeviceProgram, lite: LiteRTModel, x: np.ndarray, y: np.ndarray,
                  steps: int, seed: int, backbone_tolerance: float | None = None,
                  backbone_note: str = "") -> list[Check]:
    """Compare the LiteRT artifact with TensorFlow on every signature.

    ``program`` and ``lite`` must start from the same weights; both are trained here.
    ``backbone_tolerance`` holds ``infer`` and ``embed`` (the signatures that run the
    backbone) when LiteRT's backbone cannot equal TensorFlow's (int8 activations); None
    means `INFER_TOLERANCE`.
    """
    if backbone_tolerance is None:
        backbone_tolerance = INFER_TOLERANCE
    rng = np.random.default_rng(seed)
    checks = [
        Check.compare("tflite.infer", lite.infer(x), program.infer(x)["probabilities"],
                      backbone_tolerance, note=backbone_note),
    ]
    reference_features = program.embed(x)["features"].numpy()
    features = lite.embed(x)
    checks.append(Check.compare("tflite.embed", features, reference_features,
                                backbone_tolerance, relative=True,
                                note=backbone_note and f"{backbone_note}; relative"))
    labels = y.astype(np.int32)
    first_batch = next(padded_batches(features, labels, lite.batch_size))
    loss, correct = lite.evaluate(*first_batch)
    reference = program.evaluate(*first_batch)
    checks.append(Check.compare("tflite.evaluate.loss", loss, reference["loss"],
                                INFER_TOLERANCE))
    checks.append(Check.compare("tflite.evaluate.correct", correct, reference["correct"], 0.0))

    def train_both(n: int, private: bool = False) -> tuple[list[float], list[float]]:
        ours, theirs = [], []
        signature = program.train_dp if private else program.train
        for _ in range(n):
            # Partial batches on purpose: 1..batch_size real rows, the rest masked.
            real = int(rng.integers(1, lite.batch_size + 1))
            rows = rng.choice(len(features), size=real, replace=False)
            batch = next(padded_batches(features[rows], labels[rows], lite.batch_size))
            ours.append(lite.train(*batch, private=private))
            theirs.append(float(signature(*batch)["loss"]))
        return ours, theirs

    def weights_check(name: str, note: str) -> Check:
        ours = np.concatenate([w.ravel() for w in _ordered(lite.get_weights(), program)])
        reference = np.concatenate([w.ravel() for w in program.weights()])
        return _adam_floor(Check.compare(name, ours, reference, TRAIN_RELATIVE_TOLERANCE,
                                         relative=True, note=note), program)

    train_both(steps)
    checks.append(weights_check(f"tflite.train.{steps}_steps",
                                f"weights after {steps} steps of partial batches"))
    learning_rate = float(program.optimizer.learning_rate.numpy()) / 2
    lite.configure(learning_rate, proximal_mu=0.1)
    program.configure(np.float32(learning_rate), np.float32(0.1))
    train_both(max(1, steps // 5))
    checks.append(weights_check("tflite.train.proximal",
                                "after configure(learning_rate/2, proximal_mu=0.1)"))
    ours, theirs = train_both(1, private=True)
    checks.append(Check.compare("tflite.train_dp.loss", ours, theirs, INFER_TOLERANCE,
                                note="loss before the noisy update"))
    if "train_masked" in lite.signatures:
        class_mask, rows = _half_of_the_classes(program.num_classes, labels)
        # train_dp's noise differs between the two: start both from the same weights.
        common = program.weights()
        program.set_weights(*common)
        lite.set_weights(dict(zip(program.names, common, strict=True)))
        for _ in range(max(1, steps // 5)):
            chosen = rng.choice(rows, size=int(rng.integers(1, lite.batch_size + 1)))
            batch = next(padded_batches(features[chosen], labels[chosen], lite.batch_size))
            lite.train(*batch, class_mask=class_mask)
            program.train_masked(*batch, class_mask)
        checks.append(weights_check("tflite.train_masked",
                                    "restricted softmax (FedRS) on half of the classes"))

    probe = {name: rng.normal(size=w.shape).astype(np.float32)
             for name, w in zip(program.names, program.weights(), strict=True)}
    lite.set_weights(probe)
    back = lite.get_weights()
    diff = max(float(np.max(np.abs(back[k] - probe[k]))) for k in probe)
    checks.append(Check("tflite.weights_roundtrip", diff, 0.0, diff == 0.0,
                        "set_weights then get_weights returns the same bits"))
    return checks


def _ordered(weights: dict[str, np.ndarray], program: DeviceProgram) -> list[np.ndarray]:
    return [weights[name] for name in program.names]


def coreml_parity(reference: CoreMLReference, program: DeviceProgram,
                  tflite_weights: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray,
                  seed: int, scratch: Path) -> list[Check]:
    """Compare the Core ML model, run by the reference interpreter, with TensorFlow.

    ``program`` must be fresh (the shipped weights, optimizer state at zero): it trains
    one epoch here. ``tflite_weights`` are the LiteRT artifact's untrained `get_weights`.
    ``scratch`` is a folder for the save-and-reload check.
    """
    from devicetune.device.coreml_reference import CoreMLReference
    from devicetune.export.coreml_rules import updatable_problems

    problems = updatable_problems(reference.spec)
    checks = [Check("coreml.updatable", float(len(problems)), 0.0, not problems,
                    "; ".join(problems) or "updatable classifier, loss on a softmax, "
                    f"layers {', '.join(reference.updatable_layers)}")]
    checks.append(Check.compare("coreml.predict", reference.predict(x),
                                program.infer(x)["probabilities"], COREML_TOLERANCE))
    features = program.embed(x)["features"].numpy()
    checks.append(Check.compare("coreml.features", reference.features(x), features,
                                COREML_TOLERANCE, relative=True))
    checks.append(Check.compare(
        "coreml.weights_equal_tflite", _flat(reference.get_weights(), program.names),
        _flat(tflite_weights, program.names), 0.0,
        note="the Core ML head carries the TFLite artifact's weights, bit for bit"))

    # One epoch as MLUpdateTask runs it, and the same batches, in the same order, through
    # the TensorFlow step (the last batch partial, padded and masked). Both start from the
    # same features: Adam's first steps move a weight by about lr * sign(gradient), so a
    # gradient near zero would turn feature rounding (checked above) into weight noise.
    labels = y.astype(np.int32)
    reference.update(features, labels, epochs=1, shuffle_seed=seed)
    order = np.random.default_rng(seed).permutation(len(labels))
    for batch in padded_batches(features, labels, reference.batch_size, order=order):
        program.train(*batch)
    ours = _flat(reference.get_weights(), program.names)
    checks.append(_adam_floor(Check.compare(
        "coreml.update.1_epoch", ours, np.concatenate([w.ravel() for w in program.weights()]),
        COREML_TOLERANCE, note=f"{len(labels)} examples, batch {reference.batch_size}, "
        f"{reference.update_parameters.optimizer}; float32 TensorFlow against the float64 "
        "reference (Adam magnifies the rounding of near-zero gradients)"), program))

    saved = CoreMLReference(reference.save(Path(scratch) / "updated.mlmodel"))
    checks.append(Check.compare("coreml.save_reload", _flat(saved.get_weights(), program.names),
                                ours, 0.0, note="updated weights survive save and reload"))

    # The restricted softmax: the frozen class_offset layer carries the mask on iOS.
    class_mask, rows = _half_of_the_classes(len(reference.classes), labels)
    program.set_weights(*[reference.get_weights()[n] for n in program.names])  # fresh state
    reference.update(features[rows], labels[rows], epochs=1, shuffle_seed=seed,
                     class_mask=class_mask)
    order = np.random.default_rng(seed).permutation(len(rows))
    for batch in padded_batches(features[rows], labels[rows], reference.batch_size,
                                order=order):
        program.train_masked(*batch, class_mask)
    checks.append(_adam_floor(Check.compare(
        "coreml.update_masked.1_epoch", _flat(reference.get_weights(), program.names),
        np.concatenate([w.ravel() for w in program.weights()]), COREML_TOLERANCE,
        note="restricted softmax (FedRS) on half of the classes, through the frozen "
        "class_offset layer"), program))
    return checks


def _adam_floor(check: Check, program: DeviceProgram) -> Check:
    """``check`` with, under Adam, a tolerance of at least half of one step.

    Adam divides each step by the root of its squared-gradient average, so where a
    confident model's gradients are near zero, float32 rounding (TensorFlow's kernels
    against XNNPACK's, which differ by CPU, or against the float64 Core ML reference)
    changes steps by up to their size. A wrong learning rate still fails: it moves every
    weight by a whole step's difference (tests/export/test_tflite.py).
    """
    spec = program.optimizer_spec
    floor = ADAM_STEP_FRACTION * spec.learning_rate
    if spec.name != "adam" or check.tolerance >= floor:
        return check
    return Check(check.name, check.max_abs_diff, floor, check.max_abs_diff <= floor,
                 f"{check.note}; Adam: tolerance half of one step (0.5 x learning rate)")


def _half_of_the_classes(classes: int, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A class mask holding the even classes, and the rows whose label it holds."""
    class_mask = (np.arange(classes) % 2 == 0).astype(np.float32)
    return class_mask, np.flatnonzero(class_mask[labels] > 0)


def knn_parity(knn: KNNReference, embedding: np.ndarray, x: np.ndarray, labels: list[str]
               ) -> list[Check]:
    """The kNN pipeline: its embedding equals the backbone's, it starts empty, and the
    examples it is given are classified as their labels afterwards."""
    checks = [Check.compare("coreml_knn.embedding", knn.features(x), embedding,
                            COREML_TOLERANCE, relative=True)]
    before = knn.predict_labels(x)
    knn.update(x, labels)
    after = knn.predict_labels(x)
    wrong = float(np.mean(after != np.asarray(labels)))
    empty = bool(np.all(before == knn.default_label))
    checks.append(Check("coreml_knn.adds_and_classifies", wrong, 0.0, empty and wrong == 0.0,
                        f"predicts {knn.default_label!r} while empty; after adding "
                        f"{len(labels)} examples, the share misclassified"))
    return checks


def _flat(weights: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(weights[name]).ravel() for name in names])
