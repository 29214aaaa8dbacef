"""Reference IOC at saturation: one server process, SQLite and PostgreSQL, four workloads.

- `open311_post`: Open311 `POST /requests` (form-encoded, as citizen apps send it);
- `ngsild_create`: NGSI-LD `POST /entities`, one new entity per call (Orion's "create" figure);
- `ngsild_upsert_batch`: NGSI-LD `POST /entityOperations/upsert`, 50 new TrafficFlowObserved per call;
- `ngsild_get`: NGSI-LD `GET /entities/{id}` of entities created before (Orion's "query" figure).

The server runs as `citytwin ioc serve` (one uvicorn process, pinned to core 0 when there are two); wrk
(one thread, CONCURRENCY connections, closed loop: at saturation that is what throughput means) runs
pinned to the other core. The server's own CPU use is recorded, so a run where the client, not the
server, was the limit shows it. Needs wrk (`apt-get install wrk`).

    .venv/bin/python benchmarks/ioc_throughput.py [--seconds 8] [--backends sqlite postgresql]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from _common import write
from citytwin.ioc.server.process import ServerProcess, provision_key

PG_URL = os.environ.get("CITYTWIN_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
CONCURRENCY = 32
SEEDED = 10_000
BATCH = 50
ORION = {"create_per_s": 700, "query_per_s": 2200,
         "source": "telefonicaid/fiware-orion indexes_analysis.md, 2 vCPU + MongoDB, 100k-1M entities"}


# wrk (C, closed loop) drives the load: a Python client on the other core could not saturate the server.
# Each workload is a Lua script building its own request bodies; done() prints the figures as JSON.
LUA_COMMON = """
local n = 0
local tag = "x"
init = function(args) tag = args[1] end  -- a fresh tag per run, so new entities are new
local function flow(id, i)
  return string.format('{"id":"%s","type":"TrafficFlowObserved","intensity":{"type":"Property","value":%d,'
    .. '"observedAt":"2026-11-22T01:00:00Z"},"averageVehicleSpeed":{"type":"Property","value":23.5},'
    .. '"location":{"type":"GeoProperty","value":{"type":"Point","coordinates":[%.5f,16.06]}}}',
    id, 120 + i % 50, 108.2 + (i % 100) * 1e-4)
end
local function with_type(content_type)  -- wrk.format drops -H headers when given its own table
  local h = {}
  for k, v in pairs(wrk.headers) do h[k] = v end
  h["Content-Type"] = content_type
  return h
