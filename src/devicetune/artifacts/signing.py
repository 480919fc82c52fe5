"""Sign and verify a model folder in the OpenSSF model-signing format.

Layout of a signed folder::

    manifest.json     name, version, sha256 of every payload file, ...
    model.tflite      payload files: exactly those listed in manifest.json `files`
    Model.mlmodel
    ...
    model.sig         a sigstore bundle (DSSE envelope, in-toto statement whose predicate
                      lists the sha256 of manifest.json and of every payload file),
                      signed offline with an EC P-256 key

The signature file is the only file the signature does not cover. Any other file that
manifest.json does not list is refused when signing and when verifying, so nothing can be
slipped into a release beside the signed files. The folder verifies with the standard
tool too::

    model_signing verify key DIR --signature DIR/model.sig --public_key public_key.pem

Verification is model-signing's own check (signature, then every file's digest) plus
ours: manifest.json parses strictly and its hashes match the files.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from pathlib import Path, PurePosixPath

from devicetune.artifacts.keys import load_private_key, load_public_key, public_pem
from devicetune.artifacts.manifest import MANIFEST_FILE, Manifest, read_manifest, sha256_file
from devicetune.atomic import atomic_write_bytes
from devicetune.errors import ArtifactError

SIGNATURE_FILE = "model.sig"


def sign_folder(folder: Path, private_key: Path) -> Path:
    """Sign ``folder`` with a PEM P-256 private key, writing ``folder/model.sig``.

    The folder is checked first (`check_folder`): a folder whose manifest disagrees with
    its files is refused rather than signed. An existing signature is replaced.

    Returns:
        The path of the signature file.

    Raises:
        ArtifactError: the key is unusable or the folder is inconsistent.
    """
    from model_signing import hashing, signing

    folder = _require_folder(folder)
    load_private_key(private_key)  # a clear error before the library's own
    check_folder(folder)
    config = signing.Config().use_elliptic_key_signer(private_key=Path(private_key))
    config.set_hashing_config(hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE]))
    # Sign into a scratch folder, then rename into place: a reader of `folder` sees the
    # old signature or the new one, never a half-written file.
    with tempfile.TemporaryDirectory(prefix="devicetune-sign-") as scratch:
        scratch_sig = Path(scratch) / SIGNATURE_FILE
        config.sign(folder, scratch_sig)
        return atomic_write_bytes(folder / SIGNATURE_FILE, scratch_sig.read_bytes())


def verify_folder(folder: Path, public_key: Path) -> Manifest:
    """Verify ``folder``'s signature with a PEM public key and its manifest hashes.

    Returns:
        The verified manifest.

    Raises:
        ArtifactError: the reason the folder cannot be trusted: no signature, signed by
            another key, a file modified, missing or added after signing, or a manifest
            that disagrees with its files.
    """
    from model_signing import hashing, verifying

    folder = _require_folder(folder)
    key = load_public_key(public_key)
    signature = folder / SIGNATURE_FILE
    if not signature.is_file():
        raise ArtifactError(f"{folder}: unsigned: no {SIGNATURE_FILE}; sign it with "
                            f"`devicetune sign {folder} --private-key PEM`")
    hint, signed = _read_bundle(signature)
    if hint and hint != hashlib.sha256(public_pem(key)).hexdigest():
        raise ArtifactError(f"{folder}: signed by another key, not by {public_key}; "
                            "verify with the public key of the key pair that signed it")
    config = verifying.Config().use_elliptic_key_verifier(public_key=Path(public_key))
    config.set_hashing_config(hashing.Config().set_ignored_paths(paths=[SIGNATURE_FILE]))
    try:
        config.verify(folder, signature)
    # The library reports a failure as ValueError, InvalidSignature or KeyError depending
    # on the layer that noticed; each one means "do not trust this folder".
    except Exception as exc:
        raise ArtifactError(_diagnose(folder, signed, public_key, exc)) from None
    return check_folder(folder)


def check_folder(folder: Path) -> Manifest:
    """Check that ``folder`` holds exactly the files its manifest lists, with its hashes.

    ``manifest.json`` and ``model.sig`` are allowed beside the listed files; anything
    else (including hidden files and symlinks) is refused.

    Returns:
        The manifest.

    Raises:
        ArtifactError: which file is missing, unexpected, or has another sha256.
    """
    folder = _require_folder(folder)
    manifest = read_manifest(folder)
    for name in manifest.files:
        _check_relative_name(name, folder)
        if name in (MANIFEST_FILE, SIGNATURE_FILE):
            raise ArtifactError(f"{folder}: manifest.json lists {name} as a payload file; "
                                "remove it from `files`")
    present = set(folder_files(folder)) - {MANIFEST_FILE, SIGNATURE_FILE}
    unexpected = sorted(present - set(manifest.files))
    if unexpected:
        raise ArtifactError(f"{folder}: unexpected file {unexpected[0]}: it is not listed "
                            "in manifest.json; remove it or list it in the manifest")
    missing = sorted(set(manifest.files) - present)
    if missing:
        raise ArtifactError(f"{folder}: {missing[0]} is listed in manifest.json but missing")
    for name, expected in sorted(manifest.files.items()):
        actual = sha256_file(folder / name)
        if actual != expected:
            raise ArtifactError(f"{folder}: {name} does not match manifest.json (sha256 "
                                f"{actual[:16]}, listed {expected[:16]}): the file is "
                                "corrupt or was modified")
    _check_artifact_entries(manifest, folder)
    return manifest


def folder_files(folder: Path) -> list[str]:
    """Every regular file below ``folder``, as sorted relative POSIX paths.

    Raises:
        ArtifactError: the folder holds a symlink (it could point outside the folder).
    """
    names = []
    for root, dirs, files in os.walk(folder):
        for entry in dirs + files:
            path = Path(root) / entry
            if path.is_symlink():
                raise ArtifactError(f"{path}: symlinks are not allowed in a model folder; "
                                    "copy the file in instead")
        names += [(Path(root) / f).relative_to(folder).as_posix() for f in files]
    return sorted(names)


def _check_artifact_entries(manifest: Manifest, folder: Path) -> None:
    if manifest.encryption is None:
        plain = dict(manifest.files)
    else:
        plain = {name: entry.sha256 for name, entry in manifest.encryption.files.items()}
    for kind, entry in (("tflite", manifest.tflite), ("coreml", manifest.coreml)):
        if entry is not None and plain.get(entry.file) != entry.sha256:
            raise ArtifactError(f"{folder}: manifest.json {kind}.sha256 disagrees with the "
                                f"hash listed for {entry.file}; rebuild the manifest")


def _check_relative_name(name: str, folder: Path) -> None:
    path = PurePosixPath(name)
    if (not name or "\\" in name or path.is_absolute()
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise ArtifactError(f"{folder}: manifest.json lists the file name {name!r}; "
                            "file names must be plain paths inside the folder")


def _read_bundle(signature: Path) -> tuple[str, dict[str, str]]:
    """The key hint and the signed digests of a bundle, not yet authenticated."""
    try:
        bundle = json.loads(signature.read_bytes())
        hint = bundle["verificationMaterial"].get("publicKey", {}).get("hint", "")
        statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
        resources = statement["predicate"]["resources"]
        return hint, {r["name"]: r["digest"] for r in resources}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ArtifactError(f"{signature}: not a model-signing sigstore bundle; re-sign "
                            "the folder with `devicetune sign`") from None


def _diagnose(folder: Path, signed: dict[str, str], public_key: Path,
              exc: Exception) -> str:
    """Turn a failed verification into the one reason a user can act on."""
    actual = {name: sha256_file(folder / name) for name in folder_files(folder)
              if name != SIGNATURE_FILE}
    modified = sorted(n for n in signed if n in actual and actual[n] != signed[n])
    if modified:
        return f"{folder}: {modified[0]} was modified after signing (sha256 differs)"
    missing = sorted(set(signed) - set(actual))
    if missing:
        return f"{folder}: {missing[0]} was signed but is missing"
    extra = sorted(set(actual) - set(signed))
    if extra:
        return (f"{folder}: {extra[0]} is not covered by the signature; remove it, or "
                "re-sign the folder")
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return (f"{folder}: the signature does not verify with {public_key} ({detail}); "
            f"{SIGNATURE_FILE} was altered or made by another key")


def _require_folder(folder: Path) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise ArtifactError(f"{folder}: not a model folder (no such directory)")
    return folder
