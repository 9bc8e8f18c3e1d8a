"""The HTTP surface: OpenAI-compatible routes plus /_admin, as a Starlette app over the simulator's parts.

Requests from the SDK arrive here; each route checks auth and HTTP faults, then calls handlers, store or batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from .config import ManualClock
from .errors import SERVER_ERROR_MESSAGE, APIError, invalid_value, missing_parameter, not_found, server_error
from .faults import HTTP_KINDS, FaultRule, FaultTarget
from .handlers import CHAT_ENDPOINT, IMAGES_ENDPOINT, Context, execute
from .ids import new_request_id
from .rules import check_expires_after
from .store import cursor_page

if TYPE_CHECKING:
    from .server import Simulator

FILE_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
BATCH_FILE_TTL_SECONDS = 30 * 24 * 3600
MODELS = (
    "gpt-5",
    "gpt-5-mini",
    "gpt-5-nano",
    "gpt-4o",
    "gpt-4o-mini",
    "gpt-4.1-mini",
    "o3",
    "o4-mini",
    "gpt-image-1-mini",
    "gpt-image-1.5",
    "gpt-image-2",
)
MODEL_CREATED_AT = 1_700_000_000

log = logging.getLogger(__name__)


class JSONResponse(Response):
    """JSON rendered by orjson, the project's JSON library."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status_code, headers=error.headers)


def _parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        raise APIError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you "
            "aren't using your HTTP library correctly.)",
        ) from None


Handler = Callable[[Request, bytes], Awaitable[Response]]


