"""The live port: the twin's people at a real IOC, over the network, in wall-clock time.

Citizens speak Open311 GeoReport v2 (`POST /requests.json` with an Idempotency-Key, `GET /tokens/{token}.json`,
`GET /requests/{id}.json`); operators and crews the operator API (`/operator/v1/requests/...`). Each call is
handed to the sender at its intended wall time (the virtual time it happens, through the drive's clock) and
returns at once a SimPy event; the IOC's answer completes it. Agents wait on it with `answer(...)`, so a
slow IOC delays the people who wait for it, never the schedule of everyone else (an open model).

The sender calls back on its own thread; the answers wait in a list that a SimPy process (`pump`) empties
every few wall milliseconds, in the simulation's thread: events and the ledger are not thread-safe. An
answer that failed (timeout, refused, 4xx/5xx, a body that is no answer) completes the event with None; the
sender has counted the error, and the agent does what a person would (tries again later, or gives up).

The ledger gets the rows the in-process port writes (`report.submitted`, `request.status`), at the virtual
time of the call, so the field-reporting KPIs read a live run as they read a simulated one.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlencode

import simpy

from ..ledger import Ledger
from .base import Receipt, Report, RequestView

OPERATOR_API = "/operator/v1/requests"
DUPLICATE_NOTE = re.compile(r"Duplicate of request (\d+)")  # the reference IOC's public note on a duplicate
PUMP_WALL_S = 0.02  # how often answers are handed to the waiting agents


class Sender(Protocol):
    def http(self, intended: float, key: str, method: str, url: str, *, content: bytes | None = None,
             headers: dict | None = None, check: Callable[[Any], Any] | None = None,
             on_done: Callable[[Any, str | None], None] | None = None) -> None: ...


@dataclass
class WallClock:
    """Virtual seconds ↔ wall time: `wall0` (time.monotonic()) and `utc0` are the same instant, virtual
    t = 0; `to_wall_s(t)` gives the wall seconds after it at which virtual t falls, `to_virtual_s` back."""

    to_wall_s: Callable[[float], float]
    to_virtual_s: Callable[[float], float]
    wall0: float = field(default_factory=time.monotonic)
    utc0: datetime = field(default_factory=lambda: datetime.now(UTC))

    def restart(self, offset_s: float = 0.0) -> None:
        """Wall second 0 of the mapping is `offset_s` from now."""
        self.wall0 = time.monotonic() + offset_s
        self.utc0 = datetime.now(UTC) + timedelta(seconds=offset_s)

    def intended(self, t: float) -> float:
        return self.wall0 + float(self.to_wall_s(t))

    def virtual_of(self, when: datetime) -> float:
        """The virtual time of an IOC timestamp (the IOC keeps real time)."""
        return float(self.to_virtual_s((when - self.utc0).total_seconds()))


class LivePort:
    """The field-reporting port over HTTP to a live IOC (see the module's docstring); every call answers with
    a SimPy event."""

    def __init__(self, env: simpy.Environment, sender: Sender, ledger: Ledger, clock: WallClock, *, target: str,
                 citizen_key: str, operator_key: str, deadlines_s: dict[str, float],
                 on_closed_seen: Callable[[float, float], None] | None = None, pump_every_s: float = 1.0):
        """`deadlines_s`: each category's SLA, which the receipt's deadline is counted from (Open311's POST
        answer has only the id and the token). `on_closed_seen(intended_post, seen_at)` is told, once per
        report, when its reporter first sees it closed: the end-to-end time of a report. `pump_every_s`:
        virtual seconds between deliveries of answers (PUMP_WALL_S × speedup)."""
        self.env, self.sender, self.ledger, self.clock = env, sender, ledger, clock
        self.base = target.rstrip("/")
        self._citizen = {"X-API-Key": citizen_key, "Accept": "application/json"}
        self._operator = {"X-API-Key": operator_key, "Accept": "application/json", "Content-Type": "application/json"}
        self._deadlines = dict(deadlines_s)
        self.on_closed_seen = on_closed_seen
        self.pump_every_s = pump_every_s
        self._lock = threading.Lock()
        self._answers: list[tuple[simpy.Event, Any, Callable[[Any], Any] | None]] = []
        self._ids: dict[str, int] = {}  # token → request id, as GET /tokens told the reporter
        self._posted: dict[str, float] = {}  # token → the POST's intended wall time, until seen closed
        self.submitted = 0  # reports sent
        self.failed = 0  # answers that were an error
        self._pumping = False

    def begin(self) -> None:
        """Start handing answers to the agents (once the environment runs)."""
        if not self._pumping:
            self._pumping = True
            self.env.process(self._pump())

    # -- citizens (Open311) ----------------------------------------------------------------------------------
    def deadlines(self) -> dict[str, float]:
        return dict(self._deadlines)

    def submit(self, report: Report, t: float) -> simpy.Event:
        form = {"service_code": report.category, "lat": f"{report.lat:.7f}", "long": f"{report.lon:.7f}",
                "description": report.description, "device_id": report.channel,
                "account_id": f"resident-{report.resident}"}
        if report.media_url:
            form["media_url"] = report.media_url
        headers = {**self._citizen, "Content-Type": "application/x-www-form-urlencoded",
                   "Idempotency-Key": report.key}  # a retried POST is the same report
        intended = self.clock.intended(t)
        self.submitted += 1

        def receipt(answer: Any) -> Receipt:
            [doc] = answer
            return Receipt(request_id=int(doc["service_request_id"]), token=str(doc["token"]), duplicate_of=None,
                           deadline_t=t + self._deadlines.get(report.category, 0.0))

        def record(got: Receipt | None) -> Receipt | None:
            if got is not None:
                self._posted[got.token] = intended
                self.ledger.append("report.submitted", t, report.key, channel=report.channel,
                                   category=report.category, problem=report.problem, resident=report.resident,
                                   request_id=got.request_id, duplicate_of=None, deadline_t=got.deadline_t,
                                   lon=report.lon, lat=report.lat)
            return got

        return self._call(t, "open311.post", "POST", "/requests.json", headers, urlencode(form).encode(),
                          _json_then(receipt), record)

    def by_token(self, token: str, t: float) -> simpy.Event:
        """The reporter's check: the token's request id once (GET /tokens), then the request (GET /requests)."""
        event = self.env.event()
        known = self._ids.get(token)
        if known is not None:
            self._follow_token(token, known, t, event)
            return event

        def found(answer: Any) -> int:
            [doc] = answer
            return int(doc["service_request_id"])

        def then(request_id: int | None) -> None:
            if request_id is None:
                event.succeed(None)
                return
            self._ids[token] = request_id
            self._follow_token(token, request_id, self.env.now, event)

        looked_up = self._call(t, "open311.token", "GET", f"/tokens/{token}.json", self._citizen, None,
                               _json_then(found))
        looked_up.callbacks.append(lambda ev: then(ev.value))
        return event

    def public(self, request_id: int, t: float) -> simpy.Event:
        return self._call(t, "open311.get", "GET", f"/requests/{request_id}.json", self._citizen, None,
                          _json_then(lambda answer: self._public_view(answer, request_id)))

    # -- operators and crews (the operator API) -------------------------------------------------------------
    adopts_unknown = True  # a request in the queue the twin did not file is triaged too

    def shows_in_queue(self, request_id: int) -> bool:
        """Operators find this request in the IOC's queue (Organisation polls it) rather than being handed it."""
        return True

    def new_requests(self, t: float) -> simpy.Event:
        return self._call(t, "operator.queue", "GET", f"{OPERATOR_API}?status=received&limit=1000", self._operator,
                          None, _json_then(lambda answer: [self._operator_view(doc) for doc in answer]))

    def view(self, request_id: int, t: float) -> simpy.Event:
        return self._call(t, "operator.get", "GET", f"{OPERATOR_API}/{request_id}", self._operator, None,
                          _json_then(self._operator_view))

    def acknowledge(self, request_id: int, actor: str, t: float, note: str = "") -> simpy.Event:
        return self._act(request_id, "acknowledge", actor, t, {"note": note})

    def assign(self, request_id: int, actor: str, assignee: str, t: float, note: str = "") -> simpy.Event:
        return self._act(request_id, "assign", actor, t, {"note": note, "crew": assignee})

    def start(self, request_id: int, actor: str, t: float, note: str = "") -> simpy.Event:
        return self._act(request_id, "start", actor, t, {"note": note})

    def resolve(self, request_id: int, actor: str, t: float, note: str = "") -> simpy.Event:
        return self._act(request_id, "resolve", actor, t, {"note": note})

    def close(self, request_id: int, actor: str, t: float, note: str = "") -> simpy.Event:
        return self._act(request_id, "close", actor, t, {"note": note})

    def mark_duplicate(self, request_id: int, of_id: int, actor: str, t: float) -> simpy.Event:
        return self._act(request_id, "duplicate", actor, t, {"of": of_id})

    # -- helpers ----------------------------------------------------------------------------------------------
    def _act(self, request_id: int, action: str, actor: str, t: float, body: dict) -> simpy.Event:
        def record(view: RequestView | None) -> RequestView | None:
            if view is not None:
                self.ledger.append("request.status", t, str(request_id), status=view.status, actor=actor,
                                   published=bool(body.get("note")), duplicate_of=view.duplicate_of,
                                   crew=body.get("crew") or None)
            return view

        return self._call(t, f"operator.{action}", "POST", f"{OPERATOR_API}/{request_id}/{action}", self._operator,
                          json.dumps(body).encode(), _json_then(self._operator_view), record)

    def _follow_token(self, token: str, request_id: int, t: float, event: simpy.Event) -> None:
        got = self.public(request_id, t)

        def seen(ev: simpy.Event) -> None:
            view = ev.value
            if view is not None and view.closed:
                posted = self._posted.pop(token, None)
                if posted is not None and self.on_closed_seen is not None:
                    self.on_closed_seen(posted, time.monotonic())
            event.succeed(view)

        got.callbacks.append(seen)

    def _call(self, t: float, key: str, method: str, path: str, headers: dict, content: bytes | None,
              check: Callable[[Any], Any], after: Callable[[Any], Any] | None = None) -> simpy.Event:
        """Hand one request to the sender; the event succeeds (in the pump) with check(answer) or None."""
        event = self.env.event()

        def done(result: Any, error: str | None) -> None:  # the sender's thread
            with self._lock:
                self._answers.append((event, None if error else result, after))

        self.sender.http(self.clock.intended(t), key, method, self.base + path, content=content, headers=headers,
                         check=check, on_done=done)
        return event

    def _pump(self):
        while True:
            yield self.env.timeout(self.pump_every_s)
            self.deliver()

    def deliver(self) -> int:
        """Complete the events whose answers came in (in the simulation's thread); how many."""
        with self._lock:
            answers, self._answers = self._answers, []
        for event, value, after in answers:
            if value is None:
                self.failed += 1
            if after is not None:
                value = after(value)
            event.succeed(value)
        return len(answers)

    def _public_view(self, answer: Any, request_id: int) -> RequestView:
        [doc] = answer
        note = doc.get("status_notes") or ""
        duplicate = DUPLICATE_NOTE.search(note)
        status = str(doc["status"])
        return RequestView(request_id=int(doc["service_request_id"]), status=status, note=note,
                           duplicate_of=int(duplicate.group(1)) if duplicate and status == "closed" else None,
                           category=str(doc["service_code"]),
                           deadline_t=self._virtual(doc.get("expected_datetime")),
                           updated_t=self._virtual(doc.get("updated_datetime")))

    def _operator_view(self, doc: Any) -> RequestView:
        return RequestView(request_id=int(doc["id"]), status=str(doc["status"]), note=doc.get("status_note") or "",
                           duplicate_of=doc.get("duplicate_of"), category=str(doc["service_code"]),
                           deadline_t=self._virtual(doc.get("deadline")), updated_t=self._virtual(doc.get("updated_at")),
                           lon=doc.get("lon"), lat=doc.get("lat"))

    def _virtual(self, stamp: str | None) -> float:
        if not stamp:
            return float("nan")
        return self.clock.virtual_of(datetime.fromisoformat(stamp.replace("Z", "+00:00")))


def _json_then(make: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """A sender `check`: the answer's JSON made into the port's value (a missing field, a wrong shape:
    the sender counts it as an invalid body)."""
    return lambda response: make(response.json())


class ShardedPort:
    """One shard of a drive over several workers: every worker runs the same seeded world, and a report (with
    everything done about it: the reporter's checks, triage, the crew's steps) goes to the live IOC from the
    worker that owns its key, and to an IOC in memory everywhere else, so the live IOC gets each report once.

    The in-memory requests are told apart by their ids (negated: the IOC's ids are positive) and their tokens
    (prefixed), so every later call finds its way back to the IOC that holds the request."""

    LOCAL_TOKEN = "~"
    # Another worker's requests are in the same queue and look like no one's: each worker triages its own.
    adopts_unknown = False

    def shows_in_queue(self, request_id: int) -> bool:
        return request_id > 0  # the live IOC's; the ones in memory are handed over as they are filed

    def __init__(self, live: LivePort, local: Any, owns: Callable[[str], bool]):
        self.live, self.local, self.owns = live, local, owns

    def begin(self) -> None:
        self.live.begin()

    def deliver(self) -> int:
        return self.live.deliver()

    @property
    def submitted(self) -> int:
        return self.live.submitted

    def deadlines(self) -> dict[str, float]:
        return self.live.deadlines()

    def submit(self, report: Report, t: float) -> Any:
        if self.owns(report.key):
            return self.live.submit(report, t)
        got = self.local.submit(report, t)
        return Receipt(request_id=-got.request_id, token=self.LOCAL_TOKEN + got.token,
                       duplicate_of=_local_id(got.duplicate_of), deadline_t=got.deadline_t)

    def by_token(self, token: str, t: float) -> Any:
        if token.startswith(self.LOCAL_TOKEN):
            return _local_view(self.local.by_token(token[len(self.LOCAL_TOKEN):], t))
        return self.live.by_token(token, t)

    def public(self, request_id: int, t: float) -> Any:
        return self._route(request_id, "public", t)

    def view(self, request_id: int, t: float) -> Any:
        return self._route(request_id, "view", t)

    def acknowledge(self, request_id: int, actor: str, t: float, note: str = "") -> Any:
        return self._route(request_id, "acknowledge", actor, t, note)

    def assign(self, request_id: int, actor: str, assignee: str, t: float, note: str = "") -> Any:
        return self._route(request_id, "assign", actor, assignee, t, note)

    def start(self, request_id: int, actor: str, t: float, note: str = "") -> Any:
        return self._route(request_id, "start", actor, t, note)

    def resolve(self, request_id: int, actor: str, t: float, note: str = "") -> Any:
        return self._route(request_id, "resolve", actor, t, note)

    def close(self, request_id: int, actor: str, t: float, note: str = "") -> Any:
        return self._route(request_id, "close", actor, t, note)

    def new_requests(self, t: float) -> Any:
        return self.live.new_requests(t)

    def mark_duplicate(self, request_id: int, of_id: int, actor: str, t: float) -> Any:
        if request_id > 0:
            return self.live.mark_duplicate(request_id, of_id, actor, t)
        return _local_view(self.local.mark_duplicate(-request_id, -of_id, actor, t))

    def _route(self, request_id: int, name: str, *args: Any) -> Any:
        if request_id > 0:
            return getattr(self.live, name)(request_id, *args)
        return _local_view(getattr(self.local, name)(-request_id, *args))


def _local_id(request_id: int | None) -> int | None:
    return None if request_id is None else -request_id


def _local_view(view: RequestView) -> RequestView:
    return RequestView(request_id=-view.request_id, status=view.status, note=view.note,
                       duplicate_of=_local_id(view.duplicate_of), category=view.category,
                       deadline_t=view.deadline_t, updated_t=view.updated_t)


class DiscardLedger:
    """Where the in-memory IOC of a sharded drive writes: nowhere (its requests are another worker's)."""

    def append(self, kind: str, t: float, subject: str = "", **fields: Any) -> None:
        pass
