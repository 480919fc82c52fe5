from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from devicetune.artifacts.encryption import (
    decrypt_bytes,
    decrypt_folder,
    encrypt_bytes,
    encrypt_folder,
)
from devicetune.artifacts.keys import (
    generate_key_pair,
    key_id,
    load_private_key,
    load_public_key,
)
from devicetune.artifacts.manifest import read_manifest
from devicetune.artifacts.signing import sign_folder, verify_folder
from devicetune.errors import ArtifactError
from tests.artifacts.folders import write_model_folder


@pytest.fixture
def app_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def encrypted(tmp_path: Path, app_key: ec.EllipticCurvePrivateKey) -> Path:
    write_model_folder(tmp_path / "plain")
    encrypt_folder(tmp_path / "plain", tmp_path / "enc", [app_key.public_key()])
    return tmp_path / "enc"


def reseal(folder: Path, file: str, data: bytes) -> None:
    """Replace an encrypted file and fix its hash, so only the cipher can object."""
    (folder / file).write_bytes(data)
    manifest = read_manifest(folder)
    files = {**manifest.files, file: hashlib.sha256(data).hexdigest()}
    manifest.model_copy(update={"files": files}).write(folder)


def test_round_trip_restores_the_folder_byte_for_byte(
        tmp_path: Path, encrypted: Path, app_key: ec.EllipticCurvePrivateKey) -> None:
    plain = tmp_path / "plain"
    assert not (encrypted / "model.tflite").exists()
    assert (plain / "model.tflite").read_bytes() not in (encrypted / "model.tflite.enc"
                                                         ).read_bytes()
    decrypt_folder(encrypted, tmp_path / "dec", app_key)
    originals = sorted(p.name for p in plain.iterdir())
    assert sorted(p.name for p in (tmp_path / "dec").iterdir()) == originals
    for name in originals:
        assert (tmp_path / "dec" / name).read_bytes() == (plain / name).read_bytes(), name


def test_encrypted_folder_is_signed_and_verified_like_any_other(
        tmp_path: Path, encrypted: Path) -> None:
    signer = generate_key_pair(tmp_path / "signer")
    sign_folder(encrypted, signer.private_key)
    assert verify_folder(encrypted, signer.public_key).encryption is not None


@pytest.mark.parametrize("file", ["model.tflite.enc", "update.npz.enc"])
@pytest.mark.parametrize("offset", [0, 20, -1])
def test_a_flipped_bit_fails_cleanly(encrypted: Path, app_key: ec.EllipticCurvePrivateKey,
                                     tmp_path: Path, file: str, offset: int) -> None:
    data = bytearray((encrypted / file).read_bytes())
    data[offset] ^= 0x80
    reseal(encrypted, file, bytes(data))
    with pytest.raises(ArtifactError, match="decryption failed"):
        decrypt_folder(encrypted, tmp_path / "dec", app_key)


def test_a_flipped_bit_without_fixing_the_hash_is_caught_before_decrypting(
        encrypted: Path, app_key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> None:
    data = bytearray((encrypted / "model.tflite.enc").read_bytes())
    data[30] ^= 0x01
    (encrypted / "model.tflite.enc").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="model.tflite.enc does not match"):
        decrypt_folder(encrypted, tmp_path / "dec", app_key)


def test_swapped_files_fail_because_the_name_is_authenticated(
        encrypted: Path, app_key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> None:
    reseal(encrypted, "update.npz.enc", (encrypted / "Model.mlmodel.enc").read_bytes())
    with pytest.raises(ArtifactError, match="update.npz: decryption failed"):
        decrypt_folder(encrypted, tmp_path / "dec", app_key)


def test_a_wrong_key_fails_cleanly(encrypted: Path, tmp_path: Path) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(ArtifactError, match="not encrypted for this private key"):
        decrypt_folder(encrypted, tmp_path / "dec", stranger)
    assert not (tmp_path / "dec").exists()


def test_a_wrapped_key_relabelled_for_another_key_fails_cleanly(
        encrypted: Path, tmp_path: Path) -> None:
    stranger = ec.generate_private_key(ec.SECP256R1())
    manifest = read_manifest(encrypted)
    assert manifest.encryption is not None
    forged = manifest.encryption.recipients[0].model_copy(
        update={"recipient": key_id(stranger.public_key())})
    encryption = manifest.encryption.model_copy(update={"recipients": [forged]})
    manifest.model_copy(update={"encryption": encryption}).write(encrypted)
    with pytest.raises(ArtifactError, match="wrapped data key does not open"):
        decrypt_folder(encrypted, tmp_path / "dec", stranger)


def test_every_recipient_can_decrypt(tmp_path: Path) -> None:
    write_model_folder(tmp_path / "plain")
    android, ios = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    encrypt_folder(tmp_path / "plain", tmp_path / "enc",
                   [android.public_key(), ios.public_key()])
    for i, key in enumerate((android, ios)):
        decrypt_folder(tmp_path / "enc", tmp_path / f"dec{i}", key)
        assert (tmp_path / f"dec{i}" / "model.tflite").read_bytes() == (
            tmp_path / "plain" / "model.tflite").read_bytes()


def test_pem_keys_from_keys_generate_work(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path / "app")
    write_model_folder(tmp_path / "plain")
    encrypt_folder(tmp_path / "plain", tmp_path / "enc", [load_public_key(pair.public_key)])
    decrypt_folder(tmp_path / "enc", tmp_path / "dec", load_private_key(pair.private_key))


def test_bytes_round_trip_and_refuse_another_name_or_key() -> None:
    key = AESGCM.generate_key(bit_length=256)
    blob = encrypt_bytes(key, "model.tflite", b"weights")
    assert decrypt_bytes(key, "model.tflite", blob) == b"weights"
    with pytest.raises(ArtifactError):
        decrypt_bytes(key, "Model.mlmodel", blob)
    with pytest.raises(ArtifactError):
        decrypt_bytes(AESGCM.generate_key(bit_length=256), "model.tflite", blob)
    with pytest.raises(ArtifactError):
        decrypt_bytes(key, "model.tflite", blob[:5])


def _hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 from hmac alone, as an app without an HKDF library would write it."""
    prk = hmac.new(salt, ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for counter in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def test_the_documented_scheme_decrypts_a_file(
        encrypted: Path, app_key: ec.EllipticCurvePrivateKey, tmp_path: Path) -> None:
    """Follow the module docstring step by step, as an app developer would."""
    manifest = read_manifest(encrypted)
    assert manifest.encryption is not None
    recipient = manifest.encryption.recipients[0]
    e_x962 = base64.b64decode(recipient.ephemeral_public_key)
    r_x962 = app_key.public_key().public_bytes(serialization.Encoding.X962,
                                               serialization.PublicFormat.UncompressedPoint)
    ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), e_x962)
    z = app_key.exchange(ec.ECDH(), ephemeral)
    kek = _hkdf_sha256(z, e_x962 + r_x962, b"devicetune/v1 key wrap", 32)
    wrapped = base64.b64decode(recipient.wrapped_key)
    data_key = AESGCM(kek).decrypt(wrapped[:12], wrapped[12:], b"devicetune/v1 data key")
    entry = manifest.encryption.files["model.tflite"]
    blob = (encrypted / entry.file).read_bytes()
    plaintext = AESGCM(data_key).decrypt(blob[:12], blob[12:], b"model.tflite")
    assert plaintext == (tmp_path / "plain" / "model.tflite").read_bytes()
    assert hashlib.sha256(plaintext).hexdigest() == entry.sha256
