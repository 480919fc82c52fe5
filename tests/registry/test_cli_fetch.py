"""`devicetune registry fetch`: a version downloaded and verified as an app would."""

from __future__ import annotations

from pathlib import Path

from devicetune.artifacts.keys import KeyPair
from devicetune.registry import RegistryClient, RegistryServer
from tests.conftest import run_cli
from tests.registry.conftest import signed_folder


def test_fetch_gets_the_devices_latest_version_verified(
        client: RegistryClient, server: RegistryServer, tmp_path: Path,
        keys: tuple[KeyPair, KeyPair]) -> None:
    for version in (1, 2):
        client.publish(signed_folder(tmp_path / f"v{version}", keys[0], version=version,
                                     platforms=True))
    result = run_cli("registry", "fetch", "har", "--url", server.url, "--device-id",
                     "phone-7", "--platform", "android", "--public-key",
                     str(keys[0].public_key), "--out", str(tmp_path / "app"))
    assert result.returncode == 0, result.stderr
    assert "device phone-7 gets version 2" in result.stdout
    assert "har v2 (parent v1): signature and hashes verified" in result.stdout
    for path in (tmp_path / "v2").iterdir():
        assert (tmp_path / "app" / path.name).read_bytes() == path.read_bytes()


def test_fetch_refuses_another_keys_version_and_writes_nothing(
        client: RegistryClient, server: RegistryServer, tmp_path: Path,
        keys: tuple[KeyPair, KeyPair]) -> None:
    client.publish(signed_folder(tmp_path / "v1", keys[1]))
    result = run_cli("registry", "fetch", "har", "--url", server.url, "--version", "1",
                     "--public-key", str(keys[0].public_key), "--out", str(tmp_path / "app"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "signed by another key" in result.stderr, result.stderr
    assert not (tmp_path / "app").exists()


def test_fetch_needs_a_device_or_a_version(server: RegistryServer, tmp_path: Path,
                                           keys: tuple[KeyPair, KeyPair]) -> None:
    result = run_cli("registry", "fetch", "har", "--url", server.url, "--public-key",
                     str(keys[0].public_key), "--out", str(tmp_path / "app"))
    assert result.returncode == 2 and "--device-id" in result.stderr, result.stderr
