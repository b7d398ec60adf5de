"""API test wiring: one migrated database per backend (SQLite and PostgreSQL), an app per
backend built by `create_app`, and fresh tenants with keys for each test.

Every API test that takes `client` runs twice, once per backend. Tests share the database of
their backend for the session, so each test works under tenants of its own and compares row
counts before and after a request rather than absolute numbers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api.services import Services
from jobs import migrate, store
from jobs.db import transaction
from jobs.settings import Settings
from tests.api.support import ApiTenant

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The default model's directory (tokenizer, config, chat template) fetched by `make setup`."""
    path = Settings.from_env().resolved_model_dir
    assert (path / "tokenizer.json").is_file(), f"run `s4c model fetch` first: {path} is empty"
    return path


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database for this backend, shared by the session's API tests."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('api-db') / 's4c.sqlite'}"
    else:
        url = str(request.getfixturevalue("pg_url"))
    migrate.upgrade(Settings.from_env({}).with_overrides(database_url=url))
    return url


API_REDIS_DB = 13


@pytest.fixture(scope="session")
def api_broker_url(redis_url: str) -> Iterator[str]:
    """The session's Redis server, on a database of the API tests' own: the chunk messages
    they enqueue never reach a worker that other tests start. Emptied at the end."""
    base, _, last = redis_url.rpartition("/")
    url = f"{base}/{API_REDIS_DB}" if last.isdigit() else f"{redis_url.rstrip('/')}/{API_REDIS_DB}"
    yield url
    redis.Redis.from_url(url).flushdb()


@pytest.fixture(scope="session")
def make_settings(
    database_url: str,
    api_broker_url: str,
    model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[..., Settings]:
    """Settings for a test app on this backend; keyword arguments override fields."""
    home = tmp_path_factory.mktemp("s4c-home")

    def build(**overrides: object) -> Settings:
        base = Settings(
            home=home,
            database_url=database_url,
            broker_url=api_broker_url,
            model_dir=model_dir,
            rate_limit_per_minute=100_000,
            max_body_bytes=64 * 1024 * 1024,
            chunk_size=4,
            baseline_sample=0.0,
        )
        return base.with_overrides(**overrides)

    return build


@pytest.fixture(scope="session")
def app(make_settings: Callable[..., Settings]) -> Flask:
    return create_app(make_settings())


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def make_tenant(app: Flask) -> Callable[[], ApiTenant]:
    """Create a tenant with one API key (a fresh name each call)."""
    services = app.extensions["s4c"]
    assert isinstance(services, Services)

    def create() -> ApiTenant:
        name = f"tenant-{uuid.uuid4().hex[:12]}"
        with transaction(services.sessions) as session:
            key_row, plaintext = store.create_api_key(session, name)
            return ApiTenant(name=name, key=plaintext, key_id=key_row.id)

    return create


@pytest.fixture
def tenant(make_tenant: Callable[[], ApiTenant]) -> ApiTenant:
    return make_tenant()


@pytest.fixture
def other_tenant(make_tenant: Callable[[], ApiTenant]) -> ApiTenant:
    return make_tenant()


@pytest.fixture
def fresh_app(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., Flask]]:
    """Build extra apps with overridden settings (e.g. tight limits) for one test."""

    def build(**overrides: object) -> Flask:
        return create_app(make_settings(**overrides))

    yield build
