"""Worker test fixtures: a tiny random Llama with the real tokenizer, a fresh migrated
PostgreSQL database per test, Settings with a queue of their own, and real worker processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy.orm import Session, sessionmaker

from jobs import migrate
from jobs.db import create_db_engine, session_factory
from jobs.settings import Settings
from s4c.embedded import create_database, drop_database
from tests.model_fixtures import DEFAULT_MODEL_DIR

REPO = Path(__file__).resolve().parents[2]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
# Long enough that tests can hit a prompt over the context on purpose.
TINY_CONTEXT = 256


@pytest.fixture(scope="session")
def worker_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama (vocab of the real tokenizer) saved as an HF model directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    source = DEFAULT_MODEL_DIR
    # Named "tiny": the name tests/model_fixtures.random_heads builds heads for.
    target = tmp_path_factory.mktemp("tiny-model") / "tiny"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=64,
        max_position_embeddings=TINY_CONTEXT,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(target)
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copy(source / name, target / name)
    return target


@pytest.fixture(scope="session")
def worker_heads_dir(worker_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Untrained (randomly perturbed) S4C draft heads for the tiny model, saved to disk."""
    from transformers import LlamaForCausalLM

    from tests.model_fixtures import random_heads

    model = LlamaForCausalLM.from_pretrained(worker_model_dir).eval()
    path = tmp_path_factory.mktemp("tiny-heads") / "s4c"
    random_heads(model, "s4c", num_heads=3).save(path)
    return path


@pytest.fixture
def worker_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database for one test, shared with its worker processes:
    PostgreSQL, or SQLite (the embedded single-host mode) when parametrized indirectly."""
    backend = getattr(request, "param", "postgresql")
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'worker.sqlite'}"
        migrate.upgrade(url)
        yield url
        return
    server: str = request.getfixturevalue("pg_server_url")
    name = f"s4c_worker_{uuid.uuid4().hex[:10]}"
    url = create_database(server, name)
    migrate.upgrade(url)
    yield url
    drop_database(server, name)


@pytest.fixture
def worker_settings(
    worker_db_url: str, redis_url: str, worker_model_dir: Path, worker_heads_dir: Path
) -> Settings:
    """Settings for one test: its own model name, hence its own queue on the shared Redis;
    the tiny model with draft heads, so workers decode speculatively."""
    return Settings.from_env({}).with_overrides(
        database_url=worker_db_url,
        broker_url=redis_url,
        model_name=f"tiny-{uuid.uuid4().hex[:8]}",
        model_dir=worker_model_dir,
        heads_path=worker_heads_dir,
        engine_method="s4c",
        chunk_size=4,
        max_batch_size=4,
        lease_seconds=30,
        sweep_interval_seconds=1,
        max_attempts=3,
        baseline_sample=0.0,
    )


@pytest.fixture
def sessions(worker_settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the test's database (each test opens and commits its own)."""
    db = create_db_engine(worker_settings.database_url)
    yield session_factory(db)
    db.dispose()


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes Settings.from_env() in a child equal `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("S4C_")}
    env.update(
        {
            "S4C_DATABASE_URL": settings.database_url,
            "S4C_BROKER_URL": str(settings.broker_url),
            "S4C_MODEL_NAME": settings.model_name,
            "S4C_ENGINE_METHOD": settings.engine_method,
            "S4C_CHUNK_SIZE": str(settings.chunk_size),
            "S4C_MAX_BATCH_SIZE": str(settings.max_batch_size),
            "S4C_LEASE_SECONDS": str(settings.lease_seconds),
            "S4C_SWEEP_INTERVAL_SECONDS": str(settings.sweep_interval_seconds),
            "S4C_MAX_ATTEMPTS": str(settings.max_attempts),
            "S4C_DEVICE": "cpu",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.model_dir is not None:
        env["S4C_MODEL_DIR"] = str(settings.model_dir)
    if settings.heads_path is not None:
        env["S4C_HEADS"] = str(settings.heads_path)
    if settings.datastore_path is not None:
        env["S4C_DATASTORE"] = str(settings.datastore_path)
    return env


class WorkerProcess:
    """A real worker (`python -m worker.launch`) in a subprocess, logging to a file."""

    def __init__(self, process: subprocess.Popen[bytes], log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "ready" in self.log():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log()}")
            time.sleep(0.2)
        raise AssertionError(f"worker not ready after {timeout}s:\n{self.log()}")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """Start real worker processes for `settings`; all are stopped when the test ends."""
    started: list[WorkerProcess] = []

    def start(settings: Settings) -> WorkerProcess:
        log_path = tmp_path / f"worker-{len(started)}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "worker.launch", "--name", f"w{len(started)}@test"],
                cwd=REPO,
                env=settings_env(settings),
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(process, log_path)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def api_client(settings: Settings, tenant: str = "acme") -> tuple[FlaskClient, dict[str, str]]:
    """The real API (`create_app`) on `settings`' database and broker, and the Authorization
    header of a fresh key for `tenant` (the tenant `submit` creates jobs for)."""
    from api import create_app
    from jobs import store
    from jobs.db import create_db_engine, session_factory, transaction

    db = create_db_engine(settings.database_url)
    try:
        with transaction(session_factory(db)) as session:
            _, key = store.create_api_key(session, tenant)
    finally:
        db.dispose()
    app = create_app(settings.with_overrides(rate_limit_per_minute=100_000))
    return app.test_client(), {"Authorization": f"Bearer {key}"}
