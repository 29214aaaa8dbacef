"""IOC storage: `SqlStore` on SQLite (WAL, the default) or PostgreSQL, with Alembic migrations.

    store = open_store("sqlite:///ioc.sqlite3")      # or postgresql://user@host/db
    with store.transaction() as tx:
        tx.get_request(1)
"""

from __future__ import annotations

from .engine import make_engine, normalise_url
from .migrate import current_revision, head_revision, migrate, upgrade
from .sql import SqlStore, SqlTx, distance_m

__all__ = ["SqlStore", "SqlTx", "current_revision", "distance_m", "head_revision", "make_engine", "migrate",
           "normalise_url", "open_store"]


def open_store(url: str, *, pool_size: int | None = None, max_overflow: int | None = None) -> SqlStore:
    """A store on `url`, its schema first upgraded to the newest revision."""
    options = {k: v for k, v in (("pool_size", pool_size), ("max_overflow", max_overflow)) if v is not None}
    engine = make_engine(url, **options)
    try:
        upgrade(engine)
    except BaseException:
        engine.dispose()
        raise
    return SqlStore(engine)
