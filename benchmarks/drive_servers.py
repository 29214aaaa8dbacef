"""Local endpoints and the Locust runner shared by the live-drive benchmarks (`drive_capacity.py`,
`drive_honesty.py`).

Two raw ASGI apps under uvicorn (httptools, uvloop, one worker, no access log), each in its own process
pinned to one core so that the load generator on the other core measures its own cost, not the server's:
- `trivial`: every request answers 200 with 2 bytes;
- `stall`: the same, except that it stops answering during the last `stall_s` of every `every_s` seconds
  counted from `epoch` (a `time.monotonic()` value: CLOCK_MONOTONIC is one clock for every process on the
  machine, so the benchmark knows the stall timeline exactly); requests arriving during a stall are held
  and answered when it ends.

Run as a script, this file is the server:

    .venv/bin/python benchmarks/drive_servers.py --kind stall --port 8099 --core 0 --epoch 12345.6
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"
BODY = b"ok"
START_WAIT_S = 15.0  # the most a server may take to accept connections
LOCUST = Path(sys.executable).with_name("locust")


# -- the apps ----------------------------------------------------------------------------------------------------
_HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]


async def _answer(send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": BODY})


async def trivial_app(scope, receive, send) -> None:
    await _answer(send)


def stall_end(t: float, epoch: float, every_s: float, stall_s: float) -> float | None:
    """When the stall covering monotonic time `t` ends, or None when `t` is outside every stall."""
    if t < epoch:
        return None
    period = math.floor((t - epoch) / every_s)
    end = epoch + (period + 1) * every_s
    return end if t >= end - stall_s else None


def stall_app(epoch: float, every_s: float, stall_s: float):
    async def app(scope, receive, send) -> None:
        end = stall_end(time.monotonic(), epoch, every_s, stall_s)
        if end is not None:
            await asyncio.sleep(max(0.0, end - time.monotonic()))
        await _answer(send)

    return app


def serve(kind: str, port: int, core: int | None, epoch: float, every_s: float, stall_s: float) -> None:
    if core is not None:  # before uvicorn starts any thread, so every thread inherits it
        os.sched_setaffinity(0, {core})
    import uvicorn

    app = trivial_app if kind == "trivial" else stall_app(epoch, every_s, stall_s)
    uvicorn.run(app, host=HOST, port=port, loop="uvloop", http="httptools", lifespan="off", workers=1,
                access_log=False, log_level="warning", backlog=4096, timeout_keep_alive=30)


# -- managing them from a benchmark ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def pin(core: int | None) -> None:
    """Pin this process (and the threads it starts from now on) to `core`, when the machine has it."""
    if core is not None and core < (os.cpu_count() or 1):
        os.sched_setaffinity(0, {core})


def cores() -> tuple[int | None, int | None]:
    """(server core, load generator core): 0 and 1 on a machine with two or more cores, else unpinned."""
    return (0, 1) if (os.cpu_count() or 1) >= 2 else (None, None)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    """One server process on a free loopback port: `url`, `pid`, `cpu_s()`; `stop()` is bounded."""

    def __init__(self, kind: str, *, core: int | None, epoch: float = 0.0, every_s: float = 10.0,
                 stall_s: float = 1.0):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        args = [sys.executable, __file__, "--kind", kind, "--port", str(self.port), "--epoch", repr(epoch),
                "--every", str(every_s), "--stall", str(stall_s)]
        if core is not None:
            args += ["--core", str(core)]
        self.process = subprocess.Popen(args)
        self.pid = self.process.pid
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_WAIT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the benchmark server exited with status {self.process.returncode}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the benchmark server did not listen on {self.url} within {START_WAIT_S:.0f} s")

    def cpu_s(self) -> float:
        return cpu_seconds(self.pid)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)


@contextmanager
def running(kind: str, **kwargs):
    server = Server(kind, **kwargs)
    try:
        yield server
    finally:
        server.stop()


# -- Locust, headless, one process -------------------------------------------------------------------------------
LOCUSTFILE = """\
from locust import FastHttpUser, constant, constant_throughput, task


class Bench(FastHttpUser):
    wait_time = {wait}

    @task
    def get(self):
        self.client.get("/")
