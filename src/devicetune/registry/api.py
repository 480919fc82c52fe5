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

Every GET also answers HEAD. Errors are ``{"detail": "..."}``:

    400 a body that is not JSON, or an upload that is not a flat tar
    401 no token; 403 a wrong token, or a registry started without one
    404 no such model, version or file; 409 the version exists
    405 a method the path does not have (``Allow`` lists those it has)
    413 upload too large; 416 a Range that cannot be served
    422 a request outside the documented schema (names, ids, policy), or a folder that
        fails its manifest or signature check

Validation errors name the field and never echo the input. Files are immutable and
named by their sha256, so the ETag is the sha256 and a client may cache them forever.
A Range has at most 16 parts; overlapping or adjacent parts are merged; an inverted,
empty or unsatisfiable part is refused with 416.
"""

from __future__ import annotations

import hmac
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from devicetune.artifacts.manifest import MANIFEST_FILE
from devicetune.errors import ArtifactError, NotInRegistry, RegistryError, VersionExists
from devicetune.registry.names import NAME_PATTERN, check_name
from devicetune.registry.rollout import MAX_VERSION, Assignment, LatestAnswer, RolloutPolicy
from devicetune.registry.store import Registry, VersionRecord

MAX_UPLOAD_BYTES = 2 << 30
MAX_ASSIGNMENTS = 1_000
MAX_RANGES = 16
_IMMUTABLE = "public, max-age=31536000, immutable"
Name = Annotated[str, PathParam(pattern=NAME_PATTERN, description="a model name")]
FileName = Annotated[str, PathParam(pattern=NAME_PATTERN, description="a file name")]
Version = Annotated[int, PathParam(ge=1, le=MAX_VERSION, description="version number")]
DeviceId = Annotated[str, StringConstraints(min_length=1, max_length=256)]


class Error(BaseModel):
    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the error statuses a route can answer."""
    reasons = {
        400: "a malformed body: not JSON, or not a flat tar of files",
        401: "no bearer token",
        403: "a wrong token, or a read-only registry",
        404: "no such model, version or file",
        409: "the version exists",
        413: "upload too large",
        416: "a Range that cannot be served",
        422: "a folder that fails its manifest or signature check",
    }
    return {code: {"model": Error, "description": reasons[code]} for code in codes}


class VersionList(BaseModel):
    name: str
    versions: list[VersionRecord]


class AssignmentsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    device_ids: list[DeviceId] = Field(min_length=1, max_length=MAX_ASSIGNMENTS)


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
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler(app))

    @app.get("/v1/models")
    def list_models() -> dict[str, list[str]]:
        return {"models": registry.models()}

    @app.get("/v1/models/{name}/versions", responses=_errors(404))
    def list_versions(name: Name) -> VersionList:
        return VersionList(name=name, versions=registry.versions(name))

    @app.post("/v1/models/{name}/versions", status_code=201,
              dependencies=[Depends(authorized)],
              responses=_errors(400, 401, 403, 409, 413, 422),
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
    async def publish(name: Name, request: Request, response: Response) -> VersionRecord:
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

    @app.get("/v1/models/{name}/versions/{version}", responses=_errors(404))
    def version_record(name: Name, version: Version) -> VersionRecord:
        return registry.record(name, version)

    @app.get("/v1/models/{name}/versions/{version}/manifest", responses={
        **_FILE_RESPONSES, 200: {"description": "manifest.json", "content": {
            "application/json": {"schema": {"type": "object"}}}}})
    def manifest(name: Name, version: Version, request: Request) -> Response:
        """manifest.json exactly as signed (so its hash still matches the signature)."""
        return _serve_file(registry, name, version, MANIFEST_FILE, request)

    @app.get("/v1/models/{name}/versions/{version}/files/{file}", responses={
        **_FILE_RESPONSES, 200: {"description": "the file's bytes", "content": {
            "application/octet-stream": {"schema": {"type": "string",
                                                    "format": "binary"}}}}})
    def download(name: Name, version: Version, file: FileName, request: Request
                 ) -> Response:
        """A file of a version; supports Range, If-Range and If-None-Match."""
        return _serve_file(registry, name, version, file, request)

    @app.get("/v1/models/{name}/latest", responses=_errors(404))
    def latest(name: Name, device_id: Annotated[str, Query(min_length=1, max_length=256)],
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

    @app.post("/v1/models/{name}/assignments", responses=_errors(400, 404))
    def assignments(name: Name, request: AssignmentsRequest) -> AssignmentsAnswer:
        """The versions many devices get (at most 1,000 per request), e.g. to label an
        A/B analysis by cohort."""
        return AssignmentsAnswer(name=name,
                                 assignments=registry.assign(name, request.device_ids))

    @app.get("/v1/models/{name}/rollout", responses=_errors(404))
    def get_rollout(name: Name) -> RolloutPolicy:
        registry.versions(name)  # 404 for an unknown model
        return registry.rollout(name)

    @app.put("/v1/models/{name}/rollout", dependencies=[Depends(authorized)],
             responses=_errors(400, 401, 403, 404))
    def put_rollout(name: Name, policy: RolloutPolicy) -> RolloutPolicy:
        """Replace the rollout policy; every version it names must be published."""
        return registry.set_rollout(name, policy)

    _answer_head_like_get(app)
    return app


_FILE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **_errors(404, 416),
    206: {"description": "the requested byte ranges", "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/byteranges": {"schema": {"type": "string", "format": "binary"}}}},
    304: {"description": "not modified (If-None-Match)"},
}


