"""Every failure leaves the server as OpenAI's error object, {"error": {message, type, param, code}},
so that OpenAI clients raise their usual exceptions instead of choking on FastAPI's own shapes."""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("api")

ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               405: "invalid_request_error", 408: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_exceeded", 503: "server_overloaded"}


def _sendable(text: str | None) -> str | None:
    """text as UTF-8 can carry it: a lone surrogate a client sent, quoted back, becomes its escape."""
    return None if text is None else text.encode("utf-8", "backslashreplace").decode("utf-8")


class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 type: str | None = None) -> None:
        message, param = _sendable(message), _sendable(param)
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = type or ERROR_TYPES.get(status, "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def anthropic_body(self) -> dict:
        """Anthropic's error object: {"type": "error", "error": {"type", "message"}}, its type by status."""
        kind = ANTHROPIC_TYPES.get(self.status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": self.message}}

    def response(self, path: str = "") -> JSONResponse:
        """The error in the shape of the API the path belongs to: Anthropic's under /v1/messages, else OpenAI's."""
        headers = {"Retry-After": "1"} if self.status in (429, 503) else None
        body = self.anthropic_body() if is_anthropic(path) else self.body()
        return JSONResponse(body, status_code=self.status, headers=headers)


# Anthropic's error types by HTTP status (its API reference, "Errors"); a 503 of ours is its overload.
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 408: "invalid_request_error", 413: "request_too_large",
                   429: "rate_limit_error", 500: "api_error", 503: "overloaded_error"}


def is_anthropic(path: str) -> bool:
    return path.startswith("/v1/messages")


def _validation_error(exc: RequestValidationError) -> APIError:
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return APIError(400, f"We could not parse the JSON body of your request: {first.get('msg', '')}",
                        code="invalid_json")
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    where = f"'{param}': " if param else ""
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    # OpenAI answers a malformed body with 400 (FastAPI's own choice is 422, which OpenAI's clients raise as
    # another exception than BadRequestError).
    return APIError(400, f"{where}{first.get('msg', 'invalid request')}{more}", code="invalid_value",
                    param=param)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return exc.response(request.url.path)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _validation_error(exc).response(request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = f"Unknown request URL: {request.method} {request.url.path}"
        else:
            message = str(exc.detail)
        response = APIError(exc.status_code, message).response(request.url.path)
        response.headers.update(exc.headers or {})  # e.g. the Allow header of a 405
        return response

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("request failed")
        return APIError(500, "The server had an error while processing your request.",
                        type="server_error").response(request.url.path)
