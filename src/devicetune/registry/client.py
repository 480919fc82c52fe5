"""A small Python client of the registry, for app backends, the server and tests.

``fetch`` is what an app backend wants: download a version, check every file against the
registry's record, verify the signature with the release public key, decrypt if the
version is encrypted, and only then put the folder at ``dest``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import ssl
import tempfile
from pathlib import Path
from types import TracebackType

import httpx

from devicetune.artifacts.encryption import decrypt_folder
from devicetune.artifacts.keys import PrivateKey, load_private_key
from devicetune.artifacts.manifest import Manifest
from devicetune.artifacts.signing import verify_folder
from devicetune.errors import ArtifactError, NotInRegistry, RegistryError, VersionExists
from devicetune.registry.rollout import Assignment, LatestAnswer, RolloutPolicy
from devicetune.registry.store import VersionRecord
from devicetune.registry.transfer import TAR_MEDIA_TYPE, pack_folder

ASSIGNMENTS_PER_REQUEST = 1_000  # the API's cap (registry.api.MAX_ASSIGNMENTS)


class RegistryClient:
    """Talks to one registry over HTTP.

    Args:
        base_url: e.g. ``http://127.0.0.1:8080``.
        token: the publish token (needed for `publish` and `set_rollout` only).
        timeout_s: per-request timeout.
        ca_certificate: PEM certificate(s) to trust for an https registry (default:
            the system's trust store).
    """

    def __init__(self, base_url: str, *, token: str | None = None,
                 timeout_s: float = 60.0, ca_certificate: Path | None = None) -> None:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        verify: bool | ssl.SSLContext = True
        if ca_certificate is not None:
            try:
                verify = ssl.create_default_context(cafile=str(ca_certificate))
            except (OSError, ssl.SSLError) as exc:
                raise RegistryError(f"--ca-certificate {ca_certificate}: not a readable "
                                    f"PEM certificate ({exc})") from None
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s,
                                  verify=verify)

    def models(self) -> list[str]:
        """Names of the models in the registry."""
        return list(self._json("GET", "/v1/models")["models"])

    def versions(self, name: str) -> list[VersionRecord]:
        """Every version of ``name``, oldest first."""
        body = self._json("GET", f"/v1/models/{name}/versions")
        return [VersionRecord.model_validate(v) for v in body["versions"]]

    def record(self, name: str, version: int) -> VersionRecord:
        """The record of one version: its files, sizes and hashes."""
        return VersionRecord.model_validate(
            self._json("GET", f"/v1/models/{name}/versions/{version}"))

    def manifest(self, name: str, version: int) -> Manifest:
        """The manifest of one version (not verified: use `fetch` to trust it)."""
        response = self._send("GET", f"/v1/models/{name}/versions/{version}/manifest")
        return Manifest.model_validate_json(response.content)

    def latest(self, name: str, device_id: str, platform: str | None = None) -> LatestAnswer:
        """The version ``device_id`` gets under the rollout policy."""
        params = {"device_id": device_id, **({"platform": platform} if platform else {})}
        return LatestAnswer.model_validate(
            self._json("GET", f"/v1/models/{name}/latest", params=params))

    def assignments(self, name: str, device_ids: list[str]) -> list[Assignment]:
        """The versions many devices get, in order (sent 1,000 ids per request)."""
        answers: list[Assignment] = []
        for start in range(0, len(device_ids), ASSIGNMENTS_PER_REQUEST):
            body = self._json("POST", f"/v1/models/{name}/assignments", json={
                "device_ids": device_ids[start:start + ASSIGNMENTS_PER_REQUEST]})
            answers += [Assignment.model_validate(a) for a in body["assignments"]]
        return answers

    def download(self, name: str, version: int, dest: Path) -> VersionRecord:
        """Download every file of a version into the new folder ``dest``.

        Each file's sha256 is checked against the registry's record; ``dest`` appears
        only once every file is complete. This checks transport, not trust: verify the
        signature (or use `fetch`) before using the model.

        Raises:
            ArtifactError: ``dest`` exists, or a file arrived with another hash.
        """
        dest = Path(dest)
        if dest.exists():
            raise ArtifactError(f"{dest}: already exists; download into a new folder")
        record = self.record(name, version)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            for file, entry in sorted(record.files.items()):
                self._download_file(f"/v1/models/{name}/versions/{version}/files/{file}",
                                    partial / file, entry.sha256)
            os.rename(partial, dest)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        return record

    def fetch(self, name: str, version: int, dest: Path, *, public_key: Path,
              decryption_key: PrivateKey | Path | None = None,
              min_version: int | None = None) -> Manifest:
        """Download, verify and (if encrypted) decrypt a version into ``dest``.

        A validly signed folder is not enough: its signed manifest must name the model
        and version asked for, so a registry (or whoever controls it) cannot serve
        another model's release, or an older signed release, in its place.

        Args:
            name: the model.
            version: the version, e.g. ``client.latest(...).version``.
            dest: a new folder that receives the usable (plaintext) model folder.
            public_key: PEM public key of the release signing key.
            decryption_key: the app's private key (object or PEM path) for an
                encrypted version.
            min_version: refuse any version below this one (the app keeps the newest
                version it ever installed here, so a rollback is refused).

        Returns:
            The manifest of the plaintext folder now at ``dest``.

        Raises:
            ArtifactError: the version is not signed by ``public_key``'s pair, was
                tampered with, is another model or version than asked for, is below
                ``min_version``, or cannot be decrypted with ``decryption_key``.
        """
        dest = Path(dest)
        if min_version is not None and version < min_version:
            raise ArtifactError(f"{name} version {version} is older than the minimum "
                                f"version {min_version}; refusing a rollback")
        if dest.exists():
            raise ArtifactError(f"{dest}: already exists; fetch into a new folder")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent) as scratch:
            signed = Path(scratch) / "signed"
            self.download(name, version, signed)
            try:
                manifest = verify_folder(signed, public_key)
            except ArtifactError as exc:  # name what was fetched, not the scratch folder
                where = f"{name} version {version} from {str(self._http.base_url).rstrip('/')}"
                raise ArtifactError(str(exc).replace(str(signed), where)) from None
            if (manifest.name, manifest.version) != (name, version):
                raise ArtifactError(
                    f"asked for {name} version {version}, but the registry served a "
                    f"signed {manifest.name} version {manifest.version}; refusing it "
                    "(a replayed or substituted release)")
            if manifest.encryption is None:
                os.rename(signed, dest)
                return manifest
            if decryption_key is None:
                raise ArtifactError(f"{name} version {version} is encrypted; pass the app's "
                                    "private key as decryption_key")
            if not isinstance(decryption_key, PrivateKey):
                decryption_key = load_private_key(decryption_key)
            return decrypt_folder(signed, dest, decryption_key)

    def publish(self, folder: Path) -> VersionRecord:
        """Publish a model folder as the version its manifest names.

        Raises:
            VersionExists: that version is already published.
            ArtifactError: the registry refused the folder (hashes, signature).
            RegistryError: no or a wrong token, or another refusal.
        """
        with tempfile.TemporaryFile() as archive:
            pack_folder(Path(folder), archive)
            archive.seek(0)
            name = Manifest.model_validate_json((Path(folder) / "manifest.json").read_bytes()
                                                ).name
            body = self._json("POST", f"/v1/models/{name}/versions", content=archive,
                              headers={"content-type": TAR_MEDIA_TYPE})
        return VersionRecord.model_validate(body)

    def rollout(self, name: str) -> RolloutPolicy:
        """The rollout policy of ``name``."""
        return RolloutPolicy.model_validate(self._json("GET", f"/v1/models/{name}/rollout"))

    def set_rollout(self, name: str, policy: RolloutPolicy) -> RolloutPolicy:
        """Replace the rollout policy of ``name`` (needs the token)."""
        body = self._json("PUT", f"/v1/models/{name}/rollout",
                          content=policy.model_dump_json(),
                          headers={"content-type": "application/json"})
        return RolloutPolicy.model_validate(body)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _download_file(self, path: str, target: Path, sha256: str) -> None:
        digest = hashlib.sha256()
        try:
            with self._http.stream("GET", path) as response, open(target, "wb") as handle:
                if response.is_error:
                    response.read()
                    _raise_for(response)
                for chunk in response.iter_bytes(1 << 20):
                    digest.update(chunk)
                    handle.write(chunk)
        except httpx.HTTPError as exc:
            raise RegistryError(f"download of {path} failed: {exc}") from None
        if digest.hexdigest() != sha256:
            raise ArtifactError(f"{path}: downloaded bytes do not match the registry's "
                                "sha256; retry, and suspect the network path if it repeats")

    def _json(self, method: str, path: str, **kwargs: object) -> dict:  # type: ignore[type-arg]
        return self._send(method, path, **kwargs).json()  # type: ignore[no-any-return]

    def _send(self, method: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise RegistryError(f"cannot reach the registry at {self._http.base_url}: "
                                f"{exc}") from None
        return _raise_for(response)


def _raise_for(response: httpx.Response) -> httpx.Response:
    if not response.is_error:
        return response
    try:
        detail = response.json().get("detail", response.text)
    except ValueError:
        detail = response.text
    ours = isinstance(detail, str)  # FastAPI's request validation errors are a list
    if not ours:
        detail = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}"
                           for d in detail)
    message = f"{response.request.method} {response.request.url.path}: {detail}"
    status = response.status_code
    if status == 404:
        raise NotInRegistry(message)
    if status == 409:
        raise VersionExists(message)
    if status == 422 and ours:
        raise ArtifactError(message)
    raise RegistryError(f"{message} (HTTP {status})")
