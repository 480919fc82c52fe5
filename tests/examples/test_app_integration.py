"""The app code in examples/app_integration against what devicetune really emits.

The Kotlin and Swift cannot be compiled here, so this checks the contract they depend on:
every LiteRT signature, input and output name the Kotlin passes to ``runSignature``, every
Core ML feature name the Swift uses (in its role: input, output, training input), every
JSON key either reads, every registry path either requests, and the file names and
signature-format constants of their verifiers, all against a fresh build, a version
emitted and signed by `VersionEmitter`, and the real registry app. The checker reads the
sources themselves (comments stripped), so it checks what the code uses, and a test feeds
it mutated sources to show it reports each kind of mismatch.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devicetune.artifacts.manifest import MANIFEST_FILE
from devicetune.artifacts.signing import SIGNATURE_FILE
from tests.conftest import small_config
from tests.examples.app_contract import (
    Contract,
    all_problems,
    app_requests,
    check_file_names,
    check_json_keys,
    check_kotlin_signatures,
    check_registry_paths,
    check_signing_constants,
    check_swift_features,
    feature_type,
)
from tests.examples.app_sources import KOTLIN, SWIFT, calls, literal, read_sources, strip_comments


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory,
             small_artifacts: Path) -> Iterator[Contract]:
    import httpx

    from devicetune.artifacts.emit import VersionEmitter
    from devicetune.artifacts.keys import generate_key_pair
    from devicetune.device.coreml_files import load_spec
    from devicetune.device.litert import LiteRTModel
    from devicetune.registry import Registry, RegistryServer
    from devicetune.registry.api import create_app

    base = tmp_path_factory.mktemp("app-integration")
    keys = generate_key_pair(base / "keys")
    config = small_config(emit={"enabled": True, "registry": str(base / "registry"),
                                "private_key": str(keys.private_key)})
    emitter = VersionEmitter(config, small_artifacts, base / "run", {"accuracy": 0.5})
    build_manifest = json.loads((small_artifacts / MANIFEST_FILE).read_text())
    start = LiteRTModel(small_artifacts / "model.tflite").get_weights()
    weights = [start[n] * 1.01 for n in build_manifest["tflite"]["weight_names"]]
    outcome = emitter.emit(1, weights, {"accuracy": 0.5})
    assert outcome.emitted, outcome.reason
    registry = Registry(base / "registry")
    record = registry.record(config.name, outcome.version)
    folder = base / "version"
    folder.mkdir()
    for name in record.files:
        (folder / name).write_bytes(registry.file(config.name, outcome.version, name)[0]
                                    .read_bytes())
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    spec = load_spec(folder / manifest["coreml"]["file"])
    description = spec.description
    bundle = json.loads((folder / SIGNATURE_FILE).read_bytes())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    manifests = [manifest, build_manifest]
    with RegistryServer(registry, token=None) as server, \
            httpx.Client(base_url=server.url, timeout=30) as client:
        latest = client.get(f"/v1/models/{config.name}/latest",
                            params={"device_id": "device-1", "platform": "android"})
        assert latest.status_code == 200, latest.text
        yield Contract(
            manifest=manifest, build_manifest=build_manifest,
            spec={"inputs": {f.name: feature_type(f) for f in description.input},
                  "outputs": {f.name: feature_type(f) for f in description.output},
                  "training": {f.name: feature_type(f) for f in description.trainingInput},
                  "predicted": description.predictedFeatureName,
                  "probabilities": description.predictedProbabilitiesName},
            documents={"ModelManifest.kt": manifests, "ModelManifest.swift": manifests,
                       "DevicetuneModel.kt": manifests, "DevicetuneModel.swift": manifests,
                       "SignatureVerifier.kt": [bundle, statement],
                       "SignatureVerifier.swift": [bundle, statement],
                       "ModelUpdater.kt": [latest.json()], "ModelUpdater.swift": [latest.json()]},
            client=client, routes=list(create_app(registry, token=None).routes),
            version=outcome.version,
            version_files=set(record.files), bundle=bundle, statement=statement,
            public_pem=keys.public_key.read_bytes())


# ----------------------------------------------------------------------------- checks


@pytest.fixture(scope="module")
def sources() -> dict[str, str]:
    found = read_sources()
    assert set(found) == KOTLIN | SWIFT
    return found


def test_kotlin_signature_names_are_in_a_fresh_build(sources: dict[str, str],
                                                     contract: Contract) -> None:
    assert check_kotlin_signatures(sources, contract) == []
    used = {literal(a[2]) for f in KOTLIN
            for a in calls(strip_comments(sources[f], "kotlin"), "runSignature", "kotlin")}
    # The app calls every signature the artifact has.
    assert used == set(contract.manifest["tflite"]["signatures"])


def test_swift_feature_names_are_in_the_fresh_core_ml_spec(sources: dict[str, str],
                                                           contract: Contract) -> None:
    assert check_swift_features(sources, contract) == []


def test_json_keys_the_apps_read_exist(sources: dict[str, str], contract: Contract) -> None:
    assert check_json_keys(sources, contract) == []


def test_registry_paths_are_routes_that_answer(sources: dict[str, str],
                                               contract: Contract) -> None:
    assert check_registry_paths(sources, contract) == []
    templates = {t for _, t, _ in app_requests(sources)}
    assert any(t.endswith("/latest") for t in templates)
    assert any(t.endswith("/files/{file}") for t in templates)


def test_file_names_are_the_ones_the_emitter_writes(sources: dict[str, str],
                                                    contract: Contract) -> None:
    assert check_file_names(sources, contract) == []


def test_the_apps_verification_accepts_a_real_signature_and_nothing_else(
        sources: dict[str, str], contract: Contract) -> None:
    """The scheme SignatureVerifier.kt / .swift implement, step by step, on a real model.sig."""
    assert check_signing_constants(sources, contract) == []
    key = serialization.load_pem_public_key(contract.public_pem)
    assert isinstance(key, ec.EllipticCurvePublicKey)
    envelope = contract.bundle["dsseEnvelope"]
    payload = base64.b64decode(envelope["payload"])

    def pae(body: bytes) -> bytes:
        kind = envelope["payloadType"].encode()
        return b"DSSEv1 %d %s %d " % (len(kind), kind, len(body)) + body

    signature = base64.b64decode(envelope["signatures"][0]["sig"])
    key.verify(signature, pae(payload), ec.ECDSA(hashes.SHA256()))
    tampered = payload.replace(b'"digest": "', b'"digest": "0', 1)
    with pytest.raises(InvalidSignature):
        key.verify(signature, pae(tampered), ec.ECDSA(hashes.SHA256()))
    resources = contract.statement["predicate"]["resources"]
    digests = {r["name"]: r["digest"] for r in resources}
    root = hashlib.sha256(b"".join(bytes.fromhex(r["digest"]) for r in resources)).hexdigest()
    assert contract.statement["subject"][0]["digest"]["sha256"] == root
    # The check both verifiers make: the signature lists exactly manifest.json and its files.
    assert set(digests) == set(contract.manifest["files"]) | {MANIFEST_FILE}
    assert all(digests[n] == h for n, h in contract.manifest["files"].items())


MUTATIONS = [
    ("DevicetuneModel.kt", '"mask" to batch.mask),\n                    mapOf("loss" to loss), '
     '"train")', '"masks" to batch.mask),\n                    mapOf("loss" to loss), "train")',
     "'masks'"),
    ("DevicetuneModel.kt", 'mapOf("x" to x), mapOf("probabilities" to probabilities), "infer"',
     'mapOf("probabilities" to x), mapOf("x" to probabilities), "infer"', "one of the outputs"),
    ("DevicetuneModel.kt", ', "mask" to batch.mask),\n                mapOf("loss" to loss, '
     '"correct" to correct)', '),\n                mapOf("loss" to loss, "correct" to correct)',
     "misses ['mask']"),
    ("DevicetuneModel.kt", 'mapOf("ok" to ok), "configure")', 'mapOf("ok" to ok), "setup")',
     "setup"),
    ("DevicetuneModel.kt", "val ok = IntBuffer.allocate(1)\n        interpreter.runSignature(map"
     "Of(\"learning_rate\"", "val ok = FloatBuffer.allocate(1)\n        interpreter.runSignatu"
     "re(mapOf(\"learning_rate\"", "int32, read into a Float"),
    ("ModelManifest.kt", 'getInt("batch_size")', 'getInt("batchSize")', "'batchSize'"),
    ("SignatureVerifier.kt", 'getString("payloadType")', 'getString("payload_type")',
     "'payload_type'"),
    ("ModelUpdater.kt", '"/v1/models/$name/latest?', '"/v1/model/$name/latest?',
     "not a route"),
    ("ModelUpdater.kt", "&platform=android", "&os=android", "'os'"),
    ("ModelUpdater.kt", "/versions/$version/files/$file", "/versions/$version/file/$file",
     "not a route"),
    ("ModelManifest.kt", 'SIGNATURE_FILE = "model.sig"', 'SIGNATURE_FILE = "signature.sig"',
     "signature.sig"),
    ("SignatureVerifier.kt", 'PREDICATE_TYPE = "https://model_signing/signature/v1.0"',
     'PREDICATE_TYPE = "https://model_signing/signature/v2.0"', "v2.0"),
    ("ModelManifest.swift", 'static let predictedLabel = "label"',
     'static let predictedLabel = "classLabel"', "classLabel"),
    ("ModelManifest.swift", 'static let input = "x"', 'static let input = "label"',
     "DevicetuneFeatures.input"),
    ("DevicetuneModel.swift", "featureValue(for: DevicetuneFeatures.probabilities)",
     'featureValue(for: "probabilities")', "does not come from DevicetuneFeatures"),
    ("SignatureVerifier.swift", 'case type = "_type"', 'case type = "type"', "'type'"),
    ("DevicetuneModel.swift", 'coreml.parameters["learning_rate"]',
     'coreml.parameters["learningRate"]', "'learningRate'"),
    ("ModelUpdater.swift", 'URLQueryItem(name: "platform"', 'URLQueryItem(name: "os"',
     "'os'"),
    ("ModelUpdater.swift", '"/v1/models/\\(name)/versions/\\(version)/manifest"',
     '"/v1/models/\\(name)/version/\\(version)/manifest"', "not a route"),
    ("ModelManifest.swift", 'modelFile = "Model.mlmodel"', 'modelFile = "model.mlmodel"',
     "model.mlmodel"),
]


@pytest.mark.parametrize(("file", "old", "new", "reported"), MUTATIONS,
                         ids=[f"{m[0]}:{m[3]}" for m in MUTATIONS])
def test_the_checker_reports_a_mismatch(sources: dict[str, str], contract: Contract, file: str,
                                        old: str, new: str, reported: str) -> None:
    assert sources[file].count(old) == 1, f"the mutation does not apply to {file}"
    found = all_problems({**sources, file: sources[file].replace(old, new)}, contract)
    assert any(reported in p for p in found), found
