"""RFC 9457 problem details: the one error shape every API response uses.

`ApiProblem` is raised by views and validation code; `register_error_handlers` turns it, every
werkzeug HTTP error and unreachable-backend errors into `application/problem+json`. Nothing here
decides *whether* a request is wrong, only how the answer looks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from flask import Flask, Response, json, request
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:s4c:problem:"
MAX_REPORTED_ERRORS = 20


@dataclass(frozen=True)
class ErrorItem:
    """One precise complaint about the input; `line` is 1-based (JSONL), `field` a dotted path."""

    message: str
    line: int | None = None
    custom_id: str | None = None
    field: str | None = None

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        if self.line is not None:
            out["line"] = self.line
        if self.custom_id is not None:
            out["custom_id"] = self.custom_id
        if self.field is not None:
            out["field"] = self.field
        return out


@dataclass
class ApiProblem(Exception):
    """An error answer: status, a stable `slug` (the problem type) and a human `detail`."""

    status: int
    slug: str
    detail: str
    errors: list[ErrorItem] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.status} {self.slug}: {self.detail}"


def _slug_for_status(status: int) -> str:
    return HTTPStatus(status).phrase.lower().replace(" ", "-").replace("'", "")


def problem_response(problem: ApiProblem) -> Response:
    """Render `problem` as an `application/problem+json` response."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + problem.slug,
        "title": HTTPStatus(problem.status).phrase,
        "status": problem.status,
        "detail": problem.detail,
        "instance": request.path,
    }
    if problem.errors:
        body["errors"] = [item.as_json() for item in problem.errors[:MAX_REPORTED_ERRORS]]
    response = Response(json.dumps(body), status=problem.status, mimetype=PROBLEM_MEDIA_TYPE)
    for name, value in problem.headers.items():
        response.headers[name] = value
    return response


def _http_exception_to_problem(exc: HTTPException) -> ApiProblem:
    status = exc.code or 500
    headers = {
        name: value
        for name, value in exc.get_headers()
        if name.lower() in ("allow", "retry-after", "www-authenticate")
    }
    detail = exc.description or HTTPStatus(status).description
    if status == 405:
        detail = f"{request.method} is not allowed here; allowed: {headers.get('Allow', '')}"
    elif status == 413:
        detail = "the request body is larger than the configured limit (S4C_MAX_BODY_BYTES)"
    return ApiProblem(status, _slug_for_status(status), detail, headers=headers)


def register_error_handlers(app: Flask) -> None:
    """Route every error path of `app` through `problem_response`."""

    @app.errorhandler(ApiProblem)
    def _on_problem(exc: ApiProblem) -> Response:
        return problem_response(exc)

    @app.errorhandler(HTTPException)
    def _on_http(exc: HTTPException) -> Response:
        return problem_response(_http_exception_to_problem(exc))

    @app.errorhandler(OperationalError)
    @app.errorhandler(InterfaceError)
    @app.errorhandler(DisconnectionError)
    @app.errorhandler(PoolTimeoutError)
    def _on_database_down(exc: Exception) -> Response:
        logger.warning("database unavailable during %s %s: %s", request.method, request.path, exc)
        return problem_response(
            ApiProblem(
                503,
                "database-unavailable",
                "the database is unreachable; retry later",
                headers={"Retry-After": "5"},
            )
        )

    @app.errorhandler(Exception)
    def _on_unexpected(exc: Exception) -> Response:
        logger.exception("unhandled error during %s %s", request.method, request.path)
        return problem_response(
            ApiProblem(500, "internal-error", "the server failed to handle this request")
        )