end
done = function(summary, latency, requests)
  local codes = summary.errors.status
  io.write(string.format('{"requests":%d,"duration_us":%d,"non_2xx":%d,"socket_errors":%d,'
    .. '"p50_us":%d,"p99_us":%d}\\n', summary.requests, summary.duration, codes,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""
LUA = {
    "open311_post": """
local services = {"road-damage", "waste", "streetlight", "flooding", "sidewalk-encroachment"}
request = function()
  n = n + 1
  -- spread over ~3 x 2 km of Hai Chau: a district's day of reports, not one pile-up
  local body = string.format("service_code=%s&lat=%.6f&long=%.6f&description=bench+%s+%d",
    services[n % 5 + 1], 16.056 + (n * 7919 % 1000) * 1.8e-5, 108.202 + (n * 104729 % 1000) * 2.8e-5, tag, n)
  return wrk.format("POST", "/requests.json", with_type("application/x-www-form-urlencoded"), body)
end""",
    "ngsild_create": """
request = function()
  n = n + 1
  local body = flow(string.format("urn:ngsi-ld:TrafficFlowObserved:%s-%d", tag, n), n)
  return wrk.format("POST", "/ngsi-ld/v1/entities", with_type("application/json"), body)
end""",
    "ngsild_upsert_batch": """
request = function()
  n = n + 1
  local items = {}
  for i = 1, %(batch)d do
    items[i] = flow(string.format("urn:ngsi-ld:TrafficFlowObserved:%%s-%%d-%%d", tag, n, i), n + i)
  end
  return wrk.format("POST", "/ngsi-ld/v1/entityOperations/upsert", with_type("application/json"),
    "[" .. table.concat(items, ",") .. "]")
end""",
    "ngsild_get": """
request = function()
  return wrk.format("GET", string.format("/ngsi-ld/v1/entities/urn:ngsi-ld:TrafficFlowObserved:seed-%%d",
    math.random(0, %(seeded)d - 1)))
end""",
}


def _flow(entity_id: str, n: int) -> dict:
    return {"id": entity_id, "type": "TrafficFlowObserved",
            "intensity": {"type": "Property", "value": 120 + n % 50, "observedAt": "2026-11-22T01:00:00Z"},
            "averageVehicleSpeed": {"type": "Property", "value": 23.5},
            "location": {"type": "GeoProperty", "value": {"type": "Point",
                                                          "coordinates": [108.2 + (n % 100) * 1e-4, 16.06]}}}


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _seed_entities(url: str, key: str, count: int) -> None:
    ids = [f"urn:ngsi-ld:TrafficFlowObserved:seed-{i}" for i in range(count)]
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60.0) as client:
        for start in range(0, count, 500):
            batch = [_flow(i, n) for n, i in enumerate(ids[start:start + 500], start)]
            client.post("/ngsi-ld/v1/entityOperations/upsert", json=batch).raise_for_status()


def run_workload(server: ServerProcess, key: str, workload: str, seconds: float, client_core: int | None,
                 tmp: Path) -> dict:
    script = tmp / f"{workload}.lua"
    body = LUA[workload] % {"batch": BATCH, "seeded": SEEDED} if "%(" in LUA[workload] else LUA[workload]
    script.write_text(LUA_COMMON + body)
    pin = ["taskset", "-c", str(client_core)] if client_core is not None else []

    def wrk(duration_s: float) -> str:
        command = [*pin, "wrk", "-t1", f"-c{CONCURRENCY}", f"-d{duration_s:g}s", "--timeout", "30s",
                   "-H", f"X-API-Key: {key}", "-s", str(script), server.url, "--", uuid.uuid4().hex[:10]]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    wrk(1)  # warm-up
    cpu_before, wall_before = _cpu_seconds(server.process.pid), time.perf_counter()
    out = wrk(seconds)
    server_cpu = (_cpu_seconds(server.process.pid) - cpu_before) / (time.perf_counter() - wall_before)
    raw = json.loads(out.strip().splitlines()[-1])
    ok = raw["requests"] - raw["non_2xx"]
    rate = ok / (raw["duration_us"] / 1e6)
    per_call = BATCH if workload == "ngsild_upsert_batch" else 1
    figures = {"requests_per_s": round(rate, 1), "entities_per_s": round(rate * per_call, 1),
               "p50_ms": round(raw["p50_us"] / 1000, 2), "p99_ms": round(raw["p99_us"] / 1000, 2),
               "requests": raw["requests"], "non_2xx": raw["non_2xx"], "socket_errors": raw["socket_errors"],
               "server_cpu_cores": round(server_cpu, 2)}
    print(f"  {workload:22s} {figures['requests_per_s']:8.1f} req/s  {figures['entities_per_s']:8.1f} "
          f"entities/s  p50 {figures['p50_ms']:6.2f} ms  p99 {figures['p99_ms']:7.2f} ms  "
          f"server CPU {server_cpu:.2f} cores  non-2xx {raw['non_2xx']}")
    return figures


def _database(backend: str, tmp: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{tmp}/bench.db"
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{PG_URL}?options=-csearch_path%3D{schema}"


def _drop(db_url: str) -> None:
    if "search_path" in db_url:
        import psycopg

        schema = db_url.rsplit("%3D", 1)[1]
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def bench_backend(backend: str, seconds: float) -> dict:
    two_cores = (os.cpu_count() or 1) >= 2
    with tempfile.TemporaryDirectory() as tmp:
        db_url = _database(backend, Path(tmp))
        try:
            key = provision_key(db_url, "admin", rate_per_s=1e9)
            server = ServerProcess(db_url, Path(tmp) / "server.log").start()
            try:
                if two_cores:
                    os.sched_setaffinity(server.process.pid, {0})
                print(f"{backend}:")
                _seed_entities(server.url, key, SEEDED)
                return {w: run_workload(server, key, w, seconds, 1 if two_cores else None, Path(tmp))
                        for w in LUA}
            finally:
                server.stop()
        finally:
            _drop(db_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per workload")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"],
                        choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("this benchmark drives the load with wrk: apt-get install wrk")
    results = {backend: bench_backend(backend, args.seconds) for backend in args.backends}
    write("ioc_throughput", {"seconds": args.seconds, "connections": CONCURRENCY, "batch": BATCH,
                             "seeded_entities": SEEDED, "load": "wrk -t1 (closed loop), pinned to core 1",
                             "orion_reference": ORION, "results": results})


if __name__ == "__main__":
    main()
