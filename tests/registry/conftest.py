"""A registry served over real HTTP on 127.0.0.1, with keys and model folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from devicetune.artifacts.keys import KeyPair, generate_key_pair
from devicetune.artifacts.signing import sign_folder
from devicetune.registry import Registry, RegistryClient, RegistryServer
from tests.artifacts.folders import write_model_folder

TOKEN = "registry-test-token"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[KeyPair, KeyPair]:
    """The release key pair and a stranger's."""
    base = tmp_path_factory.mktemp("keys")
    return generate_key_pair(base / "release"), generate_key_pair(base / "stranger")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RegistryServer]:
    with RegistryServer(Registry(tmp_path / "root"), token=TOKEN) as running:
        yield running


@pytest.fixture
def client(server: RegistryServer) -> Iterator[RegistryClient]:
    with RegistryClient(server.url, token=TOKEN) as running:
        yield running


def signed_folder(folder: Path, key: KeyPair, **kwargs: object) -> Path:
    """A model folder written by `write_model_folder` and signed with ``key``."""
    write_model_folder(folder, **kwargs)  # type: ignore[arg-type]
    sign_folder(folder, key.private_key)
    return folder
