"""The registry's HTTP API (FastAPI); the OpenAPI document is served at /openapi.json.

::

    GET  /v1/models                                       model names
    GET  /v1/models/{name}/versions                       every version's record
    POST /v1/models/{name}/versions                       publish (tar body, bearer token)
    GET  /v1/models/{name}/versions/{v}                   one version's record
    GET  /v1/models/{name}/versions/{v}/manifest          manifest.json, byte for byte
    GET  /v1/models/{name}/versions/{v}/files/{file}      a file (ETag, Range, HEAD)
    GET  /v1/models/{name}/latest?device_id=&platform=    staged rollout for one device
    POST /v1/models/{name}/assignments                    the same for many device ids
    GET  /v1/models/{name}/rollout                        the rollout policy
    PUT  /v1/models/{name}/rollout                        replace it (bearer token)

Errors are ``{"detail": "..."}``: 400 a bad name, 401 no token, 403 a wrong token or
a registry started without one, 404 no such model/version/file, 409 the version exists,
413 upload too large, 422 a folder that fails its manifest or signature check.
Files are immutable and named by their sha256, so the ETag is the sha256 and a client
may cache them forever.
"""

from __future__ import annotations

import hmac
import os
import tempfile
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from devicetune.artifacts.manifest import MANIFEST_FILE
from devicetune.errors import ArtifactError, NotInRegistry, RegistryError, VersionExists
from devicetune.registry.names import check_name
from devicetune.registry.rollout import Assignment, LatestAnswer, RolloutPolicy
from devicetune.registry.store import Registry, VersionRecord

MAX_UPLOAD_BYTES = 2 << 30
MAX_ASSIGNMENTS = 100_000
_IMMUTABLE = "public, max-age=31536000, immutable"
Version = Annotated[int, PathParam(ge=1, description="version number")]


class VersionList(BaseModel):
    name: str
    versions: list[VersionRecord]


class AssignmentsRequest(BaseModel):
    device_ids: list[str] = Field(max_length=MAX_ASSIGNMENTS)


class AssignmentsAnswer(BaseModel):
    name: str
    assignments: list[Assignment] = Field(description="in the order of the device_ids")


def create_app(registry: Registry, *, token: str | None,
               max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The ASGI app serving ``registry``; writes need ``Authorization: Bearer TOKEN``.

    Args:
        registry: the store to serve.
        token: the publish token; None makes the registry read-only.
        max_upload_bytes: the largest publish accepted.
    """
    app = FastAPI(title="devicetune model registry", version="1",
                  description=(__doc__ or "").split("::")[0].strip())

    def authorized(authorization: Annotated[str | None, Header()] = None) -> None:
        if token is None:
            raise HTTPException(403, "this registry is read-only; start it with a token "
                                "to publish")
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise HTTPException(401, "send the publish token as 'Authorization: Bearer "
                                "TOKEN'", headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(value.encode(), token.encode()):
            raise HTTPException(403, "wrong publish token")

    for error, status in ((NotInRegistry, 404), (VersionExists, 409),
                          (RegistryError, 400), (ArtifactError, 422)):
        app.add_exception_handler(error, _handler(status))

    @app.get("/v1/models")
    def list_models() -> dict[str, list[str]]:
        return {"models": registry.models()}

    @app.get("/v1/models/{name}/versions")
    def list_versions(name: str) -> VersionList:
        return VersionList(name=name, versions=registry.versions(name))

    @app.post("/v1/models/{name}/versions", status_code=201,
              dependencies=[Depends(authorized)],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
    async def publish(name: str, request: Request, response: Response) -> VersionRecord:
        """Publish the tar of a model folder as the version its manifest names."""
        check_name(name, "model name")
        fd, tmp = tempfile.mkstemp(prefix="upload-", suffix=".tar", dir=registry.root / "tmp")
        upload = Path(tmp)
        try:
            size = 0
            with os.fdopen(fd, "wb") as handle:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > max_upload_bytes:
                        raise HTTPException(413, f"upload exceeds {max_upload_bytes} bytes")
                    handle.write(chunk)
            record = await run_in_threadpool(registry.publish_archive, upload, name=name)
        finally:
            upload.unlink(missing_ok=True)
        response.headers["location"] = f"/v1/models/{name}/versions/{record.version}"
        return record

    @app.get("/v1/models/{name}/versions/{version}")
    def version_record(name: str, version: Version) -> VersionRecord:
        return registry.record(name, version)

    @app.get("/v1/models/{name}/versions/{version}/manifest")
    def manifest(name: str, version: Version, request: Request) -> Response:
        """manifest.json exactly as signed (so its hash still matches the signature)."""
        return _serve_file(registry, name, version, MANIFEST_FILE, request)

    @app.head("/v1/models/{name}/versions/{version}/files/{file}", include_in_schema=False)
    @app.get("/v1/models/{name}/versions/{version}/files/{file}")
    def download(name: str, version: Version, file: str, request: Request) -> Response:
        """A file of a version; supports Range, If-Range and If-None-Match."""
        return _serve_file(registry, name, version, file, request)

    @app.get("/v1/models/{name}/latest")
    def latest(name: str, device_id: Annotated[str, Query(min_length=1, max_length=256)],
               platform: Literal["android", "ios"] | None = None) -> LatestAnswer:
        """The version this device gets under the model's rollout policy."""
        assignment = registry.assign(name, [device_id])[0]
        base = f"/v1/models/{name}/versions/{assignment.version}"
        file = sha256 = size = url = None
        if platform is not None:
            file = registry.platform_file(name, assignment.version, platform)
            entry = registry.record(name, assignment.version).files[file]
            sha256, size, url = entry.sha256, entry.size, f"{base}/files/{file}"
        return LatestAnswer(name=name, version=assignment.version, cohort=assignment.cohort,
                            bucket=assignment.bucket, platform=platform, file=file,
                            sha256=sha256, size=size, url=url, manifest_url=f"{base}/manifest")

    @app.post("/v1/models/{name}/assignments")
    def assignments(name: str, request: AssignmentsRequest) -> AssignmentsAnswer:
        """The versions many devices get, e.g. to label an A/B analysis by cohort."""
        return AssignmentsAnswer(name=name,
                                 assignments=registry.assign(name, request.device_ids))

    @app.get("/v1/models/{name}/rollout")
    def get_rollout(name: str) -> RolloutPolicy:
        registry.versions(name)  # 404 for an unknown model
        return registry.rollout(name)

    @app.put("/v1/models/{name}/rollout", dependencies=[Depends(authorized)])
    def put_rollout(name: str, policy: RolloutPolicy) -> RolloutPolicy:
        """Replace the rollout policy; every version it names must be published."""
        return registry.set_rollout(name, policy)

    return app


def _serve_file(registry: Registry, name: str, version: int, file: str,
                request: Request) -> Response:
    path, entry = registry.file(name, version, file)
    etag = f'"{entry.sha256}"'
    headers = {"etag": etag, "cache-control": _IMMUTABLE}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    media = "application/json" if file == MANIFEST_FILE else "application/octet-stream"
    return FileResponse(path, media_type=media, headers=headers)


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


def _handler(status: int):  # type: ignore[no-untyped-def]
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=status)
    return handle
