"""Reference IOC at saturation: one server process, SQLite and PostgreSQL, four workloads.

- `open311_post`: Open311 `POST /requests` (form-encoded, as citizen apps send it);
- `ngsild_create`: NGSI-LD `POST /entities`, one new entity per call (Orion's "create" figure);
- `ngsild_upsert_batch`: NGSI-LD `POST /entityOperations/upsert`, 50 new TrafficFlowObserved per call;
- `ngsild_get`: NGSI-LD `GET /entities/{id}` of entities created before (Orion's "query" figure).

The server runs as `citytwin ioc serve` (one uvicorn process, pinned to core 0 when there are two); the
load comes from client processes pinned to the other core, each an asyncio loop keeping CONCURRENCY
requests in flight (closed loop: at saturation that is what throughput means). The server's own CPU use
is recorded, so a run where the client, not the server, was the limit shows it.

    .venv/bin/python benchmarks/ioc_throughput.py [--seconds 8] [--backends sqlite postgresql]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import multiprocessing as mp
import os
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

from _common import write
from citytwin.ioc.server.process import ServerProcess, provision_key

PG_URL = os.environ.get("CITYTWIN_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
CONCURRENCY = 32
BATCH = 50
ORION = {"create_per_s": 700, "query_per_s": 2200,
         "source": "telefonicaid/fiware-orion indexes_analysis.md, 2 vCPU + MongoDB, 100k-1M entities"}


def _flow(entity_id: str, n: int) -> dict:
    return {"id": entity_id, "type": "TrafficFlowObserved",
            "intensity": {"type": "Property", "value": 120 + n % 50, "observedAt": "2026-11-22T01:00:00Z"},
            "averageVehicleSpeed": {"type": "Property", "value": 23.5},
            "location": {"type": "GeoProperty", "value": {"type": "Point",
                                                          "coordinates": [108.2 + (n % 100) * 1e-4, 16.06]}}}


def _request(workload: str, tag: str, n: int, ids: list[str]):
    if workload == "open311_post":
        return "POST", "/requests.json", {"data": {
            "service_code": "waste", "lat": "16.061", "long": "108.221", "description": f"bench {tag} {n}"}}
    if workload == "ngsild_create":
        return "POST", "/ngsi-ld/v1/entities", {"json": _flow(f"urn:ngsi-ld:TrafficFlowObserved:{tag}-{n}", n)}
    if workload == "ngsild_upsert_batch":
        return "POST", "/ngsi-ld/v1/entityOperations/upsert", {"json": [
            _flow(f"urn:ngsi-ld:TrafficFlowObserved:{tag}-{n}-{i}", n + i) for i in range(BATCH)]}
    return "GET", f"/ngsi-ld/v1/entities/{ids[n % len(ids)]}", {}


async def _drive(url: str, key: str, workload: str, seconds: float, ids: list[str]) -> dict:
    tag = uuid.uuid4().hex[:8]
    counter = itertools.count()
    latencies: list[float] = []
    errors: dict[int, int] = {}
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": key}, limits=limits, timeout=30.0) as client:
        warm_end = time.perf_counter() + 1.0
        end = warm_end + seconds

        async def worker() -> None:
            while (now := time.perf_counter()) < end:
                method, path, body = _request(workload, tag, next(counter), ids)
                response = await client.request(method, path, **body)
                done = time.perf_counter()
                if response.status_code >= 300:
                    errors[response.status_code] = errors.get(response.status_code, 0) + 1
                elif now >= warm_end:
                    latencies.append(done - now)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return {"latencies": latencies, "errors": errors}


def _client(args: tuple) -> dict:
    url, key, workload, seconds, ids, core = args
    if core is not None:
        os.sched_setaffinity(0, {core})
    return asyncio.run(_drive(url, key, workload, seconds, ids))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _seed_entities(url: str, key: str, count: int) -> list[str]:
    ids = [f"urn:ngsi-ld:TrafficFlowObserved:seed-{i}" for i in range(count)]
    with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=60.0) as client:
        for start in range(0, count, 500):
            batch = [_flow(i, n) for n, i in enumerate(ids[start:start + 500], start)]
            client.post("/ngsi-ld/v1/entityOperations/upsert", json=batch).raise_for_status()
    return ids


def run_workload(server: ServerProcess, key: str, workload: str, seconds: float, ids: list[str],
                 clients: int, client_core: int | None) -> dict:
    cpu_before, wall_before = _cpu_seconds(server.process.pid), time.perf_counter()
    with mp.get_context("spawn").Pool(clients) as pool:
        parts = pool.map(_client, [(server.url, key, workload, seconds, ids, client_core)] * clients)
    server_cpu = (_cpu_seconds(server.process.pid) - cpu_before) / (time.perf_counter() - wall_before)
    latencies = np.array([x for p in parts for x in p["latencies"]]) * 1000
    errors: dict[str, int] = {}
    for p in parts:
        for code, n in p["errors"].items():
            errors[str(code)] = errors.get(str(code), 0) + n
    per_call = BATCH if workload == "ngsild_upsert_batch" else 1
    rate = len(latencies) / seconds
    figures = {"requests_per_s": round(rate, 1), "entities_per_s": round(rate * per_call, 1),
               "p50_ms": round(float(np.percentile(latencies, 50)), 2),
               "p99_ms": round(float(np.percentile(latencies, 99)), 2),
               "requests": int(len(latencies)), "errors": errors, "server_cpu_cores": round(server_cpu, 2)}
    print(f"  {workload:22s} {figures['requests_per_s']:8.1f} req/s  {figures['entities_per_s']:8.1f} "
          f"entities/s  p50 {figures['p50_ms']:6.2f} ms  p99 {figures['p99_ms']:7.2f} ms  "
          f"server CPU {server_cpu:.2f} cores  errors {errors}")
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


def bench_backend(backend: str, seconds: float, clients: int) -> dict:
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
                ids = _seed_entities(server.url, key, 10_000)
                return {w: run_workload(server, key, w, seconds, ids, clients, 1 if two_cores else None)
                        for w in ("open311_post", "ngsild_create", "ngsild_upsert_batch", "ngsild_get")}
            finally:
                server.stop()
        finally:
            _drop(db_url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per workload")
    parser.add_argument("--clients", type=int, default=2, help="client processes")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"],
                        choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    results = {backend: bench_backend(backend, args.seconds, args.clients) for backend in args.backends}
    write("ioc_throughput", {"seconds": args.seconds, "concurrency_per_client": CONCURRENCY,
                             "clients": args.clients, "batch": BATCH, "orion_reference": ORION,
                             "results": results})


if __name__ == "__main__":
    main()
