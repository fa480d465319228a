"""Errors in OpenAI's shape: every failure the server answers is one JSON object
``{"error": {"message", "type", "param", "code"}}`` with the right status, never a
traceback.

This module owns that shape (:func:`error_body`, :class:`ApiError`) and the exception
handlers that turn FastAPI's validation errors, unknown routes and anything unexpected
into it (:func:`install_error_handlers`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from starlette.responses import Response

__all__ = ["ApiError", "error_body", "install_error_handlers"]

_LOG = logging.getLogger(__name__)

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    502: "upstream_error",
    503: "server_overloaded",
    504: "timeout_error",
}
"""The ``type`` OpenAI's clients expect for each status (their SDK maps the status to
an exception class; the type says the same in words)."""


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """The JSON body of an error response with ``status``."""
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


class ApiError(Exception):
    """An error the server answers as it is: status, one-line message, the request field
    it is about (``param``, dotted) and a machine-readable ``code``."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def response(self) -> Response:
        """The JSON response of this error."""
        from starlette.responses import JSONResponse

        body = error_body(self.status, self.message, param=self.param, code=self.code)
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _field(loc: Any) -> str | None:
    """A pydantic error location as the dotted request field (``body`` left out)."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or None


def install_error_handlers(app: FastAPI) -> None:
    """Answer every error of ``app`` in OpenAI's shape."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return exc.response()

    async def invalid(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        field = _field(first.get("loc", ()))
        where = f"{field}: " if field else ""
        return ApiError(400, f"{where}{first.get('msg', 'invalid')}", param=field).response()

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        return ApiError(exc.status_code, message, headers=dict(exc.headers or {})).response()

    async def unexpected(request: Request, exc: Exception) -> Response:
        # Logged for the operator; the client gets one line and no traceback.
        _LOG.exception("unhandled error on %s %s", request.method, request.url.path)
        return ApiError(500, f"internal error: {type(exc).__name__}").response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
