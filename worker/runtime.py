"""Per-process worker state: settings, database sessions, the engine loaded once, a stop flag.

One `WorkerRuntime` per worker process. The engine (and torch with it) is imported and loaded
on the first task, after the launcher has pinned the GPU, never at import time.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import threading
import uuid
from typing import cast

from sqlalchemy import Engine as DbEngine
from sqlalchemy.orm import Session, sessionmaker

from jobs.db import create_db_engine, session_factory
from jobs.settings import Settings
from s4c_engine.config import Method
from worker.generation import GenerationEngine

log = logging.getLogger(__name__)


def new_worker_id() -> str:
    """A lease owner name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class WorkerRuntime:
    """What the tasks of one worker process share.

    `shutdown` is set when the worker is asked to stop (SIGTERM): the running chunk stops at
    its next step and hands its unfinished requests back.
    """

    def __init__(self, settings: Settings, *, worker_id: str | None = None) -> None:
        self.settings = settings
        self.worker_id = worker_id or new_worker_id()
        self.shutdown = threading.Event()
        self._lock = threading.Lock()
        self._db: DbEngine | None = None
        self._sessions: sessionmaker[Session] | None = None
        self._engine: GenerationEngine | None = None

    @property
    def db(self) -> DbEngine:
        with self._lock:
            if self._db is None:
                self._db = create_db_engine(self.settings.database_url)
            return self._db

    @property
    def sessions(self) -> sessionmaker[Session]:
        db = self.db
        with self._lock:
            if self._sessions is None:
                self._sessions = session_factory(db)
            return self._sessions

    def engine(self) -> GenerationEngine:
        """The generation engine, loaded on first use and kept for the life of the process."""
        with self._lock:
            if self._engine is None:
                self._engine = self._load_engine()
            return self._engine

    def _load_engine(self) -> GenerationEngine:
        # Imported by name, here: torch loads only now (after the launcher pinned the GPU),
        # and the worker is typed against the GenerationEngine protocol, not torch internals.
        engine_class = importlib.import_module("s4c_engine.engine").Engine
        torch = importlib.import_module("torch")

        settings = self.settings
        method = settings.engine_method
        if method not in ("s4c", "medusa", "ar"):
            raise ValueError(f"S4C_ENGINE_METHOD must be s4c, medusa or ar, not {method!r}")
        if settings.torch_threads < 0:
            raise ValueError(f"S4C_TORCH_THREADS must be >= 0, not {settings.torch_threads}")
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        log.info(
            "loading %s from %s on %s (method %s, torch threads: %d)",
            settings.model_name,
            settings.resolved_model_dir,
            settings.device,
            method,
            torch.get_num_threads(),
        )
        engine: GenerationEngine = engine_class.load(
            settings.resolved_model_dir,
            heads_path=settings.heads_path,
            datastore_path=settings.datastore_path,
            method=cast(Method, method),
            device=settings.device,
            max_batch_size=settings.max_batch_size,
        )
        return engine

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
