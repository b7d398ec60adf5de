"""A live API for the client and CLI tests: `create_app` served over real HTTP.

One migrated SQLite database and the session's Redis; the API runs in a werkzeug server
thread on a free port. No worker runs here (tests/test_end_to_end.py runs the whole service).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from werkzeug.serving import make_server

from api import create_app
from jobs import migrate
from jobs.settings import Settings
from s4c.embedded import find_free_port
from tests.s4c.support import LiveApi


@pytest.fixture(scope="session")
def live_api(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveApi]:
    home = tmp_path_factory.mktemp("s4c-live-api")
    settings = Settings.from_env(
        {"S4C_HOME": str(home), "S4C_BROKER_URL": redis_url}
    ).with_overrides(
        model_dir=Settings.from_env().resolved_model_dir,  # the tokenizer `make setup` fetched
        rate_limit_per_minute=100_000,
        baseline_sample=0.0,
    )
    migrate.upgrade(settings)
    port = find_free_port()
    settings = settings.with_overrides(api_url=f"http://127.0.0.1:{port}")
    server = make_server("127.0.0.1", port, create_app(settings), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield LiveApi(settings.api_url, settings)
    server.shutdown()
    thread.join(10)


@pytest.fixture
def api_key(live_api: LiveApi) -> str:
    return live_api.new_key()


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[[list[dict[str, object]]], Path]:
    """Write OpenAI Batch input lines to a temporary .jsonl file."""

    def write(lines: list[dict[str, object]]) -> Path:
        path = tmp_path / f"batch-{uuid.uuid4().hex[:6]}.jsonl"
        path.write_text("".join(json.dumps(line) + "\n" for line in lines))
        return path

    return write
