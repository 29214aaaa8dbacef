"""What the twin's people do at the IOC, in the semantics of its real interfaces, whatever carries it.

Citizens file reports (Open311 `POST /requests`) and follow them by token (`GET /tokens/{token}`,
`GET /requests/{id}`); operators and crews move requests along the workflow (the operator API). Times
are virtual seconds since the scenario start; the port turns them into the IOC's clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import simpy


@dataclass(frozen=True)
class Report:
    """A field report as a citizen files it. `problem` and `resident` are the twin's ground truth and
    never reach the IOC; they go to the ledger so KPIs can relate reports to problems and people."""

    key: str  # the twin's id for the report ("r17"); sent as client_ref, so a retry is not a second report
    category: str  # Open311 service_code
    lon: float
    lat: float
    description: str
    channel: str  # app | hotline | web
    media_url: str | None = None
    problem: str = ""
    resident: int = -1


@dataclass(frozen=True)
class Receipt:
    request_id: int
    token: str
    duplicate_of: int | None  # the open request the IOC linked it to on arrival, if any
    deadline_t: float


@dataclass(frozen=True)
class RequestView:
    """A request as the reporter or an operator sees it."""

    request_id: int
    status: str  # received | acknowledged | assigned | in_progress | resolved | closed
    note: str  # the latest public note
    duplicate_of: int | None
    category: str
    deadline_t: float
    updated_t: float
    lon: float | None = None  # where it was reported (the operators' queue shows it)
    lat: float | None = None

    @property
    def closed(self) -> bool:
        return self.status in ("resolved", "closed")


class FieldReportPort(Protocol):
    """Every call answers with its value, or (a live port) with a SimPy event the IOC's answer completes,
    None when the IOC failed. Agents take either with `answer(...)`."""

    def deadlines(self) -> dict[str, float]:
        """Each category's deadline in seconds (Open311 services with their SLA)."""

    def submit(self, report: Report, t: float) -> Receipt: ...

    def by_token(self, token: str, t: float) -> RequestView: ...

    def view(self, request_id: int, t: float) -> RequestView:
        """The request as an operator sees it (with duplicate_of and the full workflow state)."""

    def public(self, request_id: int, t: float) -> RequestView:
        """The request as anyone sees it (Open311 GET /requests/{id}): what a reporter follows."""

    def acknowledge(self, request_id: int, actor: str, t: float, note: str = "") -> RequestView: ...

    def assign(self, request_id: int, actor: str, assignee: str, t: float, note: str = "") -> RequestView: ...

    def start(self, request_id: int, actor: str, t: float, note: str = "") -> RequestView: ...

    def resolve(self, request_id: int, actor: str, t: float, note: str = "") -> RequestView: ...

    def close(self, request_id: int, actor: str, t: float, note: str = "") -> RequestView: ...

    def mark_duplicate(self, request_id: int, of_id: int, actor: str, t: float) -> RequestView: ...

    def new_requests(self, t: float) -> list[RequestView]:
        """The requests waiting for intake (received, not yet acknowledged), as the operators' queue shows them."""


def answer(reply: Any):
    """The port's reply inside an agent's process: `value = yield from answer(port.view(...))`. An in-process
    port answers at once and nothing is yielded, so a simulated run's order of events is unchanged; a live
    port's event is waited for."""
    if isinstance(reply, simpy.Event):
        reply = yield reply
    return reply
