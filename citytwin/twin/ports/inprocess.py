"""The in-process port: `ioc.core` in memory, in virtual time. Every call that changes the IOC's state
writes its row to the ledger with the time it happened, so KPIs see the same record a live run keeps."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import numpy as np

from citytwin.ioc.core.memory import MemoryStore
from citytwin.ioc.core.model import RequestDraft, RequestQuery, Reporter, ServiceRequest, Status
from citytwin.ioc.core.service import IOC

from ..ledger import Ledger
from .base import Receipt, Report, RequestView

ICT = timezone(timedelta(hours=7), "ICT")  # Indochina Time, the city's clock
# The date virtual t = 0 falls on (a Monday); the scenario's start clock is added to it.
EPOCH_DATE = datetime(2026, 6, 1, tzinfo=ICT)


def new_ioc(rng: np.random.Generator, deadlines_s: dict[str, float] | None = None) -> IOC:
    """A reference IOC in memory whose tokens come from the run's generator (same seed, same tokens)."""
    ioc = IOC(MemoryStore(), tokens=lambda: f"{int(rng.integers(2**63)):016x}")
    for code, seconds in (deadlines_s or {}).items():
        ioc.catalog[code] = replace(ioc.catalog[code], sla=timedelta(seconds=seconds))
    return ioc


class InProcessPort:
    def __init__(self, ioc: IOC, ledger: Ledger, *, start_s: float = 0.0):
        self.ioc, self.ledger = ioc, ledger
        self.epoch = EPOCH_DATE + timedelta(seconds=start_s)

    # -- clock -----------------------------------------------------------------------------------------
    def at(self, t: float) -> datetime:
        return self.epoch + timedelta(seconds=float(t))

    def virtual(self, when: datetime) -> float:
        return (when - self.epoch).total_seconds()

    # -- citizens --------------------------------------------------------------------------------------
    def deadlines(self) -> dict[str, float]:
        return {s.code: s.sla.total_seconds() for s in self.ioc.services()}

    def submit(self, report: Report, t: float) -> Receipt:
        draft = RequestDraft(service_code=report.category, lat=report.lat, lon=report.lon,
                             description=report.description, media_url=report.media_url,
                             reporter=Reporter(account_id=f"resident-{report.resident}",
                                               device_id=report.channel),
                             client_ref=report.key)
        request = self.ioc.submit(draft, self.at(t))
        receipt = Receipt(request_id=request.id, token=request.token, duplicate_of=request.duplicate_of,
                          deadline_t=self.virtual(request.deadline))
        self.ledger.append("report.submitted", t, report.key, channel=report.channel, category=report.category,
                           problem=report.problem, resident=report.resident, request_id=request.id,
                           duplicate_of=request.duplicate_of, deadline_t=receipt.deadline_t,
                           lon=report.lon, lat=report.lat)
        self._status(t, request, "citizen", request.status_note)
        return receipt

    def by_token(self, token: str, t: float) -> RequestView:
        return self._view(self.ioc.request_by_token(token))

    def view(self, request_id: int, t: float) -> RequestView:
        return self._view(self.ioc.get_request(request_id))

    public = view  # in memory the public and the operator see the same record

    # -- operators and crews ---------------------------------------------------------------------------
    def acknowledge(self, request_id: int, actor: str, t: float, note: str = "") -> RequestView:
        return self._step(self.ioc.acknowledge(request_id, actor, self.at(t), note), actor, t, note)

    def assign(self, request_id: int, actor: str, assignee: str, t: float, note: str = "") -> RequestView:
        return self._step(self.ioc.assign(request_id, actor, assignee, self.at(t), note), actor, t, note)

    def start(self, request_id: int, actor: str, t: float, note: str = "") -> RequestView:
        return self._step(self.ioc.start(request_id, actor, self.at(t), note), actor, t, note)

    def resolve(self, request_id: int, actor: str, t: float, note: str = "") -> RequestView:
        return self._step(self.ioc.resolve(request_id, actor, self.at(t), note), actor, t, note)

    def close(self, request_id: int, actor: str, t: float, note: str = "") -> RequestView:
        return self._step(self.ioc.close(request_id, actor, self.at(t), note), actor, t, note)

    def new_requests(self, t: float) -> list[RequestView]:
        return [self._view(r) for r in self.ioc.find_requests(RequestQuery(statuses=(Status.RECEIVED,)))]

    def mark_duplicate(self, request_id: int, of_id: int, actor: str, t: float) -> RequestView:
        request = self.ioc.mark_duplicate(request_id, of_id, actor, self.at(t))
        return self._step(request, actor, t, request.status_note)

    # -- helpers ---------------------------------------------------------------------------------------
    def _step(self, request: ServiceRequest, actor: str, t: float, note: str) -> RequestView:
        self._status(t, request, actor, note)
        return self._view(request)

    def _status(self, t: float, request: ServiceRequest, actor: str, note: str) -> None:
        """`published`: this step carried a public note, which the reporter sees when they next look."""
        self.ledger.append("request.status", t, str(request.id), status=str(request.status), actor=actor,
                           published=bool(note), duplicate_of=request.duplicate_of,
                           crew=request.assignee)

    def _view(self, request: ServiceRequest) -> RequestView:
        return RequestView(request_id=request.id, status=str(request.status), note=request.status_note,
                           duplicate_of=request.duplicate_of, category=request.service_code,
                           deadline_t=self.virtual(request.deadline), updated_t=self.virtual(request.updated_at),
                           lon=request.lon, lat=request.lat)
