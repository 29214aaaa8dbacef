"""The live port against the reference IOC's real endpoints, without a network: a sender that carries each
request through the app's TestClient at once. Citizens' Open311 calls and operators' and crews' operator-API
calls give the values the in-process port gives; failures become None; answers reach the agents only in the
simulation's thread (the pump); the ledger gets the same rows as a simulated run."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest
import simpy
from fastapi.testclient import TestClient

from citytwin.ioc.core.model import Role
from citytwin.ioc.server import Settings, create_app
from citytwin.twin.ledger import Ledger, events, read_ledger
from citytwin.twin.ports import Report, answer
from citytwin.twin.ports.live import LivePort, WallClock


class AppSender:
    """The Sender's contract (`check`, `on_done(result, error)`), each request done at once through `client`."""

    def __init__(self, client: TestClient, *, fail: set[str] = frozenset()):
        self.client, self.fail = client, set(fail)
        self.calls: list[tuple[float, str, str, str, bytes | None, dict]] = []

    def http(self, intended, key, method, url, *, content=None, headers=None, check=None, on_done=None):
        self.calls.append((intended, key, method, url, content, dict(headers or {})))
        if key in self.fail:
            on_done(None, "connection")
            return
        response = self.client.request(method, url, content=content, headers=headers)
        if response.status_code >= 400:
            on_done(None, "http_4xx" if response.status_code < 500 else "http_5xx")
            return
        try:
            on_done(check(response) if check else response, None)
        except (ValueError, LookupError, TypeError):
            on_done(None, "invalid_body")


@pytest.fixture
def ioc_app(tmp_path):
    app = create_app(Settings(db_url=f"sqlite:///{tmp_path}/ioc.db", tick_s=3600))
    with TestClient(app, base_url="http://ioc.test") as client:
        now = datetime.now(UTC)
        citizen, _ = app.state.ioc.create_key(Role.CITIZEN, now, rate_per_s=1e6)
        operator, _ = app.state.ioc.create_key(Role.OPERATOR, now, rate_per_s=1e6)
        yield client, citizen, operator


def new_port(tmp_path, client, citizen, operator, *, fail=frozenset(), seen=None):
    env = simpy.Environment()
    sender = AppSender(client, fail=fail)
    ledger = Ledger(tmp_path / "ledger.parquet")
    clock = WallClock(to_wall_s=lambda t: t / 60.0, to_virtual_s=lambda w: w * 60.0)
    port = LivePort(env, sender, ledger, clock, target="http://ioc.test", citizen_key=citizen, operator_key=operator,
                    deadlines_s={"waste": 4 * 3600.0},
                    on_closed_seen=(lambda posted, at: seen.append(posted)) if seen is not None else None,
                    pump_every_s=1.0)
    port.begin()
    return env, sender, ledger, port


def report(key: str, category: str = "waste", channel: str = "app") -> Report:
    return Report(key=key, category=category, lon=108.2208, lat=16.0678, description="Rác tồn đọng ở hẻm",
                  channel=channel, media_url="https://media.example/r.jpg", problem="p1", resident=42)


def run(env, generator):
    """Run one agent process to its end; its return value."""
    process = env.process(generator)
    env.run(until=process)
    return process.value


def test_a_report_goes_out_as_open311_and_its_reporter_follows_it_to_closed(tmp_path, ioc_app):
    client, citizen, operator = ioc_app
    seen: list[float] = []
    env, sender, ledger, port = new_port(tmp_path, client, citizen, operator, seen=seen)

    def citizen_and_crew():
        receipt = yield from answer(port.submit(report("r7"), env.now))
        first = yield from answer(port.by_token(receipt.token, env.now))
        yield env.timeout(100)
        view = yield from answer(port.view(receipt.request_id, env.now))
        for step in (port.acknowledge(receipt.request_id, "op", env.now, "Đã tiếp nhận"),
                     port.assign(receipt.request_id, "op", "waste-1", env.now),
                     port.start(receipt.request_id, "waste-1", env.now),
                     port.resolve(receipt.request_id, "waste-1", env.now),
                     port.close(receipt.request_id, "waste-1", env.now, "Đã xử lý xong")):
            yield from answer(step)
        last = yield from answer(port.by_token(receipt.token, env.now))
        return receipt, first, view, last

    receipt, first, view, last = run(env, citizen_and_crew())
    assert receipt.request_id > 0 and receipt.token and receipt.deadline_t == pytest.approx(4 * 3600.0)
    assert (first.request_id, first.status, first.closed) == (receipt.request_id, "open", False)
    assert (view.status, view.category, view.duplicate_of) == ("received", "waste", None)
    assert (last.status, last.note, last.closed) == ("closed", "Đã xử lý xong", True)
    assert len(seen) == 1 and seen[0] == sender.calls[0][0]  # from the POST's intended time, once

    # What went over the wire: the Open311 POST as a form with the idempotency key, the token looked up once.
    _, key, method, url, body, headers = sender.calls[0]
    assert (key, method, url) == ("open311.post", "POST", "http://ioc.test/requests.json")
    assert headers["Idempotency-Key"] == "r7" and headers["X-API-Key"] == citizen
    assert b"service_code=waste" in body and b"account_id=resident-42" in body
    assert [c[1] for c in sender.calls].count("open311.token") == 1
    assert [c[1] for c in sender.calls if c[1].startswith("operator.")] == [
        "operator.get", "operator.acknowledge", "operator.assign", "operator.start", "operator.resolve",
        "operator.close"]
    # Intended times follow the clock at 60x: each answer waits for the next pump (1 virtual s), so the token
    # lookup went at t = 1, the request's GET at 2, and the operator's view at 3 + 100.
    assert [round((c[0] - sender.calls[0][0]) * 60.0, 6) for c in sender.calls[:4]] == [0.0, 1.0, 2.0, 103.0]

    ledger.close()
    table = read_ledger(tmp_path / "ledger.parquet")
    submitted = events(table, "report.submitted")
    assert list(submitted.subject) == ["r7"] and int(submitted.request_id[0]) == receipt.request_id
    status = events(table, "request.status")
    assert list(status.status) == ["acknowledged", "assigned", "in_progress", "resolved", "closed"]
    assert list(status.published) == [True, False, False, False, True]


