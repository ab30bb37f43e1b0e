"""OpenAI-shaped errors: one exception type, one JSON shape, handlers for everything FastAPI raises.

Every error body is `{"error": {"message", "type", "param", "code"}}`, the shape the official
`openai` client parses into `BadRequestError`, `AuthenticationError`, `NotFoundError`, ... .
Messages say what to change. Validation errors (bad JSON, wrong types, out-of-range values) are
400 as in OpenAI's API (FastAPI's default would be 422), and an unexpected exception is a 500
with a generic message (details go to the server log, not to the client).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from openchat_core.serving.protocol import ErrorDetail, ErrorResponse
from openchat_core.serving.runtime import ModelSwitchError

logger = logging.getLogger("openchat_core.serving")

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "unprocessable_entity_error",
    503: "service_unavailable_error",
}


_NOT_AN_OBJECT = frozenset({"model_attributes_type", "dict_type", "model_type", "missing"})


class OpenAIError(Exception):
    """Raise anywhere in a request; the handler turns it into the OpenAI error JSON with `status`."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.type = type or _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=ErrorDetail(message=self.message, type=self.type, param=self.param,
                                               code=self.code)).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def _loc_to_param(loc: tuple[Any, ...] | list[Any]) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role' (OpenAI's `param` style)."""
    parts = [p for p in loc if p != "body"]
    out = ""
    for p in parts:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += ("." if out else "") + str(p)
    return out or None


def validation_error(exc: RequestValidationError) -> OpenAIError:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return OpenAIError(400, "The request body is not valid JSON; send a JSON object with Content-Type: "
                                "application/json.", code="invalid_json")
    if any(tuple(e.get("loc", ())) == ("body",) and e.get("type") in _NOT_AN_OBJECT for e in errors):
        return OpenAIError(400, "The request body must be a JSON object sent with Content-Type: application/json "
                                "(got something else, or nothing).", code="invalid_json")
    messages = []
    for err in errors[:5]:
        where = _loc_to_param(err.get("loc", ()))
        text = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        messages.append(f"{where}: {text}" if where else text)
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    first = _loc_to_param(errors[0].get("loc", ())) if errors else None
    return OpenAIError(400, "Invalid request: " + "; ".join(messages) + more, code="invalid_request", param=first)


def _respond(request: Request, error: OpenAIError) -> JSONResponse:
    """The error response; the message also goes into this request's log record (see metrics.py)."""
    record = request.scope.get("state", {}).get("openchat_log")
    if isinstance(record, dict):
        record.setdefault("error", error.message)
    return error.response()


def install_error_handlers(app: FastAPI) -> None:
    """Map every error FastAPI/Starlette can raise onto the OpenAI shape."""

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, exc: OpenAIError) -> JSONResponse:
        return _respond(request, exc)

    @app.exception_handler(ModelSwitchError)
    async def _model_switch(request: Request, exc: ModelSwitchError) -> JSONResponse:
        """No live model yet (503) or a switch already running (409): raised by routes, answered here once."""
        return _respond(request, OpenAIError(exc.status, str(exc), code=exc.code))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _respond(request, validation_error(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        if status == 404:
            message = "Unknown route; the API serves /v1/chat/completions, /v1/models, /health, /ready, /metrics."
        elif status == 405:
            message = "Method not allowed on this route."
        else:
            message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(status).phrase
        return _respond(request, OpenAIError(status, message, code=HTTPStatus(status).phrase.lower().replace(" ", "_"),
                                             headers=getattr(exc, "headers", None)))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return OpenAIError(500, "Internal server error; the server log has the details.", type="server_error",
                           code="internal_error").response()
