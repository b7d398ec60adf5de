"""Running Alembic from Python (`s4c db upgrade`) and refusing an un-migrated database.

`upgrade` takes a PostgreSQL advisory lock so several processes upgrading at boot never race;
`require_up_to_date` is what the API and the worker call before serving.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, text

from jobs.db import create_db_engine, ensure_sqlite_dir, is_sqlite
from jobs.settings import Settings

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# An arbitrary constant naming "s4c schema upgrade" among PostgreSQL advisory locks.
_ADVISORY_LOCK_KEY = 0x5_34C_0DB


class DatabaseNotMigrated(RuntimeError):
    """The database schema is missing or older (or newer) than this code's migrations."""


def alembic_config() -> Config:
    """An Alembic Config for the packaged migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["configure_logger"] = False
    return config


def head_revisions() -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config()).get_heads())


def current_revisions(engine: Engine) -> set[str]:
    """The revisions the database is at (empty for a fresh or missing database)."""
    database = engine.url.database
    is_file = is_sqlite(engine) and bool(database) and database != ":memory:"
    if is_file and not Path(str(database)).expanduser().exists():
        return set()  # connecting would create an empty file as a side effect
    with engine.connect() as connection:
        return set(MigrationContext.configure(connection).get_current_heads())


def is_up_to_date(engine: Engine) -> bool:
    """True when the database is at the migrations' head revision."""
    return current_revisions(engine) == head_revisions()


def require_up_to_date(engine: Engine) -> None:
    """Raise DatabaseNotMigrated with a message saying what to run."""
    current, head = current_revisions(engine), head_revisions()
    if current != head:
        at = ", ".join(sorted(current)) or "an empty schema"
        raise DatabaseNotMigrated(
            f"the database {engine.url.render_as_string(hide_password=True)} is at {at}, "
            f"but this code needs revision {', '.join(sorted(head))}: run `s4c db upgrade` "
            "(or `alembic upgrade head`) first"
        )


def upgrade(target: Settings | str, revision: str = "head") -> None:
    """Migrate the database of `target` (Settings or a URL) to `revision`.

    One transaction; on PostgreSQL under an advisory lock, so concurrent callers wait and
    then find nothing left to do.
    """
    url = target if isinstance(target, str) else target.database_url
    ensure_sqlite_dir(url)
    engine = create_db_engine(url)
    config = alembic_config()
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK_KEY}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, revision)
    finally:
        engine.dispose()
