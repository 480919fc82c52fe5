"""Protocol v1 of the device gateway (FastAPI): what an app says to `devicetune serve`.

::

    POST /v1/enroll                      fleet enrollment token -> device id + credential
    POST /v1/checkin                     eligibility -> a task, or when to come back
    GET  /v1/model/{platform}            the artifact the app trains (ETag: its sha256)
    GET  /v1/tasks/{task_id}/weights     the round's start weights (safetensors)
    POST /v1/tasks/{task_id}/report      the new weights (safetensors, metrics in its
                                         __metadata__); idempotent by task id

Everything but enrollment needs ``Authorization: Bearer CREDENTIAL``. Errors are
``{"detail": "..."}``:

    400 a body that is not JSON, or a report that is not safetensors or whose
        metadata is wrong
    401 no or a wrong credential; 403 a wrong enrollment token, or another device's task
    404 no such task (the server restarted: check in again)
    409 a task reported again with another body (a replay)
    410 a late report: its round has closed (check in again)
    411 a report without Content-Length; 413 a body over the size limit (refused
        before it is read)
    422 a request outside the schema, or an update of the wrong names or shapes, with
        NaN, or over the norm bound

The document is served at /openapi.json (browsable at /docs) and checked in as
``docs/gateway-openapi.json``.
"""

# No `from __future__ import annotations`: FastAPI reads the dependencies in the
# handlers' annotations at runtime, and they name functions local to create_gateway_app.
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Request, Response
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from devicetune.registry.server import BackgroundServer, tls_options
from devicetune.server.gateway import Gateway, Refused, Task

MAX_JSON_BYTES = 64 << 10
MODEL_FILES = {"android": "model.tflite", "ios": "Model.mlmodel"}
TaskId = Annotated[str, PathParam(pattern=r"^[A-Za-z0-9_-]{16,64}$", description="task id")]


class Error(BaseModel):
    detail: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    reasons = {
        400: "a body that is not JSON, or a report that is not safetensors or whose "
             "metadata is wrong",
        401: "no or a wrong device credential",
        403: "a wrong enrollment token, or another device's task",
        404: "no such task: check in again",
        409: "the task was already reported with another body",
        410: "the round of this task has closed: check in again",
        411: "a report needs Content-Length",
        413: "the body exceeds the size limit",
        422: "outside the schema, or an update of the wrong shape, NaN or too large",
    }
    return {code: {"model": Error, "description": reasons[code]} for code in codes}


class EnrollRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    enrollment_token: str = Field(min_length=1, max_length=512)
    platform: Literal["android", "ios"]


class EnrollAnswer(BaseModel):
    device_id: int
    credential: str = Field(description="send as 'Authorization: Bearer CREDENTIAL'; "
                            "the server keeps only its hash")


class CheckIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # 0 is not false

    platform: Literal["android", "ios"]
    model_version: int | None = Field(None, ge=1, le=1_000_000,
                                      description="the registry version the app runs")
    charging: bool
    unmetered: bool = Field(description="on Wi-Fi or another unmetered network")
    idle: bool


class Instructions(BaseModel):
    local_epochs: int
    learning_rate: float
    proximal_mu: float = Field(description="FedProx: mu/2 |w - w_start|^2 in the loss")
    dp_sgd: bool = Field(description="train with the artifact's train_dp signature")


class TaskAnswer(BaseModel):
    task_id: str = Field(description="single-use, bound to this device and round")
    round: int
    deadline_unix_s: float
    deadline_in_s: float
    weights_url: str
    model_url: str
    model_sha256: str
    instructions: Instructions


class CheckInAnswer(BaseModel):
    task: TaskAnswer | None = None
    retry_after_s: float = Field(description="check in again after this long (0 with a "
                                 "task: report it, then check in)")


class ReportAnswer(BaseModel):
    accepted: bool
    duplicate: bool = Field(description="this task's report was already accepted; it "
                            "counts once")


