"""`manifest.json`: what a model folder holds, how to call it, and where it came from.

The manifest is the contract between devicetune and the apps: every file's sha256, the
TFLite signature table, the Core ML update parameters, the class labels, the metrics and
the privacy spent to produce this version. It is parsed strictly (unknown keys are an
error), so an app or a verifier never acts on a field it does not understand.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from devicetune.errors import ArtifactError

MANIFEST_FILE = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorEntry(_Strict):
    """One input or output of a signature; ``-1`` in ``shape`` is a dynamic dimension."""

    name: str
    shape: list[int]
    dtype: str


class SignatureEntry(_Strict):
    inputs: list[TensorEntry]
    outputs: list[TensorEntry]


class TFLiteEntry(_Strict):
    """The Android artifact: a TFLite model with trainable signatures."""

    file: str
    sha256: str
    signatures: dict[str, SignatureEntry]
    builtin_ops: list[str] = Field(description="operator codes found in the flatbuffer")
    batch_size: int = Field(description="static batch of train, train_dp and evaluate")
    weight_names: list[str] = Field(description="order of get_weights / set_weights")
    dp_clip_norm: float
    dp_noise_multiplier: float
    head_activations: list[str] = Field(
        default_factory=list,
        description="activation of each trainable dense layer before the final softmax",
    )


class RangeEntry(_Strict):
    """A tunable Core ML update parameter: its default and the range the app may set."""

    default: float
    min: float
    max: float


class KNNEntry(_Strict):
    """The optional iOS kNN artifact: backbone embedding, then an updatable k-nearest-
    neighbours classifier that starts empty and learns from the examples an app adds."""

    file: str
    sha256: str
    neighbors: int
    embedding_dim: int
    default_label: str = Field(description="predicted while no example has been added")
    weighting: str = Field(description="'inverse_distance' or 'uniform'")


class CoreMLEntry(_Strict):
    """The iOS artifact: an updatable Core ML neural network."""

    file: str
    sha256: str
    updatable_layers: list[str]
    loss: str
    optimizer: str
    parameters: dict[str, RangeEntry] = Field(
        description="learning_rate, batch_size, epochs and the optimizer's own parameters")
    training_inputs: list[str] = Field(default_factory=list)
    shuffle: bool = Field(True, description="examples are shuffled every epoch")
    knn: KNNEntry | None = None
    class_offset_layer: str | None = Field(
        None, description="frozen inner product before the softmax: its bias, 0 for a "
                          "class the device holds and -1e4 for one it lacks, restricts "
                          "an update to the device's classes (FedRS)")
    class_offset_bias_offset: int | None = Field(
        None, ge=0, description="byte offset of that bias in the .mlmodel file: one "
                                "little-endian float32 per class, to write before compiling")


class PrivacyEntry(_Strict):
    """The user-level differential privacy spent to produce this version."""

    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    clip_norm: float
    rounds: int
    sampling_rate: float


class WrappedKeyEntry(_Strict):
    """The version's data key, wrapped for one recipient (see `artifacts.encryption`)."""

    recipient: str = Field(description="hex sha256 of the recipient's DER public key")
    ephemeral_public_key: str = Field(description="base64 X9.62 uncompressed P-256 point")
    wrapped_key: str = Field(description="base64 nonce(12) | AES-GCM ciphertext | tag(16)")


class EncryptedFileEntry(_Strict):
    """Where an encrypted payload file lives and what its plaintext hashes to."""

    file: str = Field(description="the ciphertext file in this folder")
    sha256: str = Field(description="sha256 of the plaintext")


class EncryptionEntry(_Strict):
    """How the payload files of an encrypted version are protected."""

    scheme: str
    recipients: list[WrappedKeyEntry]
    files: dict[str, EncryptedFileEntry] = Field(
        description="plaintext file name -> its ciphertext file")


class Manifest(_Strict):
    """A model version as the registry stores and the apps read it."""

    format_version: int = 1
    name: str
    version: int = Field(ge=1)
    parent_version: int | None = None
    created_at: str
    classes: list[str]
    input_shape: list[int]
    files: dict[str, str] = Field(description="file name -> sha256 of every payload file")
    tflite: TFLiteEntry | None = None
    coreml: CoreMLEntry | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    privacy: PrivacyEntry | None = None
    training_config_sha256: str | None = None
    quantize: str = Field(
        "none", description="how the frozen backbone's kernels are stored (none, float16, "
        "int8); the head, its optimizer state and update.npz are always float32")
    encryption: EncryptionEntry | None = Field(
        default=None, description="set when the payload files are encrypted; `files` then "
        "lists the ciphertext files")

    def write(self, folder: Path) -> Path:
        """Write ``folder/manifest.json`` (stable key order, so its hash is stable)."""
        path = Path(folder) / MANIFEST_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2, sort_keys=True)
                        + "\n")
        return path


def read_manifest(folder: Path) -> Manifest:
    """Parse ``folder/manifest.json`` strictly.

    Raises:
        ArtifactError: the manifest is missing, not JSON, or not a valid manifest.
    """
    path = Path(folder) / MANIFEST_FILE
    try:
        return Manifest.model_validate_json(path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: no manifest in this model folder") from None
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"])
        raise ArtifactError(f"{path}: invalid manifest: {field}: {first['msg']}") from None


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


RUNTIME_FILES = ("model.tflite", "Model.mlmodel")


def check_artifacts(folder: Path) -> Manifest:
    """Check a build folder before anything runs it: every file its manifest lists is
    there with the listed sha256, and the model files the runtimes open are listed.

    Unlike `signing.check_folder`, files the manifest does not list may sit beside the
    listed ones (nothing opens them), but ``model.tflite`` or ``Model.mlmodel`` may not:
    they are what a simulated device runs.

    Raises:
        ArtifactError: naming the file that is missing, unlisted or has another hash
            (a flipped bit, or another build's model).
    """
    folder = Path(folder)
    manifest = read_manifest(folder)
    for name in RUNTIME_FILES:
        if (folder / name).exists() and name not in manifest.files:
            raise ArtifactError(f"{folder / name}: not listed in {MANIFEST_FILE}, so it "
                                "cannot be checked; use the folder `devicetune build` wrote")
    for name, expected in sorted(manifest.files.items()):
        path = folder / name
        if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
            raise ArtifactError(f"{path}: listed in {MANIFEST_FILE} but missing; use the "
                                "folder `devicetune build` wrote")
        actual = sha256_file(path)
        if actual != expected:
            raise ArtifactError(f"{path}: sha256 {actual[:16]} does not match "
                                f"{MANIFEST_FILE} ({expected[:16]}): the file is corrupt or "
                                "from another build; rebuild or restore it")
    for entry in (manifest.tflite, manifest.coreml):
        if entry is not None and manifest.files.get(entry.file) != entry.sha256:
            raise ArtifactError(f"{folder / MANIFEST_FILE}: the entry for {entry.file} "
                                "disagrees with its listed sha256; rebuild the folder")
    return manifest
