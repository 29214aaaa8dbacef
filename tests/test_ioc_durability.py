"""Every write the server answered 2xx is in the database, even when the server is killed with SIGKILL
mid-load; device upserts are idempotent. Run against SQLite (WAL) and the real PostgreSQL."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from citytwin.ioc.server.process import ServerProcess, provision_key

LOAD_S = 1.5     # load before the kill; bounded
CLIENTS = 6


def _post_until_killed(url: str, key: str, acked: list[str], stop: threading.Event, n: int) -> None:
    with httpx.Client(base_url=url, timeout=5.0) as client:
        i = 0
        while not stop.is_set() and i < 5000:
            i += 1
            form = {"api_key": key, "service_code": "waste", "lat": "16.06", "long": "108.22",
                    "description": f"client {n} report {i}"}
            try:
                response = client.post("/requests.json", data=form)
            except httpx.HTTPError:
                continue  # the server is gone: nothing acknowledged, nothing to check
            if response.status_code == 201:
                acked.append(response.json()[0]["service_request_id"])


def _kill_under_load(server: ServerProcess, key: str) -> list[str]:
    acked: list[str] = []
    stop = threading.Event()
    threads = [threading.Thread(target=_post_until_killed, args=(server.url, key, acked, stop, n))
               for n in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(LOAD_S)
    server.kill()
    time.sleep(0.3)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    return acked


def _check_durable(db_url: str, tmp_path) -> None:
    key = provision_key(db_url, "citizen", rate_per_s=1e6)
    operator = provision_key(db_url, "operator", rate_per_s=1e6)
    first = ServerProcess(db_url, tmp_path / "server1.log").start()
    acked = _kill_under_load(first, key)
    assert len(acked) > 20, "the load did not get going before the kill"
    with ServerProcess(db_url, tmp_path / "server2.log") as second:
        with httpx.Client(base_url=second.url, timeout=10.0, headers={"X-API-Key": operator}) as client:
            missing = [rid for rid in acked if client.get(f"/requests/{rid}.json").status_code != 200]
            assert not missing, f"{len(missing)} of {len(acked)} acknowledged requests lost: {missing[:10]}"
            # the server takes new writes after the crash
            form = {"api_key": key, "service_code": "waste", "lat": "16.06", "long": "108.22",
                    "description": "after restart"}
            assert client.post("/requests.json", data=form).status_code == 201


@pytest.mark.slow
def test_acknowledged_requests_survive_sigkill_sqlite(tmp_path):
    _check_durable(f"sqlite:///{tmp_path}/ioc.db", tmp_path)


@pytest.mark.slow
def test_acknowledged_requests_survive_sigkill_postgresql(tmp_path, pg_schema_url):
    _check_durable(pg_schema_url, tmp_path)


def test_device_upserts_are_idempotent(tmp_path):
    db_url = f"sqlite:///{tmp_path}/ioc.db"
    device = provision_key(db_url, "device", device_id="wl-001", entity_type="FloodMonitoring", rate_per_s=1e6)
    operator = provision_key(db_url, "operator", rate_per_s=1e6)
    with ServerProcess(db_url, tmp_path / "server.log") as server:
        entity = {"id": "urn:ngsi-ld:FloodMonitoring:wl-001", "type": "FloodMonitoring",
                  "waterLevel": {"type": "Property", "value": 0.12, "observedAt": "2026-11-22T03:00:00Z"}}
        headers = {"X-API-Key": device, "Content-Type": "application/json"}
        with httpx.Client(base_url=server.url, timeout=10.0) as client:
            codes = [client.post("/ngsi-ld/v1/entityOperations/upsert?options=update", json=[entity],
                                 headers=headers).status_code for _ in range(3)]
            assert codes[0] == 201 and codes[1:] == [204, 204]
            history = client.get("/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:FloodMonitoring:wl-001",
                                 headers={"X-API-Key": operator})
            assert history.status_code == 200
            values = history.json()["waterLevel"]
            assert len(values) == 1
