"""`/healthz` (the process answers) and `/readyz` (database and broker reachable, quickly)."""

from __future__ import annotations

import logging

import redis
from flask import Blueprint, Response, json
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from api.problems import ApiProblem, ErrorItem
from api.services import services

logger = logging.getLogger(__name__)

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    return Response(json.dumps({"status": "ok"}), mimetype="application/json")


def _database_error() -> str | None:
    try:
        with services().engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        return f"database unreachable: {type(exc).__name__}"
    return None


def _broker_error() -> str | None:
    client = services().redis
    if client is None:
        return "no broker configured (S4C_BROKER_URL)"
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"broker unreachable: {type(exc).__name__}"
    return None


@bp.get("/readyz")
def readyz() -> Response:
    checks = {"database": _database_error(), "broker": _broker_error()}
    failed = {name: message for name, message in checks.items() if message is not None}
    if failed:
        logger.warning("not ready: %s", failed)
        raise ApiProblem(
            503,
            "not-ready",
            "not ready: " + "; ".join(failed.values()),
            [ErrorItem(message, field=name) for name, message in failed.items()],
            headers={"Retry-After": "5"},
        )
    body = {"status": "ready", "checks": {name: "ok" for name in checks}}
    return Response(json.dumps(body), mimetype="application/json")
