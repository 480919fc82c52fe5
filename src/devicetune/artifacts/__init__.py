"""Model versions: manifest, keys, signing (OpenSSF model-signing), encryption."""

from devicetune.artifacts.encryption import decrypt_folder, encrypt_folder
from devicetune.artifacts.keys import (
    KeyPair,
    generate_key_pair,
    key_id,
    load_private_key,
    load_public_key,
)
from devicetune.artifacts.manifest import Manifest, read_manifest, sha256_file
from devicetune.artifacts.signing import (
    SIGNATURE_FILE,
    check_folder,
    sign_folder,
    verify_folder,
)

__all__ = [
    "SIGNATURE_FILE",
    "KeyPair",
    "Manifest",
    "check_folder",
    "decrypt_folder",
    "encrypt_folder",
    "generate_key_pair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "read_manifest",
    "sha256_file",
    "sign_folder",
    "verify_folder",
]
