"""Schema migrations with Alembic, run in code (no alembic.ini): `migrate(url)`, `current_revision(url)`."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from .engine import make_engine

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(script_location: str | Path = MIGRATIONS) -> Config:
    config = Config()
    config.set_main_option("script_location", str(script_location))
    return config


def head_revision(script_location: str | Path = MIGRATIONS) -> str:
    return ScriptDirectory.from_config(alembic_config(script_location)).get_current_head()


def upgrade(engine: Engine, revision: str = "head", script_location: str | Path = MIGRATIONS) -> None:
    """Upgrade in one transaction; on PostgreSQL an advisory lock keeps two processes from racing."""
    config = alembic_config(script_location)
    with engine.begin() as connection:
        _lock(connection)
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str, script_location: str | Path = MIGRATIONS) -> None:
    config = alembic_config(script_location)
    with engine.begin() as connection:
        _lock(connection)
        config.attributes["connection"] = connection
        command.downgrade(config, revision)


def revision_of(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def migrate(url: str) -> str:
    """Bring the database at `url` to the newest schema; returns the revision it is at."""
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        upgrade(engine)
        return revision_of(engine)
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    """The schema revision of the database at `url` (None: never migrated)."""
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        return revision_of(engine)
    finally:
        engine.dispose()


def _lock(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # Per schema, so tests in their own schemas do not wait for each other.
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('citytwin-ioc-migrate:' || "
                                "coalesce(current_schema(), '')))"))
