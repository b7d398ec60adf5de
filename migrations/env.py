"""Alembic environment: the s4c models' metadata and the database URL from Settings.

The URL comes from a connection passed in `config.attributes["connection"]` (what
`jobs.migrate.upgrade` does, under its lock), else from `sqlalchemy.url` when a caller set
it, else from `Settings.from_env()` (S4C_DATABASE_URL). SQLite runs in batch mode, because
it cannot ALTER most things in place.
"""

from __future__ import annotations

import logging.config

from alembic import context
from sqlalchemy.engine import Connection

from jobs.db import create_db_engine, ensure_sqlite_dir
from jobs.models import Base
from jobs.settings import Settings

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    logging.config.fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def _database_url() -> str:
    return config.get_main_option("sqlalchemy.url") or Settings.from_env().database_url


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    url = _database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=url.startswith("sqlite"),
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        _run(given)
        return
    url = _database_url()
    ensure_sqlite_dir(url)
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