def test_a_duplicate_is_followed_through_its_original(tmp_path, ioc_app):
    client, citizen, operator = ioc_app
    env, sender, ledger, port = new_port(tmp_path, client, citizen, operator)

    def two_reports():
        first = yield from answer(port.submit(report("r1"), env.now))
        second = yield from answer(port.submit(report("r2"), env.now))
        shown = yield from answer(port.view(second.request_id, env.now))
        yield from answer(port.mark_duplicate(second.request_id, first.request_id, "op", env.now))
        mine = yield from answer(port.by_token(second.token, env.now))
        original = yield from answer(port.public(mine.duplicate_of, env.now))
        return first, second, shown, mine, original

    first, second, shown, mine, original = run(env, two_reports())
    assert shown.duplicate_of in (None, first.request_id)  # the IOC may have linked it on arrival already
    assert mine.closed and mine.duplicate_of == first.request_id
    assert original.request_id == first.request_id and not original.closed


def test_failures_answer_none_and_are_counted(tmp_path, ioc_app):
    client, citizen, operator = ioc_app
    env, sender, ledger, port = new_port(tmp_path, client, citizen, operator, fail={"open311.post"})

    def tries():
        receipt = yield from answer(port.submit(report("r1"), env.now))
        missing = yield from answer(port.view(999_999, env.now))  # 404
        unknown = yield from answer(port.by_token("no-such-token", env.now))
        return receipt, missing, unknown

    assert run(env, tries()) == (None, None, None)
    assert port.failed == 3
    ledger.close()
    assert events(read_ledger(tmp_path / "ledger.parquet"), "report.submitted").empty


def test_answers_reach_the_agents_only_through_the_pump(tmp_path, ioc_app):
    """The sender answers on its own thread in a drive: nothing is handed to a process until the pump runs in
    the simulation's thread, at most `pump_every_s` later."""
    client, citizen, operator = ioc_app
    env, sender, ledger, port = new_port(tmp_path, client, citizen, operator)
    got = []

    def reporter():
        got.append((yield port.submit(report("r1"), env.now)))
        got.append(env.now)

    env.process(reporter())
    env.run(until=0.5)
    assert got == [] and len(sender.calls) == 1  # answered, not yet delivered
    env.run(until=1.5)
    assert got[0].request_id > 0 and got[1] == 1.0


def test_the_open311_answer_must_be_what_the_spec_says(tmp_path, ioc_app):
    """A 2xx answer that is not the spec's list of one request is an invalid body, not a crash."""
    client, citizen, operator = ioc_app
    env, sender, ledger, port = new_port(tmp_path, client, citizen, operator)
    make = None

    def capture(intended, key, method, url, *, content=None, headers=None, check=None, on_done=None):
        nonlocal make
        make = check
    sender.http = capture
    port.submit(report("r1"), 0.0)
    for body in ([], [{}], {"service_request_id": "1"}, [{"service_request_id": "x", "token": "t"}]):
        response = httpx.Response(201, content=json.dumps(body).encode(),
                                  request=httpx.Request("POST", "http://ioc.test/requests.json"))
        with pytest.raises((ValueError, LookupError, TypeError)):
            make(response)


def test_the_operators_queue_shows_what_waits_for_intake_with_its_position(tmp_path, ioc_app):
    client, citizen, operator = ioc_app
    env, sender, ledger, port = new_port(tmp_path, client, citizen, operator)

    def file_then_look():
        first = yield from answer(port.submit(report("r1"), env.now))
        second = yield from answer(port.submit(report("r2", category="road-damage"), env.now))
        yield from answer(port.acknowledge(first.request_id, "op", env.now))
        shown = yield from answer(port.new_requests(env.now))
        return second, shown

    second, shown = run(env, file_then_look())
    assert [(v.request_id, v.status, v.category) for v in shown] == [(second.request_id, "received", "road-damage")]
    assert (shown[0].lon, shown[0].lat) == pytest.approx((108.2208, 16.0678))
    assert port.shows_in_queue(second.request_id) and port.adopts_unknown
