"""The KPI figures the dashboard shows: open requests by SLA risk, alerts by type, data freshness.

The 2023 note's point is that an IOC is worth what its data and KPIs are worth: so the figures include
whether reports are handled within their deadline and how stale each kind of device data is.
"""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from .entities import iso
from .ldcontext import DISPLAY
from .model import RequestQuery, SlaRisk, Status
from .requests import is_open, sla_risk
from .rules import ACTIVE
from .store import Tx

_ALL = 2**62  # "no limit" for queries that must see every row


def compute(tx: Tx, now: datetime, freshness_window: timedelta) -> dict[str, Any]:
    return {
        "generated_at": iso(now),
        "requests": _requests(tx, now),
        "alerts": _alerts(tx),
        "freshness": _freshness(tx, now, freshness_window),
    }


def _requests(tx: Tx, now: datetime) -> dict[str, Any]:
    requests = tx.find_requests(RequestQuery(limit=_ALL))
    open_ = [r for r in requests if is_open(r)]
    by_risk = Counter({risk.value: 0 for risk in SlaRisk})
    by_risk.update(sla_risk(r, now).value for r in open_)
    by_status = Counter({status.value: 0 for status in Status})
    by_status.update(r.status.value for r in requests)
    # Duplicates are folded, not handled: they would flatter both the SLA share and the median.
    handled = [r for r in requests if r.closed_at is not None and r.duplicate_of is None]
    within = sum(1 for r in handled if r.closed_at <= r.deadline)
    hours = [(r.closed_at - r.requested_at).total_seconds() / 3600 for r in handled]
    return {
        "open": len(open_),
        "by_risk": dict(by_risk),
        "by_status": dict(by_status),
        "by_service": dict(sorted(Counter(r.service_code for r in open_).items())),
        "received_24h": sum(1 for r in requests if r.requested_at >= now - timedelta(hours=24)),
        "resolved_within_sla_pct": round(100.0 * within / len(handled), 1) if handled else None,
        "median_resolution_h": round(statistics.median(hours), 2) if hours else None,
    }


def _alerts(tx: Tx) -> dict[str, Any]:
    active = tx.find_alerts(ACTIVE, limit=_ALL)
    return {
        "active": len(active),
        "by_kind": dict(sorted(Counter(a.kind for a in active).items())),
        "by_category": dict(sorted(Counter(a.category for a in active).items())),
        "by_severity": dict(sorted(Counter(a.severity for a in active).items())),
    }


def _freshness(tx: Tx, now: datetime, window: timedelta) -> list[dict[str, Any]]:
    rows = []
    for entity_type, count, oldest, _newest in tx.freshness():
        stale = len(tx.stale_entities(entity_type, now - window))
        rows.append({"type": DISPLAY.compact(entity_type), "count": count, "fresh": count - stale,
                     "oldest_age_s": round(max(0.0, (now - oldest).total_seconds()), 1)})
    return rows
