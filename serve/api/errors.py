"""One error envelope for every failure: `{"error": {"code", "message"}}`, never a stack trace;
body parsing with size and JSON checks; the FastAPI app with its handlers and static files."""
import json
import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("ray.serve.chandler")

STATIC = Path(__file__).resolve().parent / "static"
MAX_BODY_BYTES = 1 << 20
RETRY_BUSY, RETRY_DOWN = "2", "5"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after

    def response(self) -> JSONResponse:
        headers = {"Retry-After": self.retry_after} if self.retry_after else {}
        if self.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        return JSONResponse({"error": {"code": self.code, "message": self.message}}, self.status, headers)


def _validation_error(error: RequestValidationError | ValidationError) -> ApiError:
    problems = error.errors()
    if any(p.get("type") == "json_invalid" for p in problems):
        return ApiError(400, "invalid_json", "the request body is not valid JSON")
    first = problems[0] if problems else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    return ApiError(422, "invalid_request", f"{where}: {first.get('msg', 'invalid value')}")


async def read_body(request: Request) -> bytes:
    """The body, read no further than MAX_BODY_BYTES (a chunked body has no Content-Length to check)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise ApiError(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse(request: Request, model: type[BaseModel]) -> Any:
    """The body as `model`, whatever the Content-Type says: 400 for bad JSON (also nested too
    deep, or text with lone surrogates), 422 for bad fields."""
    raw = await read_body(request)
    try:
        data = json.loads(raw)
        json.dumps(data, ensure_ascii=False).encode()  # "\ud800" parses, but is no text a tokenizer takes
    except (ValueError, RecursionError):  # UnicodeError is a ValueError
        raise ApiError(400, "invalid_json", "the request body is not valid JSON (or not valid Unicode text)") from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "body: expected a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise _validation_error(error) from None


api = FastAPI(title="Chandler bot", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(ApiError)
async def _api_error(request: Request, error: ApiError) -> JSONResponse:
    return error.response()


@api.exception_handler(RequestValidationError)
async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
    return _validation_error(error).response()


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    return ApiError(error.status_code, codes.get(error.status_code, "http_error"), str(error.detail)).response()


@api.exception_handler(Exception)
async def _crash(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return ApiError(500, "internal", "internal error; see the server log").response()


@api.middleware("http")
async def _limit_body(request: Request, call_next):
    size = request.headers.get("content-length", "")
    if size.isdigit() and int(size) > MAX_BODY_BYTES:
        return ApiError(413, "too_large", f"request body over {MAX_BODY_BYTES} bytes").response()
    return await call_next(request)


api.mount("/static", StaticFiles(directory=STATIC), name="static")
