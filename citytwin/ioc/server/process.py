"""The reference IOC as a child process on loopback: for the tests that need the live server (durability,
OpenAPI conformance, the browser) and for the benchmarks. Start and stop wait a bounded time."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

CITYTWIN = [sys.executable, "-m", "citytwin.twin.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def provision_key(db_url: str, role: str, **options) -> str:
    """A fresh API key written straight into the server's database (before or while it runs)."""
    from citytwin.ioc.core import IOC, Role
    from citytwin.ioc.storage import open_store

    store = open_store(db_url)
    try:
        key, _ = IOC(store).create_key(Role(role), datetime.now(UTC), **options)
    finally:
        store.close()
    return key


@dataclass
class ServerProcess:
    db_url: str
    log_path: Path
    extra_args: tuple[str, ...] = ()
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 30.0) -> ServerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [*CITYTWIN, "ioc", "serve", "--db", self.db_url, "--port", str(self.port), *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not answer /health within {timeout_s} s: {self.log_path.read_text()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs, no buffer is flushed."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
