"""`devicetune registry`: serve the model registry, stage rollouts, fetch as a phone.

Part of the thin CLI (see `devicetune.cli`): parse, call the library, print.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from devicetune.cli_options import OutOpt

registry_app = typer.Typer(help="The model registry and its HTTP API.", no_args_is_help=True,
                           suggest_commands=False)


@registry_app.command("rollout")
def registry_rollout(
    name: Annotated[str, typer.Argument(help="The model.")],
    root: Annotated[Path, typer.Option(help="Registry folder.")],
    default: Annotated[int | None, typer.Option(
        help="Version for devices in no arm (default: the newest).")] = None,
    arm: Annotated[list[str] | None, typer.Option(
        help="VERSION:PERCENT[:COHORT], e.g. 4:10 or 4:25:A; repeat for more arms.")]
    = None,
) -> None:
    """Stage a rollout: which share of devices gets which version (stable per device)."""
    from pydantic import ValidationError

    from devicetune.config import describe_validation_error
    from devicetune.errors import ConfigError
    from devicetune.registry import Registry
    from devicetune.registry.rollout import RolloutArm, RolloutPolicy

    arms = []
    for text in arm or []:
        parts = text.split(":")
        if len(parts) not in (2, 3):
            raise ConfigError(f"--arm {text!r}: expected VERSION:PERCENT or "
                              "VERSION:PERCENT:COHORT, e.g. 4:10")
        try:
            arms.append(RolloutArm(version=int(parts[0]), percent=float(parts[1]),
                                   cohort=parts[2] if len(parts) == 3 else None))
        except (ValueError, ValidationError) as exc:
            detail = describe_validation_error(exc, None) if isinstance(
                exc, ValidationError) else str(exc)
            raise ConfigError(f"--arm {text!r}: {detail}") from None
    try:
        policy = RolloutPolicy(default_version=default, arms=arms)
    except ValidationError as exc:
        raise ConfigError(f"rollout: {describe_validation_error(exc, None)}") from None
    Registry(root).set_rollout(name, policy)
    shares = ", ".join(f"v{a.version} to {a.percent:g}%" + (f" (cohort {a.cohort})"
                                                             if a.cohort else "")
                       for a in arms) or "no staged arms"
    print(f"{name}: {shares}; everyone else gets "
          f"{'v' + str(default) if default else 'the newest version'}")


@registry_app.command("fetch")
def registry_fetch(
    name: Annotated[str, typer.Argument(help="The model.")],
    url: Annotated[str, typer.Option(help="The registry, e.g. http://127.0.0.1:8080.")],
    public_key: Annotated[Path, typer.Option(help="PEM public key of the release key.")],
    out: OutOpt,
    device_id: Annotated[str, typer.Option(
        help="Fetch the version the rollout gives this device.")] = "",
    platform: Annotated[str | None, typer.Option(help="android or ios.")] = None,
    version: Annotated[int | None, typer.Option(
        help="Fetch this version instead of the device's latest.")] = None,
    decryption_key: Annotated[Path | None, typer.Option(
        help="The app's PEM private key, for an encrypted version.")] = None,
    min_version: Annotated[int | None, typer.Option(
        help="Refuse any version below this (e.g. the newest one installed): no "
        "rollback.")] = None,
    ca_certificate: Annotated[Path | None, typer.Option(
        help="PEM certificate to trust for an https registry.")] = None,
) -> None:
    """Download a version as an app would: the device's latest (or --version), every
    file checked, the signature verified, decrypted if needed; OUT appears only then."""
    from devicetune.errors import ConfigError
    from devicetune.registry import RegistryClient

    if version is None and not device_id:
        raise ConfigError("give --device-id (its latest under the rollout) or --version")
    with RegistryClient(url, ca_certificate=ca_certificate) as client:
        if version is None:
            answer = client.latest(name, device_id=device_id, platform=platform)
            version = answer.version
            print(f"{name}: device {device_id} gets version {version}"
                  + (f" (cohort {answer.cohort})" if answer.cohort else ""))
        manifest = client.fetch(name, version, out, public_key=public_key,
                                decryption_key=decryption_key, min_version=min_version)
    parent = f" (parent v{manifest.parent_version})" if manifest.parent_version else ""
    print(f"{name} v{manifest.version}{parent}: signature and hashes verified; "
          f"{', '.join(sorted(manifest.files))} in {out}")


@registry_app.command("serve")
def registry_serve(
    root: Annotated[Path, typer.Option(help="Registry folder.")],
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8080,
    token_file: Annotated[Path | None, typer.Option(
        help="File holding the publish token (default: $DEVICETUNE_REGISTRY_TOKEN; "
        "neither: read-only).")] = None,
    public_key: Annotated[Path | None, typer.Option(
        help="Accept only versions signed by this PEM public key's pair.")] = None,
    allow_unsigned: Annotated[bool, typer.Option(
        help="Serve without --public-key: versions are not verified, and recorded "
        "unsigned.")] = False,
    certificate: Annotated[Path | None, typer.Option(
        help="PEM certificate: serve HTTPS (with --private-key).")] = None,
    private_key: Annotated[Path | None, typer.Option(
        help="PEM private key of --certificate.")] = None,
    insecure: Annotated[bool, typer.Option(
        help="Allow plain HTTP on a non-loopback --host (the token travels in "
        "plaintext).")] = False,
) -> None:
    """Serve the model registry over HTTP(S)."""
    import os

    from devicetune.artifacts.keys import load_public_key
    from devicetune.errors import ConfigError
    from devicetune.registry import Registry, serve
    from devicetune.registry.server import is_loopback, tls_options

    if public_key is None and not allow_unsigned:
        raise ConfigError("give --public-key (the release key's public half) so every "
                          "published version is verified, or --allow-unsigned to accept "
                          "versions unverified")
    tls = tls_options(certificate, private_key)
    if not tls and not is_loopback(host) and not insecure:
        raise ConfigError(f"--host {host} is reachable from other machines: give "
                          "--certificate and --private-key to serve HTTPS, or --insecure "
                          "to send the publish token in plaintext")

    if token_file is not None:
        try:
            token: str | None = token_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"--token-file {token_file} is empty; put the token in it")
    else:
        token = os.environ.get("DEVICETUNE_REGISTRY_TOKEN") or None
    if not root.is_dir():
        raise ConfigError(f"--root {root}: no such folder (a server with [emit] fills one; "
                          "to serve an empty registry, create the folder first)")
    if public_key is not None:
        load_public_key(public_key)
    print(f"registry {root}: publishing "
          f"{'needs the token' if token else 'disabled (no token)'}, "
          f"{'signed versions only' if public_key else 'UNVERIFIED (--allow-unsigned)'}, "
          f"{'HTTPS' if tls else 'plain HTTP'}; API docs at /docs", flush=True)
    serve(Registry(root, public_key=public_key), token=token, host=host, port=port,
          certificate=certificate, private_key=private_key)
