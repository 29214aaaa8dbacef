"""Database URLs and engines: SQLite tuned for one writer, PostgreSQL through psycopg 3."""

from __future__ import annotations

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool

# FastAPI runs sync handlers in a threadpool of 40: enough connections that none waits for the pool.
POOL_SIZE = 10
MAX_OVERFLOW = 30
SQLITE_BUSY_TIMEOUT_MS = 30_000
BEGIN_OPTION = "citytwin_sqlite_begin"  # execution option: the BEGIN a SQLite transaction starts with


def normalise_url(url: str | URL) -> URL:
    """`postgres://` and `postgresql://` mean psycopg 3; `options=-csearch_path%3D<schema>` passes through
    to libpq, which sets the schema for everything (tables and Alembic's version table alike)."""
    parsed = make_url(url) if isinstance(url, str) else url
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"database URL must be sqlite:///… or postgresql://…, got {parsed.drivername}://")
    return parsed


def is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def make_engine(url: str | URL, pool_size: int = POOL_SIZE, max_overflow: int = MAX_OVERFLOW) -> Engine:
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_engine(parsed, pool_size, max_overflow)
    return create_engine(parsed, pool_size=pool_size, max_overflow=max_overflow, pool_recycle=3600)


def _sqlite_engine(url: URL, pool_size: int, max_overflow: int) -> Engine:
    if is_memory_sqlite(url):
        # One shared connection, or every pooled connection would see its own empty database.
        engine = create_engine(url, poolclass=StaticPool, connect_args={"check_same_thread": False})
    else:
        engine = create_engine(url, pool_size=pool_size, max_overflow=max_overflow,
                               connect_args={"check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # We emit BEGIN ourselves (below): the sqlite3 module's implicit transactions skip SELECTs.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process crash (the pages are in the OS); only power
        # loss may lose the last transactions.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql(connection.get_execution_options().get(BEGIN_OPTION, "BEGIN IMMEDIATE"))

    return engine
