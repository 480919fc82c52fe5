"""`devicetune registry fetch`: a version downloaded and verified as an app would."""

from __future__ import annotations

from pathlib import Path

import pytest

from devicetune.artifacts.keys import KeyPair
from devicetune.errors import ArtifactError
from devicetune.registry import RegistryClient, RegistryServer, RolloutPolicy
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
    # It names what was fetched, not the scratch folder it was checked in.
    assert result.stderr.startswith(f"error: har version 1 from {server.url.rstrip('/')}: "
                                    "signed by another key"), result.stderr
    assert ".app." not in result.stderr
    assert not (tmp_path / "app").exists()


def test_fetch_needs_a_device_or_a_version(server: RegistryServer, tmp_path: Path,
                                           keys: tuple[KeyPair, KeyPair]) -> None:
    result = run_cli("registry", "fetch", "har", "--url", server.url, "--public-key",
                     str(keys[0].public_key), "--out", str(tmp_path / "app"))
    assert result.returncode == 2 and "--device-id" in result.stderr, result.stderr


def _publish(client: RegistryClient, tmp_path: Path, key: KeyPair, *versions: int,
             name: str = "har") -> None:
    for version in versions:
        client.publish(signed_folder(tmp_path / f"{name}-v{version}", key, name=name,
                                     version=version))


def test_fetch_refuses_a_replayed_older_record_under_the_asked_version(
        client: RegistryClient, server: RegistryServer, tmp_path: Path,
        keys: tuple[KeyPair, KeyPair]) -> None:
    _publish(client, tmp_path, keys[0], 1, 2, 3, 4)
    versions = tmp_path / "root" / "models" / "har" / "versions"
    (versions / "4.json").write_bytes((versions / "2.json").read_bytes())
    result = run_cli("registry", "fetch", "har", "--url", server.url, "--version", "4",
                     "--public-key", str(keys[0].public_key), "--out", str(tmp_path / "app"))
    assert result.returncode == 2, result.stdout
    assert len(result.stderr.strip().splitlines()) == 1
    assert "asked for har version 4" in result.stderr and "version 2" in result.stderr
    assert not (tmp_path / "app").exists()
    assert not list(tmp_path.glob(".app.*"))


def test_fetch_refuses_another_models_release_under_this_name(
        client: RegistryClient, server: RegistryServer, tmp_path: Path,
        keys: tuple[KeyPair, KeyPair]) -> None:
    _publish(client, tmp_path, keys[0], 1)
    _publish(client, tmp_path, keys[0], 1, name="kws")
    har = tmp_path / "root" / "models" / "har" / "versions" / "1.json"
    kws = tmp_path / "root" / "models" / "kws" / "versions" / "1.json"
    har.write_bytes(kws.read_bytes())
    with pytest.raises(ArtifactError, match="served a signed kws version 1"):
        client.fetch("har", 1, tmp_path / "app", public_key=keys[0].public_key)
    assert not (tmp_path / "app").exists()


def test_fetch_refuses_a_rollback_below_min_version(
        client: RegistryClient, server: RegistryServer, tmp_path: Path,
        keys: tuple[KeyPair, KeyPair]) -> None:
    _publish(client, tmp_path, keys[0], 1, 2, 3)
    client.set_rollout("har", RolloutPolicy(default_version=1))
    result = run_cli("registry", "fetch", "har", "--url", server.url, "--device-id",
                     "phone-7", "--min-version", "3", "--public-key",
                     str(keys[0].public_key), "--out", str(tmp_path / "app"))
    assert result.returncode == 2, result.stdout
    assert "older than the minimum version 3" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "app").exists()
    ok = run_cli("registry", "fetch", "har", "--url", server.url, "--version", "3",
                 "--min-version", "3", "--public-key", str(keys[0].public_key),
                 "--out", str(tmp_path / "app"))
    assert ok.returncode == 0, ok.stderr
    assert "har v3" in ok.stdout
