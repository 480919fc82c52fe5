from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from devicetune.artifacts.keys import KeyPair, generate_key_pair
from devicetune.artifacts.manifest import Manifest, read_manifest
from devicetune.artifacts.signing import SIGNATURE_FILE, check_folder, sign_folder, verify_folder
from devicetune.errors import ArtifactError
from tests.artifacts.folders import write_model_folder
from tests.conftest import run_cli

MODEL_SIGNING = Path(sys.executable).with_name("model_signing")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPair, KeyPair]:
    base = tmp_path_factory.mktemp("keys")
    return generate_key_pair(base / "ours"), generate_key_pair(base / "theirs")


@pytest.fixture
def signed(tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> Path:
    folder = tmp_path / "har-v1"
    write_model_folder(folder)
    sign_folder(folder, keys[0].private_key)
    return folder


def standard_verify(folder: Path, public_key: Path) -> subprocess.CompletedProcess[str]:
    """The OpenSSF tool itself, as a user of our releases would run it."""
    return subprocess.run(
        [str(MODEL_SIGNING), "verify", "key", str(folder),
         "--signature", str(folder / SIGNATURE_FILE), "--public_key", str(public_key)],
        capture_output=True, text=True, timeout=120)


def flip_bit(path: Path, offset: int = 40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_signed_folder_verifies_here_and_with_the_standard_tool(
        signed: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    assert verify_folder(signed, keys[0].public_key).name == "har"
    result = standard_verify(signed, keys[0].public_key)
    assert result.returncode == 0, result.stderr
    assert "Verification succeeded" in result.stdout


def test_signature_covers_the_manifest_and_every_payload_file(signed: Path) -> None:
    bundle = json.loads((signed / SIGNATURE_FILE).read_text())
    assert bundle["mediaType"].startswith("application/vnd.dev.sigstore.bundle")
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    names = {r["name"] for r in statement["predicate"]["resources"]}
    assert names == {"manifest.json", *read_manifest(signed).files}


def test_tampered_payload_is_refused_naming_the_file(
        signed: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    flip_bit(signed / "model.tflite")
    with pytest.raises(ArtifactError, match="model.tflite was modified after signing"):
        verify_folder(signed, keys[0].public_key)
    assert standard_verify(signed, keys[0].public_key).returncode != 0


def test_tampered_manifest_is_refused(signed: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    manifest = read_manifest(signed)
    manifest.model_copy(update={"metrics": {"accuracy": 0.99}}).write(signed)
    with pytest.raises(ArtifactError, match="manifest.json was modified after signing"):
        verify_folder(signed, keys[0].public_key)
    assert standard_verify(signed, keys[0].public_key).returncode != 0


def test_swapped_payload_with_a_consistent_manifest_is_still_refused(
        signed: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    (signed / "update.npz").write_bytes(b"attacker weights")
    manifest = read_manifest(signed)
    files = {**manifest.files, "update.npz": hashlib.sha256(b"attacker weights").hexdigest()}
    manifest.model_copy(update={"files": files}).write(signed)
    check_folder(signed)  # the manifest alone now agrees with the files...
    with pytest.raises(ArtifactError, match="was modified after signing"):
        verify_folder(signed, keys[0].public_key)  # ...but the signature does not


def test_signature_by_another_key_is_refused(
        signed: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    sign_folder(signed, keys[1].private_key)
    with pytest.raises(ArtifactError, match="signed by another key"):
        verify_folder(signed, keys[0].public_key)
    assert standard_verify(signed, keys[0].public_key).returncode != 0
    verify_folder(signed, keys[1].public_key)


def test_another_keys_signature_without_a_key_hint_is_refused(
        signed: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    sign_folder(signed, keys[1].private_key)
    bundle = json.loads((signed / SIGNATURE_FILE).read_text())
    bundle["verificationMaterial"]["publicKey"]["hint"] = ""
    (signed / SIGNATURE_FILE).write_text(json.dumps(bundle))
    with pytest.raises(ArtifactError, match="signature does not verify"):
        verify_folder(signed, keys[0].public_key)
    assert standard_verify(signed, keys[0].public_key).returncode != 0


def test_missing_signature_is_refused(signed: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    (signed / SIGNATURE_FILE).unlink()
    with pytest.raises(ArtifactError, match="unsigned"):
        verify_folder(signed, keys[0].public_key)


def test_garbage_signature_is_refused(signed: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    (signed / SIGNATURE_FILE).write_text("{}")
    with pytest.raises(ArtifactError, match="not a model-signing sigstore bundle"):
        verify_folder(signed, keys[0].public_key)


@pytest.mark.parametrize("extra", ["notes.txt", ".gitignore", "sub/extra.bin"])
def test_a_file_added_after_signing_is_refused(
        signed: Path, keys: tuple[KeyPair, KeyPair], extra: str) -> None:
    (signed / extra).parent.mkdir(exist_ok=True)
    (signed / extra).write_text("x")
    with pytest.raises(ArtifactError, match=extra.replace(".", r"\.")):
        verify_folder(signed, keys[0].public_key)


def test_a_deleted_file_is_refused(signed: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    (signed / "Model.mlmodel").unlink()
    with pytest.raises(ArtifactError, match="Model.mlmodel was signed but is missing"):
        verify_folder(signed, keys[0].public_key)
    assert standard_verify(signed, keys[0].public_key).returncode != 0


def test_signing_refuses_an_inconsistent_folder(
        tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    write_model_folder(tmp_path / "a")
    (tmp_path / "a" / "stray.bin").write_bytes(b"?")
    with pytest.raises(ArtifactError, match="unexpected file stray.bin"):
        sign_folder(tmp_path / "a", keys[0].private_key)
    write_model_folder(tmp_path / "b")
    flip_bit(tmp_path / "b" / "model.tflite")
    with pytest.raises(ArtifactError, match="model.tflite does not match manifest.json"):
        sign_folder(tmp_path / "b", keys[0].private_key)
    assert not (tmp_path / "b" / SIGNATURE_FILE).exists()


def test_manifest_file_names_outside_the_folder_are_refused(tmp_path: Path) -> None:
    manifest: Manifest = write_model_folder(tmp_path / "m")
    manifest.model_copy(update={"files": {**manifest.files, "../x": "0" * 64}}).write(
        tmp_path / "m")
    with pytest.raises(ArtifactError, match="plain paths inside the folder"):
        check_folder(tmp_path / "m")


def test_cli_sign_and_verify(tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    folder = tmp_path / "m"
    write_model_folder(folder)
    signed = run_cli("sign", str(folder), "--private-key", str(keys[0].private_key))
    assert signed.returncode == 0, signed.stderr
    valid = run_cli("verify", str(folder), "--public-key", str(keys[0].public_key))
    assert valid.returncode == 0, valid.stderr
    assert "har" in valid.stdout
    wrong = run_cli("verify", str(folder), "--public-key", str(keys[1].public_key))
    assert wrong.returncode == 2
    assert wrong.stderr.count("\n") == 1 and "signed by another key" in wrong.stderr
    flip_bit(folder / "update.npz")
    tampered = run_cli("verify", str(folder), "--public-key", str(keys[0].public_key))
    assert tampered.returncode == 2 and "update.npz was modified" in tampered.stderr