def _answer_head_like_get(app: FastAPI) -> None:
    """Every GET route also answers HEAD (headers only), documented as its own operation."""
    for route in list(app.routes):
        if isinstance(route, APIRoute) and "GET" in route.methods and route.include_in_schema:
            # The same responses as the GET, so HEAD promises the same headers; a route
            # that returns a Response (files) keeps its own media type.
            app.add_api_route(route.path, route.endpoint, methods=["HEAD"],
                              name=f"{route.name}_head", response_model=route.response_model,
                              response_class=Response if route.response_model is None
                              else JSONResponse, responses=route.responses,
                              summary=f"{route.summary or route.name} (headers only)")


def _allowed_methods(app: FastAPI, scope: Scope) -> list[str]:
    methods: set[str] = set()
    for route in app.router.routes:
        match, _ = route.matches(scope)
        if match != Match.NONE and getattr(route, "methods", None):
            methods |= route.methods  # type: ignore[attr-defined]
    return sorted(methods)


def _serve_file(registry: Registry, name: str, version: int, file: str,
                request: Request) -> Response:
    path, entry = registry.file(name, version, file)
    etag = f'"{entry.sha256}"'
    headers = {"etag": etag, "cache-control": _IMMUTABLE}
    if _etag_matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    media = "application/json" if file == MANIFEST_FILE else "application/octet-stream"
    wanted = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if wanted is None or (if_range is not None and if_range != etag):
        return _RangedFile(path, None, media_type=media, headers=headers)
    ranges = _parse_ranges(wanted, entry.size)
    if ranges is None:
        return JSONResponse({"detail": f"the Range cannot be served: at most {MAX_RANGES} "
                             "parts, each first-last with first <= last inside the file"},
                            status_code=416, headers={"content-range": f"bytes */{entry.size}"})
    header = "bytes=" + ",".join(f"{start}-{end}" for start, end in ranges)
    return _RangedFile(path, header, media_type=media, headers=headers)


def _parse_ranges(header: str, size: int) -> list[tuple[int, int]] | None:
    """The byte ranges (inclusive) of a Range header, sorted and merged; None when it
    cannot be served: another unit, a malformed, inverted or unsatisfiable part, or more
    than MAX_RANGES parts (RFC 9110 section 14.2 lets a server refuse those)."""
    unit, _, spec = header.partition("=")
    parts = spec.split(",")
    if unit.strip().lower() != "bytes" or len(parts) > MAX_RANGES:
        return None
    ranges = []
    for part in parts:
        first, dash, last = part.strip().partition("-")
        if not dash or not (first.isdigit() or last.isdigit()) or \
                (first and not first.isdigit()) or (last and not last.isdigit()):
            return None
        if not first:  # a suffix: the last N bytes
            start, end = max(size - int(last), 0), size - 1
            if int(last) == 0:
                return None
        else:
            start, end = int(first), min(int(last), size - 1) if last else size - 1
            if last and int(last) < start:
                return None
        if start >= size:
            return None
        ranges.append((start, end))
    ranges.sort()
    merged = [ranges[0]]
    for start, end in ranges[1:]:
        if start <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


class _RangedFile(FileResponse):
    """A FileResponse that serves exactly the (already checked) Range it is given."""

    def __init__(self, path: Path, range_header: str | None, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._range = range_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"range", b"if-range")]
        if self._range is not None:
            headers.append((b"range", self._range.encode("latin-1")))
        await super().__call__({**scope, "headers": headers}, receive, send)


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    candidates = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in candidates or etag in candidates


def _handler(status: int):  # type: ignore[no-untyped-def]
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": " ".join(str(exc).split())}, status_code=status)
    return handle


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    # FastAPI's default echoes the input (all of it: 889 KB for a large body) and fails
    # with a 500 on a NaN it cannot write as JSON. Name the field and the rule only.
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    detail = [{"loc": list(e.get("loc", ())), "msg": str(e.get("msg", ""))[:200],
               "type": str(e.get("type", ""))} for e in errors[:10]]
    return JSONResponse({"detail": detail}, status_code=422)


def _http_handler(app: FastAPI):  # type: ignore[no-untyped-def]
    async def handle(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        if exc.status_code == 405:
            # Starlette lists the methods of the first route matching the path only.
            headers["allow"] = ", ".join(_allowed_methods(app, request.scope))
        if exc.status_code == 304 or exc.status_code < 200:
            return Response(status_code=exc.status_code, headers=headers)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code,
                            headers=headers)
    return handle
