"""The API as a service: health and readiness, unreachable database or broker, enqueueing
after commit, refusing an un-migrated database, and never loading torch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from api import StartupError, create_app
from jobs import messaging, migrate
from jobs.models import Chunk, ChunkState
from jobs.settings import Settings
from s4c.embedded import create_database, drop_database
from tests.api.support import ApiTenant, assert_job, assert_problem, inline_job, services_of

REPO = Path(__file__).resolve().parents[2]
DEAD_BROKER = "redis://127.0.0.1:1/0"


def test_healthz_and_readyz(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "checks": {"database": "ok", "broker": "ok"}}


def test_submit_enqueues_one_message_per_chunk(
    client: FlaskClient, app: Flask, tenant: ApiTenant
) -> None:
    settings = services_of(app).settings
    assert settings.broker_url is not None
    queue = messaging.queue_for_model(settings.model_name)
    broker = redis.Redis.from_url(settings.broker_url)
    before = broker.llen(queue)
    response = client.post("/v1/jobs", json=inline_job(9), headers=tenant.headers)
    assert response.status_code == 201
    assert broker.llen(queue) - before == 3  # 9 requests in chunks of 4
    message = json.loads(broker.lindex(queue, 0) or b"{}")
    assert message["headers"]["task"] == messaging.GENERATE_CHUNK


def test_broker_down_job_still_stored_and_readyz_says_why(
    fresh_app: Callable[..., Flask], tenant: ApiTenant
) -> None:
    app = fresh_app(broker_url=DEAD_BROKER)
    client = app.test_client()
    ready = client.get("/readyz")
    assert_problem(ready, 503, "broker unreachable")
    assert ready.headers["Retry-After"]
    started = time.monotonic()
    response = client.post("/v1/jobs", json=inline_job(5), headers=tenant.headers)
    assert response.status_code == 201, response.get_data(as_text=True)
    assert time.monotonic() - started < 15
    job = assert_job(response.get_json())
    with services_of(app).sessions() as session:
        states = session.scalars(select(Chunk.state).where(Chunk.job_id == job["id"])).all()
    assert states == [ChunkState.QUEUED, ChunkState.QUEUED]  # the sweep will send them


def test_database_down_is_503_problem_without_internals(
    pg_server_url: str, make_settings: Callable[..., Settings], make_tenant: Callable[[], ApiTenant]
) -> None:
    name = f"s4c_api_down_{uuid.uuid4().hex[:8]}"
    url = create_database(pg_server_url, name)
    try:
        settings = make_settings(database_url=url)
        migrate.upgrade(settings)
        app = create_app(settings)
        client = app.test_client()
        assert client.get("/readyz").status_code == 200
        drop_database(pg_server_url, name)
        ready = client.get("/readyz")
        assert_problem(ready, 503, "database unreachable")
        response = client.get("/v1/jobs", headers={"Authorization": "Bearer s4c_whatever"})
        problem = assert_problem(response, 503, "database")
        assert "Traceback" not in json.dumps(problem) and "psycopg" not in json.dumps(problem)
        assert response.headers["Retry-After"] == "5"
    finally:
        drop_database(pg_server_url, name)


def test_unmigrated_database_refuses_to_start(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'empty.sqlite'}")
    with pytest.raises(StartupError, match="s4c db upgrade"):
        create_app(settings)


def test_missing_model_refuses_to_start(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    with pytest.raises(StartupError, match="s4c model fetch"):
        create_app(make_settings(model_dir=tmp_path / "no-model"))


def test_building_the_app_does_not_import_torch(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(database_url=f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate.upgrade(settings)
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import api\n"
        "from jobs.settings import Settings\n"
        f"settings = Settings(home=Path({str(tmp_path)!r}), "
        f"database_url={settings.database_url!r}, broker_url={DEAD_BROKER!r}, "
        f"model_dir=Path({str(settings.resolved_model_dir)!r}))\n"
        "app = api.create_app(settings)\n"
        "assert app.test_client().get('/healthz').status_code == 200\n"
        "print('torch' in sys.modules, 'transformers' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


def test_unexpected_error_is_a_generic_500_problem(fresh_app: Callable[..., Flask]) -> None:
    app = fresh_app()

    def explode() -> str:
        raise RuntimeError("secret internals")

    app.add_url_rule("/explode", "explode", explode)
    response = app.test_client().get("/explode")
    problem = assert_problem(response, 500, "failed to handle")
    assert "secret" not in json.dumps(problem) and "Traceback" not in json.dumps(problem)
