"""EC P-256 key pairs: one signs model versions, another lets an app decrypt them.

Keys are PEM files: the private key in PKCS#8 (unencrypted, mode 0600; keep it in a
secret store in production), the public key as SubjectPublicKeyInfo. P-256 is the curve
that the OpenSSF model-signing format, Android Keystore and Apple's Secure Enclave all
support, so one kind of key serves signing and encryption.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devicetune.errors import ArtifactError

PRIVATE_KEY_FILE = "private_key.pem"
PUBLIC_KEY_FILE = "public_key.pem"

PrivateKey = ec.EllipticCurvePrivateKey
PublicKey = ec.EllipticCurvePublicKey


@dataclass(frozen=True)
class KeyPair:
    """Where `generate_key_pair` wrote the two halves."""

    private_key: Path
    public_key: Path


def generate_key_pair(out: Path) -> KeyPair:
    """Write a fresh P-256 key pair as ``out/private_key.pem`` and ``out/public_key.pem``.

    Raises:
        ArtifactError: a key file already exists there (a key is never overwritten,
            since versions signed with it would no longer verify).
    """
    out = Path(out)
    pair = KeyPair(out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE)
    for path in (pair.private_key, pair.public_key):
        if path.exists():
            raise ArtifactError(f"{path} already exists; choose another --out folder "
                                "or move the old key away first")
    out.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    # Created 0600 from the start, so the secret is never readable by others.
    fd = os.open(pair.private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private_pem)
    pair.public_key.write_bytes(public_pem(key.public_key()))
    return pair


def public_pem(key: PublicKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of a public key."""
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: PublicKey) -> str:
    """Hex sha256 of the DER SubjectPublicKeyInfo: a stable name for a public key."""
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def load_private_key(path: Path) -> PrivateKey:
    """Read a PEM P-256 private key.

    Raises:
        ArtifactError: the file is missing, not a PEM private key, or not P-256.
    """
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ArtifactError(f"{path}: not an unencrypted PEM private key ({exc}); "
                            "create one with `devicetune keys generate`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ArtifactError(f"{path}: not an EC private key; use an EC P-256 key")
    _check_curve(key.curve, path)
    return key


def load_public_key(path: Path) -> PublicKey:
    """Read a PEM P-256 public key.

    Raises:
        ArtifactError: the file is missing, not a PEM public key, or not P-256.
    """
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise ArtifactError(f"{path}: not a PEM public key ({exc}); pass the "
                            f"{PUBLIC_KEY_FILE} written by `devicetune keys generate`"
                            ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ArtifactError(f"{path}: not an EC public key; use an EC P-256 key")
    _check_curve(key.curve, path)
    return key


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {what} file not found") from None
    except IsADirectoryError:
        raise ArtifactError(f"{path}: is a folder; pass the {what} PEM file") from None


def _check_curve(curve: ec.EllipticCurve, path: Path) -> None:
    if not isinstance(curve, ec.SECP256R1):
        raise ArtifactError(f"{path}: key is on curve {curve.name}; devicetune uses "
                            "P-256 (secp256r1) keys only")