"""

# Locust's CSV columns for the percentiles, as fractions.
LOCUST_PERCENTILES = {"50%": 0.5, "90%": 0.9, "95%": 0.95, "99%": 0.99, "99.9%": 0.999, "100%": 1.0}


def run_locust(host: str, *, users: int, seconds: int, per_user_rps: float | None = None,
               core: int | None = None) -> dict:
    """Locust's FastHttpUser against `host` (GET /), headless, one process pinned to `core`: all users
    spawned in the first second, each either without a wait (closed loop at full speed) or paced at
    `per_user_rps` (`constant_throughput`). Returns its final Aggregated row (rps, counts, percentiles in
    seconds), the rate over the steady part of its history, and its CPU time."""
    wait = "constant(0)" if per_user_rps is None else f"constant_throughput({per_user_rps!r})"
    with tempfile.TemporaryDirectory() as tmp:
        locustfile = Path(tmp) / "locustfile.py"
        locustfile.write_text(LOCUSTFILE.format(wait=wait))
        prefix = Path(tmp) / "run"
        args = [str(LOCUST), "-f", str(locustfile), "--headless", "--only-summary", "--host", host,
                "-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--csv", str(prefix),
                "--stop-timeout", "5", "--loglevel", "WARNING"]
        log = Path(tmp) / "locust.log"  # a file, not a pipe: a full pipe would stall Locust
        start = time.monotonic()
        with log.open("wb") as out:
            process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=out,
                                       preexec_fn=(lambda: pin(core)) if core is not None else None, cwd=tmp)
            status, usage = _wait_bounded(process, seconds + 60)
        wall = time.monotonic() - start
        stderr = log.read_text(errors="replace")
        if status != 0:
            raise RuntimeError(f"locust exited with status {status}: {stderr[-2000:]}")
        row = _aggregated(Path(f"{prefix}_stats.csv"))
        history = _history_rate(Path(f"{prefix}_stats_history.csv"))
    count = int(row["Request Count"])
    return {"users": users, "per_user_rps": per_user_rps, "seconds": seconds, "requests": count,
            "failures": int(row["Failure Count"]), "rps": round(float(row["Requests/s"]), 1),
            "steady_rps": history,
            "percentiles_s": {name: _ms(row[name]) for name in LOCUST_PERCENTILES},
            "avg_s": _ms(row["Average Response Time"]),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2), "wall_s": round(wall, 2)}


def _wait_bounded(process: subprocess.Popen, limit_s: float):
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage
        time.sleep(0.05)
    process.kill()
    _, status, usage = os.wait4(process.pid, 0)
    raise RuntimeError(f"locust did not finish within {limit_s:.0f} s (killed)")


def _aggregated(path: Path) -> dict:
    with path.open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    if not rows:
        raise RuntimeError(f"no Aggregated row in {path}")
    return rows[-1]


def _history_rate(path: Path, skip_s: int = 2) -> float | None:
    """Requests/s between the first history row `skip_s` after the start and the last row (Locust writes a
    row a second, with whole-second timestamps): the rate once every user runs."""
    with path.open(newline="") as handle:
        rows = [(int(row["Timestamp"]), int(row["Total Request Count"])) for row in csv.DictReader(handle)
                if row["Name"] == "Aggregated"]
    if not rows:
        return None
    first = next(((t, n) for t, n in rows if t >= rows[0][0] + skip_s), None)
    last = rows[-1]
    if first is None or last[0] <= first[0]:
        return None
    return round((last[1] - first[1]) / (last[0] - first[0]), 1)


def _ms(value: str) -> float | None:
    return None if value in ("", "N/A") else float(value) / 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=("trivial", "stall"), default="trivial")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--core", type=int, default=None)
    parser.add_argument("--epoch", type=float, default=0.0, help="monotonic time the stall periods count from")
    parser.add_argument("--every", type=float, default=10.0, help="seconds from one stall to the next")
    parser.add_argument("--stall", type=float, default=1.0, help="seconds each stall lasts")
    args = parser.parse_args()
    serve(args.kind, args.port, args.core, args.epoch, args.every, args.stall)


if __name__ == "__main__":
    main()
