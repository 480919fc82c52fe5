"""Optional encryption of a model version for the apps that may read it.

Scheme ``ecies-p256-hkdf-sha256-aes256gcm/v1``, written out so an Android (JCA) or iOS
(CryptoKit) developer can implement decryption without reading this code:

1. Data key. Each version gets a fresh random 32-byte AES-256 key ``K``.
2. Files. Every payload file ``NAME`` is stored as ``NAME.enc`` =
   ``nonce (12 random bytes) || AES-256-GCM ciphertext || tag (16 bytes)``, encrypted
   with ``K`` and associated data ``AAD = UTF-8 bytes of NAME`` (e.g. ``model.tflite``),
   so a ciphertext renamed to another file's name fails to decrypt. This is CryptoKit's
   ``AES.GCM.SealedBox(combined:)`` layout; on Android pass the first 12 bytes as
   ``GCMParameterSpec(128, nonce)``, ``updateAAD(NAME)``, then ``doFinal`` the rest.
3. Key wrap, once per recipient public key ``R`` (P-256):
   an ephemeral P-256 key pair ``(e, E)``;
   ``Z = ECDH(e, R)``: the 32-byte x-coordinate (CryptoKit ``sharedSecretFromKeyAgreement``,
   JCA ``KeyAgreement("ECDH")``);
   ``KEK = HKDF-SHA256(IKM=Z, salt=E_x962 || R_x962, info="devicetune/v1 key wrap",
   L=32)`` where ``*_x962`` is the 65-byte uncompressed point ``04 || X || Y``;
   ``wrapped = nonce (12) || AES-256-GCM(KEK, K, AAD="devicetune/v1 data key") || tag``.
   To unwrap, the app computes ``Z = ECDH(r, E)`` with its private key ``r`` and the same
   ``KEK``, then opens ``wrapped``.
4. Manifest. ``manifest.json`` keeps the model's metadata in clear (name, version,
   metrics, privacy: encryption protects the weights, not the release notes) and gains
   an ``encryption`` entry: the scheme, per recipient the hex sha256 of its DER public
   key, base64 ``E_x962`` and base64 ``wrapped``; per payload file its ``.enc`` name and
   the sha256 of its plaintext. ``files`` lists the ``.enc`` files and their sha256, so
   the folder is signed (encrypt, then sign) and the registry checks it without a key.

Decrypting restores the original folder: the same payload files and a byte-identical
manifest.json. Files are encrypted in memory, which suits on-device models (megabytes).
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from devicetune.artifacts.keys import PrivateKey, PublicKey, key_id
from devicetune.artifacts.manifest import (
    EncryptedFileEntry,
    EncryptionEntry,
    Manifest,
    WrappedKeyEntry,
)
from devicetune.artifacts.signing import check_folder
from devicetune.errors import ArtifactError

SCHEME = "ecies-p256-hkdf-sha256-aes256gcm/v1"
ENCRYPTED_SUFFIX = ".enc"
_WRAP_INFO = b"devicetune/v1 key wrap"
_WRAP_AAD = b"devicetune/v1 data key"
_NONCE_BYTES = 12


def encrypt_bytes(data_key: bytes, name: str, plaintext: bytes) -> bytes:
    """``nonce || AES-256-GCM(data_key, plaintext, AAD=name) || tag``."""
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + AESGCM(data_key).encrypt(nonce, plaintext, name.encode())


def decrypt_bytes(data_key: bytes, name: str, blob: bytes) -> bytes:
    """Inverse of `encrypt_bytes`.

    Raises:
        ArtifactError: the bytes were changed, belong to another file name, or the key
            is not the one they were encrypted with.
    """
    try:
        return AESGCM(data_key).decrypt(blob[:_NONCE_BYTES], blob[_NONCE_BYTES:],
                                        name.encode())
    except (InvalidTag, ValueError):
        raise ArtifactError(f"{name}: decryption failed: the encrypted file was altered, "
                            "renamed, or belongs to another version") from None


def wrap_key(data_key: bytes, recipient: PublicKey) -> WrappedKeyEntry:
    """Wrap ``data_key`` for ``recipient`` (step 3 of the scheme)."""
    ephemeral = ec.generate_private_key(ec.SECP256R1())
    ephemeral_point = _x962(ephemeral.public_key())
    kek = _kek(ephemeral.exchange(ec.ECDH(), recipient), ephemeral_point, _x962(recipient))
    nonce = os.urandom(_NONCE_BYTES)
    wrapped = nonce + AESGCM(kek).encrypt(nonce, data_key, _WRAP_AAD)
    return WrappedKeyEntry(recipient=key_id(recipient),
                           ephemeral_public_key=base64.b64encode(ephemeral_point).decode(),
                           wrapped_key=base64.b64encode(wrapped).decode())


def unwrap_key(entry: WrappedKeyEntry, private_key: PrivateKey) -> bytes:
    """Recover the data key from ``entry`` with the recipient's private key.

    Raises:
        ArtifactError: the entry was altered or was wrapped for another key.
    """
    try:
        point = base64.b64decode(entry.ephemeral_public_key, validate=True)
        wrapped = base64.b64decode(entry.wrapped_key, validate=True)
        ephemeral = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point)
        kek = _kek(private_key.exchange(ec.ECDH(), ephemeral), point,
                   _x962(private_key.public_key()))
        return AESGCM(kek).decrypt(wrapped[:_NONCE_BYTES], wrapped[_NONCE_BYTES:],
                                   _WRAP_AAD)
    except (InvalidTag, ValueError):
        raise ArtifactError("the wrapped data key does not open with this private key: "
                            "it was altered or wrapped for another key") from None


def encrypt_folder(src: Path, dst: Path, recipients: Sequence[PublicKey]) -> Manifest:
    """Encrypt the model folder ``src`` into the new folder ``dst`` for ``recipients``.

    ``src`` is checked against its manifest first. ``dst`` gets ``NAME.enc`` per payload
    file and the manifest described in this module's docstring; it is unsigned (a
    signature over plaintext would not match), so sign ``dst`` next.

    Raises:
        ArtifactError: ``src`` is inconsistent or already encrypted, ``dst`` exists, or
            no recipient is given.
    """
    src, dst = Path(src), Path(dst)
    manifest = check_folder(src)
    if manifest.encryption is not None:
        raise ArtifactError(f"{src}: already encrypted; encrypt the plaintext folder")
    if not recipients:
        raise ArtifactError("no recipient public key given; pass the app's public key")
    _create_empty(dst)
    data_key = AESGCM.generate_key(bit_length=256)
    files, entries = {}, {}
    for name, sha256 in sorted(manifest.files.items()):
        blob = encrypt_bytes(data_key, name, (src / name).read_bytes())
        target = dst / (name + ENCRYPTED_SUFFIX)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
        files[target.relative_to(dst).as_posix()] = hashlib.sha256(blob).hexdigest()
        entries[name] = EncryptedFileEntry(file=target.relative_to(dst).as_posix(),
                                           sha256=sha256)
    encryption = EncryptionEntry(scheme=SCHEME, files=entries,
                                 recipients=[wrap_key(data_key, r) for r in recipients])
    encrypted = manifest.model_copy(update={"files": files, "encryption": encryption})
    encrypted.write(dst)
    return encrypted


def decrypt_folder(src: Path, dst: Path, private_key: PrivateKey) -> Manifest:
    """Decrypt the encrypted model folder ``src`` into the new folder ``dst``.

    Returns:
        The plaintext manifest, which ``dst/manifest.json`` holds byte for byte as it
        was before encryption.

    Raises:
        ArtifactError: ``src`` is not encrypted for this key, or any file was altered.
    """
    src, dst = Path(src), Path(dst)
    manifest = check_folder(src)
    encryption = manifest.encryption
    if encryption is None:
        raise ArtifactError(f"{src}: not encrypted; use the folder as it is")
    if encryption.scheme != SCHEME:
        raise ArtifactError(f"{src}: unknown encryption scheme {encryption.scheme!r}; "
                            f"this devicetune reads {SCHEME}")
    if {e.file for e in encryption.files.values()} != set(manifest.files):
        raise ArtifactError(f"{src}: manifest.json encryption.files and files disagree; "
                            "the version is corrupt")
    mine = key_id(private_key.public_key())
    entry = next((r for r in encryption.recipients if r.recipient == mine), None)
    if entry is None:
        raise ArtifactError(f"{src}: not encrypted for this private key (key id "
                            f"{mine[:16]}); use the key of one of its recipients")
    data_key = unwrap_key(entry, private_key)
    _create_empty(dst)
    for name, file_entry in sorted(encryption.files.items()):
        plaintext = decrypt_bytes(data_key, name, (src / file_entry.file).read_bytes())
        if hashlib.sha256(plaintext).hexdigest() != file_entry.sha256:
            raise ArtifactError(f"{src}: {name} decrypted to bytes whose sha256 differs "
                                "from the manifest; the version is corrupt")
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).write_bytes(plaintext)
    plain = manifest.model_copy(update={
        "files": {name: e.sha256 for name, e in encryption.files.items()},
        "encryption": None})
    plain.write(dst)
    return plain


def _kek(shared_secret: bytes, ephemeral_point: bytes, recipient_point: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral_point + recipient_point,
                info=_WRAP_INFO).derive(shared_secret)


def _x962(key: PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


def _create_empty(dst: Path) -> None:
    if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
        raise ArtifactError(f"{dst}: already exists and is not empty; choose a new folder")
    dst.mkdir(parents=True, exist_ok=True)
