from __future__ import annotations

from pathlib import Path

import pytest

from devicetune.artifacts.encryption import encrypt_folder
from devicetune.artifacts.keys import KeyPair, generate_key_pair, load_public_key
from devicetune.artifacts.signing import sign_folder, verify_folder
from devicetune.errors import ArtifactError
from devicetune.registry import Registry, RegistryClient, RegistryServer
from tests.artifacts.folders import write_model_folder
from tests.registry.conftest import TOKEN, signed_folder


def test_fetch_downloads_and_verifies_a_signed_version(
        client: RegistryClient, tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    signed_folder(tmp_path / "v1", keys[0])
    client.publish(tmp_path / "v1")
    manifest = client.fetch("har", 1, tmp_path / "got", public_key=keys[0].public_key)
    assert manifest.version == 1
    for path in (tmp_path / "v1").iterdir():
        assert (tmp_path / "got" / path.name).read_bytes() == path.read_bytes()
    verify_folder(tmp_path / "got", keys[0].public_key)


def test_fetch_decrypts_an_encrypted_signed_version(
        tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    app = generate_key_pair(tmp_path / "app")
    write_model_folder(tmp_path / "plain", version=1, platforms=True)
    encrypt_folder(tmp_path / "plain", tmp_path / "v1", [load_public_key(app.public_key)])
    sign_folder(tmp_path / "v1", keys[0].private_key)
    registry = Registry(tmp_path / "root", public_key=keys[0].public_key)
    with RegistryServer(registry, token=TOKEN) as server, \
            RegistryClient(server.url, token=TOKEN) as client:
        assert client.publish(tmp_path / "v1").encrypted
        with pytest.raises(ArtifactError, match="encrypted; pass the app's private key"):
            client.fetch("har", 1, tmp_path / "nokey", public_key=keys[0].public_key)
        assert not (tmp_path / "nokey").exists()
        client.fetch("har", 1, tmp_path / "got", public_key=keys[0].public_key,
                     decryption_key=app.private_key)
    for name in ("model.tflite", "Model.mlmodel", "update.npz", "manifest.json"):
        assert (tmp_path / "got" / name).read_bytes() == (tmp_path / "plain" / name
                                                          ).read_bytes()


def test_fetch_refuses_a_version_signed_by_another_key(
        client: RegistryClient, tmp_path: Path, keys: tuple[KeyPair, KeyPair]) -> None:
    signed_folder(tmp_path / "v1", keys[1])  # this registry does not check signatures
    client.publish(tmp_path / "v1")
    with pytest.raises(ArtifactError, match="signed by another key"):
        client.fetch("har", 1, tmp_path / "got", public_key=keys[0].public_key)
    assert not (tmp_path / "got").exists()


def test_download_refuses_bytes_that_changed_on_the_server(
        client: RegistryClient, server: RegistryServer, tmp_path: Path) -> None:
    write_model_folder(tmp_path / "v1")
    record = client.publish(tmp_path / "v1")
    blob = (tmp_path / "root" / "blobs" / "sha256" / record.files["model.tflite"].sha256[:2]
            / record.files["model.tflite"].sha256)
    blob.chmod(0o644)
    blob.write_bytes(b"rotted on disk")
    with pytest.raises(ArtifactError, match="do not match the registry's sha256"):
        client.download("har", 1, tmp_path / "got")
    assert not (tmp_path / "got").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".got")] == []
