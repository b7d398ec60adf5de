"""The app factory: `create_app(settings)` builds the whole API and nothing else does.

It opens the database engine, refuses to start on an un-migrated database, loads the prompt
codec once (token counting for context checks), connects the Celery client and the rate
limiter, and registers the metrics hooks, the blueprints (the dashboard's assets are the app's
`api/static/`) and the problem+json error handlers.
"""

from __future__ import annotations

import logging

import redis
from flask import Flask, current_app, request
from sqlalchemy.exc import SQLAlchemyError

from api.metrics import ApiMetrics, install_request_metrics
from api.problems import ApiProblem, register_error_handlers
from api.ratelimit import MemoryRateLimiter, RateLimiter, RedisRateLimiter
from api.routes import dashboard, docs, health, metrics
from api.routes import jobs as jobs_routes
from api.schemas import InputLimits
from api.services import EXTENSION_KEY, Services, close_db_session
from api.submission import SubmissionRules
from jobs import db, messaging, migrate
from jobs.settings import Settings
from s4c_engine.prompting import PromptCodec, read_model_info

logger = logging.getLogger(__name__)

BROKER_TIMEOUT_SECONDS = 0.5


class StartupError(RuntimeError):
    """The API cannot serve with these settings (database not migrated, model missing)."""


def _redis_client(settings: Settings) -> redis.Redis | None:
    url = settings.broker_url
    if url is None or not url.startswith(("redis://", "rediss://", "unix://")):
        return None
    return redis.Redis.from_url(
        url, socket_connect_timeout=BROKER_TIMEOUT_SECONDS, socket_timeout=BROKER_TIMEOUT_SECONDS
    )


def _build_services(settings: Settings) -> Services:
    engine = db.engine_from_settings(settings)
    try:
        migrate.require_up_to_date(engine)
    except migrate.DatabaseNotMigrated as exc:
        raise StartupError(str(exc)) from exc
    except SQLAlchemyError as exc:
        raise StartupError(f"cannot reach the database ({type(exc).__name__}): {exc}") from exc
    model_dir = settings.resolved_model_dir
    if not (model_dir / "tokenizer.json").is_file():
        raise StartupError(f"no model tokenizer in {model_dir}; run `s4c model fetch` first")
    info = read_model_info(model_dir, settings.model_name)
    redis_client = _redis_client(settings)
    fallback = MemoryRateLimiter(settings.rate_limit_per_minute)
    limiter: RateLimiter = (
        fallback
        if redis_client is None
        else RedisRateLimiter(redis_client, settings.rate_limit_per_minute, fallback)
    )
    sessions = db.session_factory(engine)
    return Services(
        settings=settings,
        engine=engine,
        sessions=sessions,
        read_sessions=db.read_session_factory(engine),
        codec=PromptCodec.load(model_dir),
        rules=SubmissionRules(
            limits=InputLimits(settings.max_tokens_limit, settings.max_requests_per_job),
            model_name=settings.model_name,
            max_context=info.max_context,
        ),
        celery=messaging.make_celery(settings) if settings.broker_url else None,
        redis=redis_client,
        limiter=limiter,
        metrics=ApiMetrics.create(
            sessions,
            redis_client,
            messaging.queue_for_model(settings.model_name),
            multiprocess_dir=settings.metrics_multiprocess_dir,
        ),
    )


def _reject_oversized_body() -> None:
    """413 from the Content-Length header alone, before any byte of the body is read."""
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    length = request.content_length
    if length is not None and length > limit:
        raise ApiProblem(
            413,
            "content-too-large",
            f"the body has {length} bytes; the limit is {limit} (S4C_MAX_BODY_BYTES)",
        )


def create_app(settings: Settings | None = None) -> Flask:
    """Build the API for `settings` (default: `Settings.from_env()`); raises StartupError."""
    settings = settings or Settings.from_env()
    app = Flask("api")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    built = _build_services(settings)
    app.extensions[EXTENSION_KEY] = built
    install_request_metrics(app, built.metrics)
    app.before_request(_reject_oversized_body)
    app.teardown_appcontext(close_db_session)
    register_error_handlers(app)
    app.register_blueprint(health.bp)
    app.register_blueprint(docs.bp)
    app.register_blueprint(jobs_routes.bp)
    app.register_blueprint(metrics.bp)
    app.register_blueprint(dashboard.bp)
    return app
