"""Per-device keys for Flower's SuperNode authentication.

With ``server.device_keys`` (a folder of public keys, ``device-K.pub`` for device K) the
SuperLink runs with ``--enable-supernode-auth``: it accepts only SuperNodes whose key
was registered, and `devicetune serve` registers each device's key through Flower's
Control API before any device connects, noting which node id each device's key got.
The server then takes device K's updates only from that node (`FleetGrid`), so neither
an unknown SuperNode nor a registered one claiming another device's id joins a round.

Keys are EC P-384 in OpenSSH format, as ``flower-supernode --auth-supernode-private-key``
reads them. ``devicetune keys devices --out DIR --devices N`` writes ``device-K`` (the
private key, mode 0600, which goes to device K only) and ``device-K.pub``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from devicetune.errors import ConfigError

NODES_FILE = "device_nodes.json"


def key_name(device_id: int) -> str:
    return f"device-{device_id}"


def generate_device_keys(out: Path, devices: int) -> list[Path]:
    """Write a key pair for each of devices 0..devices-1 into ``out``.

    Raises:
        ConfigError: a key already exists there (never overwritten: its device is
            registered with it).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    out = Path(out)
    if devices < 1:
        raise ConfigError("--devices must be at least 1")
    existing = [out / key_name(k) for k in range(devices) if (out / key_name(k)).exists()]
    if existing:
        raise ConfigError(f"{existing[0]} already exists; choose another --out folder")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for device_id in range(devices):
        key = ec.generate_private_key(ec.SECP384R1())
        private = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
        path = out / key_name(device_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(private)
        (out / f"{key_name(device_id)}.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH) + b"\n")
        written.append(path)
    return written


def public_keys(folder: Path, devices: int) -> dict[int, Path]:
    """The public key file of every device of the fleet, checked to parse.

    Raises:
        ConfigError: a device has no key, or a file is not an OpenSSH EC public key.
    """
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_public_key

    keys = {}
    for device_id in range(devices):
        path = Path(folder) / f"{key_name(device_id)}.pub"
        try:
            key = load_ssh_public_key(path.read_bytes())
        except OSError:
            raise ConfigError(f"server.device_keys: {path} is missing; every device needs "
                              "a key (devicetune keys devices --out DIR --devices N)") from None
        except ValueError:
            raise ConfigError(f"server.device_keys: {path} is not an OpenSSH public "
                              "key") from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ConfigError(f"server.device_keys: {path} is not an EC key")
        keys[device_id] = path
    return keys


def write_nodes(out_dir: Path, nodes: dict[int, int]) -> None:
    path = Path(out_dir) / "flower" / NODES_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({str(k): v for k, v in sorted(nodes.items())}))


def read_nodes(out_dir: Path) -> dict[int, int]:
    """Device id -> node id of its registered key; empty when keys are not in use."""
    path = Path(out_dir) / "flower" / NODES_FILE
    if not path.is_file():
        return {}
    return {int(k): int(v) for k, v in json.loads(path.read_text()).items()}