def build_app(sim: Simulator) -> Starlette:
    """Routes close over `sim`; blocking work (disk, batch processing, drawing) runs on worker threads."""

    def openai_route(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        """Auth, HTTP-level faults and error shaping around one OpenAI-compatible route."""

        async def endpoint(request: Request) -> Response:
            try:
                authorization = request.headers.get("authorization", "")
                if not authorization.removeprefix("Bearer").strip():
                    raise APIError(
                        401,
                        "You didn't provide an API key. You need to provide your API key in an "
                        "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    )
                raw = await request.body()
                target = request.state.fault_target = _http_target(request, raw)
                await _apply_http_faults(target)
                response = await handler(request, raw)
                if request.method == "POST" and request.url.path == "/v1/batches":
                    # The batch exists now; answering 500 shows whether a client retry would duplicate it.
                    for rule in sim.faults.fire({"error_after_create"}, target):
                        raise _fault_error(rule)
            except APIError as error:
                response = _error_response(error)
            except Exception:
                # A simulator bug still answers in the API's shape, so the SDK raises InternalServerError.
                log.exception("unhandled error in %s %s", request.method, request.url.path)
                response = _error_response(server_error())
            response.headers["x-request-id"] = new_request_id()
            return response

        return endpoint

    async def _apply_http_faults(target: FaultTarget) -> None:
        for rule in sim.faults.fire(HTTP_KINDS, target):
            if rule.kind == "slow":
                await asyncio.sleep(float(rule.params.get("seconds", 1.0)))
                continue
            raise _fault_error(rule)

    def _context(target: FaultTarget) -> Context:
        return Context(
            now=sim.clock.now(),
            seed=sim.config.seed,
            image_size=sim.config.image_size,
            faults=sim.faults,
            target=target,
        )

    # --- synchronous model calls ---

    def model_call(endpoint_path: str) -> Handler:
        async def handle(request: Request, raw: bytes) -> Response:
            ctx = _context(request.state.fault_target)
            body = _parse_json(raw)
            answer = await run_in_threadpool(execute, endpoint_path, body, ctx)
            await run_in_threadpool(sim.store.record_billed, "sync", body)
            return JSONResponse(answer)

        return handle

    # --- files ---

    async def create_file(request: Request, raw: bytes) -> Response:
        async with request.form() as form:
            upload, purpose = form.get("file"), form.get("purpose")
            if not isinstance(upload, UploadFile):
                raise missing_parameter("file")
            if not purpose:
                raise missing_parameter("purpose")
            if purpose not in FILE_PURPOSES:
                raise invalid_value(
                    "purpose", f"Invalid value: '{purpose}'. Supported values are: {list(FILE_PURPOSES)}."
                )
            filename = upload.filename or "upload"
            if purpose == "batch" and not filename.endswith(".jsonl"):
                raise APIError(400, "Invalid file format for Batch API. Must be .jsonl", param="file")
            now = sim.clock.now()
            expires_at = int(now) + BATCH_FILE_TTL_SECONDS if purpose == "batch" else None
            anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
            if anchor is not None or seconds is not None:
                expires_at = int(now) + check_expires_after({"anchor": anchor, "seconds": seconds}, "expires_after")
            record = await run_in_threadpool(
                sim.store.add_file,
                upload.file,
                filename=filename,
                purpose=str(purpose),
                created_at=now,
                expires_at=expires_at,
            )
        return JSONResponse(record)

    def _file(request: Request) -> dict:
        file_id = request.path_params["file_id"]
        record = sim.store.files.get(file_id)
        if record is None:
            raise not_found("File", file_id)
        return record

    async def retrieve_file(request: Request, raw: bytes) -> Response:
        return JSONResponse(_file(request))

    async def file_content(request: Request, raw: bytes) -> Response:
        record = _file(request)
        # Streamed from disk in chunks: output files of image batches are large.
        return FileResponse(sim.store.content_path(record["id"]), media_type="application/octet-stream")

    async def delete_file(request: Request, raw: bytes) -> Response:
        record = _file(request)
        await run_in_threadpool(sim.store.delete_file, record["id"])
        return JSONResponse({"id": record["id"], "object": "file", "deleted": True})

    async def list_files(request: Request, raw: bytes) -> Response:
        query = request.query_params
        limit = _limit(query.get("limit"), default=10_000, maximum=10_000)
        purpose = query.get("purpose")
        with sim.store.lock:
            files = [f for f in sim.store.files.values() if purpose is None or f["purpose"] == purpose]
        files.sort(key=lambda f: f["created_at"], reverse=query.get("order", "desc") == "desc")
        return JSONResponse(cursor_page(files, query.get("after"), limit))

    # --- batches ---

    async def create_batch(request: Request, raw: bytes) -> Response:
        return JSONResponse(await run_in_threadpool(sim.batches.create, _parse_json(raw)))

    async def retrieve_batch(request: Request, raw: bytes) -> Response:
        return JSONResponse(await run_in_threadpool(sim.batches.retrieve, request.path_params["batch_id"]))

    async def cancel_batch(request: Request, raw: bytes) -> Response:
        return JSONResponse(await run_in_threadpool(sim.batches.cancel, request.path_params["batch_id"]))

    async def list_batches(request: Request, raw: bytes) -> Response:
        limit = _limit(request.query_params.get("limit"), default=20, maximum=100)
        return JSONResponse(await run_in_threadpool(sim.batches.list, request.query_params.get("after"), limit))

    # --- models ---

    def _model(model_id: str) -> dict:
        return {"id": model_id, "object": "model", "created": MODEL_CREATED_AT, "owned_by": "system"}

    async def list_models(request: Request, raw: bytes) -> Response:
        return JSONResponse({"object": "list", "data": [_model(m) for m in MODELS]})

    async def retrieve_model(request: Request, raw: bytes) -> Response:
        # Any model id is accepted by the simulator, so any id retrieves.
        return JSONResponse(_model(request.path_params["model_id"]))

    # --- admin (not OpenAI; no auth, no faults) ---

    async def admin_add_fault(request: Request) -> Response:
        try:
            rule = FaultRule.model_validate_json(await request.body())
        except ValidationError as error:
            return JSONResponse({"error": {"message": str(error), "type": "invalid_request_error"}}, status_code=400)
        sim.add_fault(rule)
        return JSONResponse({"ok": True, "faults": [r.model_dump() for r in sim.faults.rules()]})

    async def admin_list_faults(request: Request) -> Response:
        return JSONResponse({"faults": sim.faults.report()})

    async def admin_clear_faults(request: Request) -> Response:
        sim.clear_faults()
        return JSONResponse({"ok": True})

    async def admin_advance_clock(request: Request) -> Response:
        if not isinstance(sim.clock, ManualClock):
            return JSONResponse(
                {"error": {"message": "the clock is not a ManualClock", "type": "invalid_request_error"}},
                status_code=400,
            )
        seconds = _parse_json(await request.body()).get("seconds")
        if not isinstance(seconds, (int, float)) or seconds < 0:
            return JSONResponse(
                {"error": {"message": "'seconds' must be a number >= 0", "type": "invalid_request_error"}},
                status_code=400,
            )
        return JSONResponse({"now": sim.clock.advance(seconds)})

    async def admin_health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "now": sim.clock.now(), "batches": sim.batch_count()})

    async def unknown_route(request: Request, exc: Exception) -> Response:
        # The real API's wording for a path or method it does not serve (Starlette raises both as HTTPException).
        return JSONResponse(
            {
                "error": {
                    "message": f"Invalid URL ({request.method} {request.url.path})",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
            },
            status_code=exc.status_code if isinstance(exc, HTTPException) else 404,
        )

    def api(path: str, handler: Handler, method: str) -> Route:
        return Route(path, openai_route(handler), methods=[method])

    routes = [
        api("/v1/chat/completions", model_call(CHAT_ENDPOINT), "POST"),
        api("/v1/images/generations", model_call(IMAGES_ENDPOINT), "POST"),
        api("/v1/files", create_file, "POST"),
        api("/v1/files", list_files, "GET"),
        api("/v1/files/{file_id}", retrieve_file, "GET"),
        api("/v1/files/{file_id}", delete_file, "DELETE"),
        api("/v1/files/{file_id}/content", file_content, "GET"),
        api("/v1/batches", create_batch, "POST"),
        api("/v1/batches", list_batches, "GET"),
        api("/v1/batches/{batch_id}", retrieve_batch, "GET"),
        api("/v1/batches/{batch_id}/cancel", cancel_batch, "POST"),
        api("/v1/models", list_models, "GET"),
        api("/v1/models/{model_id:path}", retrieve_model, "GET"),
        Route("/_admin/faults", admin_add_fault, methods=["POST"]),
        Route("/_admin/faults", admin_list_faults, methods=["GET"]),
        Route("/_admin/faults", admin_clear_faults, methods=["DELETE"]),
        Route("/_admin/clock/advance", admin_advance_clock, methods=["POST"]),
        Route("/_admin/health", admin_health, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: unknown_route, 405: unknown_route})


def _fault_error(rule: FaultRule) -> APIError:
    """The refusal an HTTP-level fault answers with, shaped like the real 429 or 500."""
    params = rule.params
    headers = {}
    if "retry_after_ms" in params or rule.kind == "http_429":
        headers["retry-after-ms"] = str(params.get("retry_after_ms", 10))
    if rule.kind == "http_429":
        return APIError(
            429,
            params.get("message", "Rate limit reached for requests. Please try again later."),
            type=params.get("type", "requests"),
            code=params.get("code", "rate_limit_exceeded"),
            headers=headers,
        )
    return server_error(params.get("message", SERVER_ERROR_MESSAGE), headers)


def _http_target(request: Request, raw: bytes) -> FaultTarget:
    """Fault-matching view of an HTTP call; model and service_tier come from a JSON body if there is one."""
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    fields = body if isinstance(body, dict) else {}
    return FaultTarget(
        path=request.url.path,
        method=request.method,
        model=fields.get("model") if isinstance(fields.get("model"), str) else None,
        service_tier=fields.get("service_tier") if isinstance(fields.get("service_tier"), str) else None,
        body_text=raw.decode("utf-8", "replace"),
    )


def _limit(value: str | None, *, default: int, maximum: int) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise invalid_value("limit", f"Invalid 'limit': '{value}' is not an integer.") from None
    if limit < 1:
        raise APIError(
            400,
            f"Invalid 'limit': integer below minimum value. Expected a value >= 1, but got {limit} instead.",
            param="limit",
            code="integer_below_min_value",
        )
    if limit > maximum:
        raise APIError(
            400,
            f"Invalid 'limit': integer above maximum value. Expected a value <= {maximum}, but got {limit} instead.",
            param="limit",
            code="integer_above_max_value",
        )
    return limit