def create_gateway_app(gateway: Gateway, artifacts: Path, *,
                       max_report_bytes: int) -> FastAPI:
    """The ASGI app of ``gateway``, serving the build in ``artifacts``."""
    from devicetune.artifacts.manifest import sha256_file
    from devicetune.registry.api import _http_handler, _validation_handler

    app = FastAPI(title="devicetune device gateway", version="1",
                  description=(__doc__ or "").split("::")[0].strip())
    bearer = HTTPBearer(auto_error=False, description="the credential from /v1/enroll")
    model_sha256 = {p: sha256_file(artifacts / f) for p, f in MODEL_FILES.items()
                    if (artifacts / f).is_file()}

    def device(credentials: Annotated[HTTPAuthorizationCredentials | None,
                                      Depends(bearer)] = None) -> int:
        header = None if credentials is None else \
            f"{credentials.scheme} {credentials.credentials}"
        return gateway.authenticate(header)

    app.add_exception_handler(Refused, _refused)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler(app))

    @app.post("/v1/enroll", status_code=201, responses=_errors(400, 403))
    def enroll(request: EnrollRequest) -> EnrollAnswer:
        """Exchange the fleet's enrollment token for this device's own credential."""
        number, credential = gateway.enroll(request.enrollment_token, request.platform)
        return EnrollAnswer(device_id=number, credential=credential)

    @app.post("/v1/checkin", responses=_errors(400, 401))
    def check_in(body: CheckIn, number: Annotated[int, Depends(device)]) -> CheckInAnswer:
        """Say the device is here and whether it may train now; get a task or a wait."""
        eligible = body.charging and body.unmetered and body.idle
        task, wait = gateway.check_in(number, body.platform, body.model_version, eligible)
        if task is None:
            return CheckInAnswer(retry_after_s=wait)
        return CheckInAnswer(task=_task_answer(task, body.platform, model_sha256),
                             retry_after_s=0.0)

    @app.get("/v1/model/{platform}", responses={
        **_errors(401, 404), 200: {"description": "the artifact's bytes", "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    def model(platform: Literal["android", "ios"], number: Annotated[int, Depends(device)]
              ) -> Response:
        """The build's model file for a platform (immutable for the run)."""
        if platform not in model_sha256:
            raise StarletteHTTPException(404, f"this build has no {platform} artifact")
        return FileResponse(artifacts / MODEL_FILES[platform],
                            media_type="application/octet-stream",
                            headers={"etag": f'"{model_sha256[platform]}"'})

    @app.get("/v1/tasks/{task_id}/weights", responses={
        **_errors(401, 403, 404, 410), 200: {"description": "safetensors", "content": {
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    def weights(task_id: TaskId, number: Annotated[int, Depends(device)]) -> Response:
        """The start weights of the task's round, as a safetensors file."""
        task = gateway.task_for(number, task_id)
        current = gateway.round
        if current is None or current.number != task.round:
            raise Refused(410, "late", "the round of this task has closed: check in again")
        return Response(current.weights_safetensors, media_type="application/octet-stream")

    @app.post("/v1/tasks/{task_id}/report",
              responses=_errors(400, 401, 403, 404, 409, 410, 411, 413, 422),
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/octet-stream": {"schema": {"type": "string",
                                                          "format": "binary"}}}}})
    async def report(task_id: TaskId, request: Request,
                     number: Annotated[int, Depends(device)]) -> ReportAnswer:
        """The new weights (safetensors; ``num_examples``, ``train_loss`` and
        ``dp_steps`` in its ``__metadata__``)."""
        gateway.task_for(number, task_id)  # 403/404 before the body is read
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_report_bytes:  # a lying Content-Length
                gateway.count("too_large")
                raise StarletteHTTPException(413, f"the body exceeds {max_report_bytes} "
                                             "bytes")
        duplicate = await run_in_threadpool(gateway.report, number, task_id, bytes(body))
        return ReportAnswer(accepted=True, duplicate=duplicate)

    app.add_middleware(_BodyLimit, gateway=gateway, max_report_bytes=max_report_bytes)
    return app


def _task_answer(task: Task, platform: str, model_sha256: dict[str, str]) -> TaskAnswer:
    import time

    config = task.instructions
    return TaskAnswer(
        task_id=task.task_id, round=task.round, deadline_unix_s=task.deadline,
        deadline_in_s=round(max(0.0, task.deadline - time.time()), 3),
        weights_url=f"/v1/tasks/{task.task_id}/weights", model_url=f"/v1/model/{platform}",
        model_sha256=model_sha256.get(platform, ""),
        instructions=Instructions(local_epochs=int(config["local-epochs"]),
                                  learning_rate=float(config["learning-rate"]),
                                  proximal_mu=float(config.get("proximal-mu", 0.0)),
                                  dp_sgd=bool(config.get("private", False))))


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refused)
    headers = {"www-authenticate": "Bearer"} if exc.status == 401 else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)


class _BodyLimit:
    """Refuse a body over the limit from its Content-Length, before reading a byte of
    it (a report may be ``max_report_bytes``, anything else 64 KiB); a report must
    declare its length."""

    def __init__(self, app: ASGIApp, gateway: Gateway, max_report_bytes: int) -> None:
        self.app, self.gateway, self.max_report_bytes = app, gateway, max_report_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)
            return
        is_report = scope["path"].endswith("/report")
        limit = self.max_report_bytes if is_report else MAX_JSON_BYTES
        length = dict(scope["headers"]).get(b"content-length")
        if length is None and is_report and scope["method"] == "POST":
            await JSONResponse({"detail": "send Content-Length with a report"},
                               status_code=411)(scope, receive, send)
            return
        if length is not None and (not length.isdigit() or int(length) > limit):
            self.gateway.count("too_large")
            await JSONResponse({"detail": f"the body exceeds {limit} bytes"},
                               status_code=413, headers={"connection": "close"}
                               )(scope, receive, send)
            return
        await self.app(scope, receive, send)


class GatewayServer(BackgroundServer):
    """The gateway's app served by uvicorn from a background thread (HTTPS with a
    certificate and key); a context manager, as `devicetune.registry.RegistryServer`."""

    def __init__(self, app: FastAPI, *, host: str = "127.0.0.1", port: int = 0,
                 certificate: Path | None = None, private_key: Path | None = None) -> None:
        from devicetune.errors import ServerError

        try:
            super().__init__(app, host=host, port=port,
                             tls=tls_options(certificate, private_key),
                             thread_name="device-gateway", timeout_keep_alive_s=30)
        except OSError as exc:
            raise ServerError(f"cannot serve the device gateway on {host}:{port}: "
                              f"{(exc.strerror or str(exc)).lower()}; set "
                              "server.gateway.port to a free port") from None


def openapi_document() -> dict[str, Any]:
    """Protocol v1's OpenAPI document, as a served gateway answers /openapi.json."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        gateway = Gateway(Path(scratch), "x" * 16, [], 1.0, 1.0, 1)
        return create_gateway_app(gateway, Path(scratch), max_report_bytes=1).openapi()


if __name__ == "__main__":  # python -m devicetune.server.gateway_api > docs/gateway-openapi.json
    import json

    print(json.dumps(openapi_document(), indent=2, sort_keys=True))
