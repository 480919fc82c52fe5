from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devicetune.artifacts.keys import (
    generate_key_pair,
    key_id,
    load_private_key,
    load_public_key,
)
from devicetune.errors import ArtifactError
from tests.conftest import run_cli


def test_generated_pair_loads_and_matches(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path / "keys")
    private, public = load_private_key(pair.private_key), load_public_key(pair.public_key)
    assert key_id(private.public_key()) == key_id(public)
    assert stat.S_IMODE(pair.private_key.stat().st_mode) == 0o600


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    pair = generate_key_pair(tmp_path)
    before = pair.private_key.read_bytes()
    with pytest.raises(ArtifactError, match="already exists"):
        generate_key_pair(tmp_path)
    assert pair.private_key.read_bytes() == before


def test_other_curves_and_garbage_are_refused(tmp_path: Path) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    (tmp_path / "p384.pem").write_bytes(p384.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ArtifactError, match="P-256"):
        load_public_key(tmp_path / "p384.pem")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ArtifactError, match="not a PEM public key"):
        load_public_key(tmp_path / "junk.pem")
    with pytest.raises(ArtifactError, match="not found"):
        load_private_key(tmp_path / "missing.pem")


def test_cli_generates_a_pair_and_refuses_to_overwrite_it(tmp_path: Path) -> None:
    result = run_cli("keys", "generate", "--out", str(tmp_path / "k"))
    assert result.returncode == 0, result.stderr
    load_private_key(tmp_path / "k" / "private_key.pem")
    load_public_key(tmp_path / "k" / "public_key.pem")
    again = run_cli("keys", "generate", "--out", str(tmp_path / "k"))
    assert again.returncode == 2 and "already exists" in again.stderr
