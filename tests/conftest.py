"""Shared fixtures: where ../shared lives, and skipping (with a reason) when it is absent."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CITYTWIN_SHARED", REPO.parent / "shared"))


def shared_file(relative: str) -> Path:
    """A file under ../shared/data, or a skip that names it when ../shared is not on this machine."""
    path = SHARED / "data" / relative
    if not path.exists():
        pytest.skip(f"needs {path} (../shared/data is not on this machine)")
    return path


@pytest.fixture
def repo() -> Path:
    return REPO


# -- real services (PostgreSQL, Mosquitto) --------------------------------------------------------------
# On a user's machine without them the tests skip with a reason; where CITYTWIN_REQUIRE_SERVICES=1 (set by
# .ci/run) a missing service is a failure.
PG_URL = os.environ.get("CITYTWIN_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
MQTT_HOST = os.environ.get("CITYTWIN_MQTT_HOST", "127.0.0.1")
MQTT_PORT = int(os.environ.get("CITYTWIN_MQTT_PORT", "1883"))


def _service_missing(what: str) -> None:
    if os.environ.get("CITYTWIN_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{what} is required here (CITYTWIN_REQUIRE_SERVICES=1) but is not reachable")
    pytest.skip(f"{what} is not reachable on this machine")


def _port_open(host: str, port: int) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def postgres_url() -> str:
    """The PostgreSQL URL of the local test server, or a skip (a failure under CITYTWIN_REQUIRE_SERVICES)."""
    from urllib.parse import urlsplit

    parts = urlsplit(PG_URL)
    if not _port_open(parts.hostname or "127.0.0.1", parts.port or 5432):
        _service_missing(f"PostgreSQL at {parts.hostname}:{parts.port or 5432}")
    return PG_URL


def mqtt_address() -> tuple[str, int]:
    """(host, port) of the local MQTT broker, or a skip (a failure under CITYTWIN_REQUIRE_SERVICES)."""
    if not _port_open(MQTT_HOST, MQTT_PORT):
        _service_missing(f"MQTT broker at {MQTT_HOST}:{MQTT_PORT}")
    return MQTT_HOST, MQTT_PORT


@pytest.fixture
def pg_schema_url():
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards (safe under xdist)."""
    import uuid

    import psycopg

    base = postgres_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def wait_for(predicate, timeout_s: float = 10.0):
    """Poll until `predicate()` gives something truthy (and return it); a bounded wait for async effects."""
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


# -- the IOC app in-process, on a clock the test sets -----------------------------------------------------
IOC_T0 = datetime(2025, 6, 1, 1, 0, tzinfo=UTC)  # 08:00 in Đà Nẵng


@pytest.fixture
def ioc_app(tmp_path):
    """The IOC app on a fresh SQLite file, its clock pinned to `app.state.clock` (starts at IOC_T0)."""
    from citytwin.ioc.server import Settings, create_app, deps

    app = create_app(Settings(db_url=f"sqlite:///{tmp_path}/ioc.db", mqtt_url=None, notify=False))
    app.dependency_overrides[deps.now] = lambda: app.state.clock
    app.state.clock = IOC_T0
    return app


@pytest.fixture
def ioc_client(ioc_app):
    from fastapi.testclient import TestClient

    with TestClient(ioc_app) as client:
        yield client
