"""The IOC core's field reports: workflow, SLA risk, duplicates, idempotent retries, the public view."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citytwin.ioc.core import (
    DEFAULT_CATALOG,
    IOC,
    TRANSITIONS,
    Conflict,
    Invalid,
    MemoryStore,
    NotFound,
    Reporter,
    RequestDraft,
    RequestQuery,
    SlaRisk,
    Status,
    UnknownService,
)
from citytwin.ioc.core.requests import AT_RISK_FRACTION, haversine_m, public_view

T0 = datetime(2024, 10, 14, 7, 30, tzinfo=timezone.utc)
LAT, LON = 16.0544, 108.2022  # Đà Nẵng, near Cầu Rồng
METRE_LAT = 1 / 111_195  # one metre north, in degrees


def make_ioc() -> IOC:
    counter = itertools.count(1)
    return IOC(MemoryStore(), tokens=lambda: f"tok{next(counter)}")


def draft(code: str = "road-damage", lat: float | None = LAT, lon: float | None = LON, **kw) -> RequestDraft:
    return RequestDraft(code, lat=lat, lon=lon, **kw)


# Steps that bring a fresh request to each status, and the call that performs each step.
PATHS = {
    Status.RECEIVED: [],
    Status.ACKNOWLEDGED: [Status.ACKNOWLEDGED],
    Status.ASSIGNED: [Status.ACKNOWLEDGED, Status.ASSIGNED],
    Status.IN_PROGRESS: [Status.ACKNOWLEDGED, Status.ASSIGNED, Status.IN_PROGRESS],
    Status.RESOLVED: [Status.ACKNOWLEDGED, Status.ASSIGNED, Status.IN_PROGRESS, Status.RESOLVED],
    Status.CLOSED: [Status.CLOSED],
}


def step(ioc: IOC, request_id: int, to: Status, now: datetime, note: str = ""):
    actor = "op1"
    if to == Status.ACKNOWLEDGED:
        return ioc.acknowledge(request_id, actor, now, note)
    if to == Status.ASSIGNED:
        return ioc.assign(request_id, actor, "crew-7", now, note)
    if to == Status.IN_PROGRESS:
        return ioc.start(request_id, actor, now, note)
    if to == Status.RESOLVED:
        return ioc.resolve(request_id, actor, now, note)
    return ioc.close(request_id, actor, now, note)


def test_submit_takes_deadline_and_agency_from_the_catalog_and_records_the_citizen():
    ioc = make_ioc()
    request = ioc.submit(draft("flooding", description="Ngập sâu 40 cm"), T0)
    service = DEFAULT_CATALOG["flooding"]
    assert request.id is not None and request.token == "tok1"
    assert request.status == Status.RECEIVED
    assert request.deadline == T0 + service.sla
    assert request.agency == service.agency
    assert ioc.get_request(request.id) == request
    assert ioc.request_by_token("tok1").id == request.id
    [event] = ioc.request_history(request.id)
    assert (event.status, event.at, event.actor) == (Status.RECEIVED, T0, "citizen")


# No operator call leads back to RECEIVED, so every target but that one.
@pytest.mark.parametrize("start,to", list(itertools.product(Status, [s for s in Status if s != Status.RECEIVED])))
def test_every_transition_is_allowed_exactly_when_the_workflow_says(start, to):
    ioc = make_ioc()
    request = ioc.submit(draft(), T0)
    for position, status in enumerate(PATHS[start]):
        step(ioc, request.id, status, T0 + timedelta(minutes=position + 1))
    assert ioc.get_request(request.id).status == start
    later = T0 + timedelta(hours=1)
    if to in TRANSITIONS[start]:
        updated = step(ioc, request.id, to, later, note=f"now {to}")
        assert updated.status == to and updated.updated_at == later
        assert ioc.get_request(request.id).status == to
        assert ioc.request_history(request.id)[-1].note == f"now {to}"
    else:
        events_before = ioc.request_history(request.id)
        with pytest.raises(Conflict):
            step(ioc, request.id, to, later)
        assert ioc.get_request(request.id).status == start
        assert ioc.request_history(request.id) == events_before


def test_each_step_is_recorded_with_time_actor_and_public_note():
    ioc = make_ioc()
    request = ioc.submit(draft(), T0)
    ioc.acknowledge(request.id, "op-an", T0 + timedelta(minutes=5), "Đã tiếp nhận")
    assigned = ioc.assign(request.id, "op-an", "Đội 3", T0 + timedelta(minutes=10), "Giao đội 3")
    assert assigned.assignee == "Đội 3"
    ioc.start(request.id, "crew-3", T0 + timedelta(hours=2), "Đang sửa")
    resolved = ioc.resolve(request.id, "crew-3", T0 + timedelta(hours=5), "Đã vá xong")
    assert resolved.closed_at == T0 + timedelta(hours=5)
    assert resolved.status_note == "Đã vá xong"
    history = ioc.request_history(request.id)
    assert [(e.status, e.at - T0, e.actor, e.note) for e in history[1:]] == [
        (Status.ACKNOWLEDGED, timedelta(minutes=5), "op-an", "Đã tiếp nhận"),
        (Status.ASSIGNED, timedelta(minutes=10), "op-an", "Giao đội 3"),
        (Status.IN_PROGRESS, timedelta(hours=2), "crew-3", "Đang sửa"),
        (Status.RESOLVED, timedelta(hours=5), "crew-3", "Đã vá xong"),
    ]
    # Reopened when the fix does not hold: closed_at keeps the first resolution.
    reopened = ioc.start(request.id, "op-an", T0 + timedelta(hours=8), "Lún lại")
    assert reopened.status == Status.IN_PROGRESS and reopened.closed_at == T0 + timedelta(hours=5)


def test_workflow_on_unknown_request_is_not_found_and_assign_needs_a_crew():
    ioc = make_ioc()
    with pytest.raises(NotFound):
        ioc.acknowledge(99, "op", T0)
    with pytest.raises(NotFound):
        ioc.get_request(99)
    with pytest.raises(NotFound):
        ioc.request_by_token("nope")
    with pytest.raises(NotFound):
        ioc.request_history(99)
    request = ioc.submit(draft(), T0)
    ioc.acknowledge(request.id, "op", T0)
    with pytest.raises(Invalid) as error:
        ioc.assign(request.id, "op", " ", T0)
    assert error.value.field == "crew"


@pytest.mark.parametrize("status,open311", [(s, "closed" if s in (Status.RESOLVED, Status.CLOSED) else "open")
                                            for s in Status])
def test_public_view_maps_to_open_or_closed_and_hides_the_reporter(status, open311):
    ioc = make_ioc()
    reporter = Reporter(email="lan@example.vn", first_name="Lan", last_name="Nguyễn", phone="0905123456",
                        device_id="phone-1", account_id="acc-9")
    request = ioc.submit(draft(reporter=reporter, address="12 Bạch Đằng", description="Ổ gà lớn"), T0)
    for position, to in enumerate(PATHS[status]):
        step(ioc, request.id, to, T0 + timedelta(minutes=position + 1))
    request = ioc.get_request(request.id)
    view = public_view(request, DEFAULT_CATALOG["road-damage"])
    assert view["status"] == open311
    assert view["service_request_id"] == str(request.id)
    assert view["service_name"] == DEFAULT_CATALOG["road-damage"].name
    assert view["expected_datetime"] == request.deadline
    assert (view["lat"], view["long"], view["address"]) == (LAT, LON, "12 Bạch Đằng")
    assert view["agency_responsible"] == request.agency
    flat = repr(view)
    for secret in ("lan@example.vn", "Lan", "Nguyễn", "0905123456", "phone-1", "acc-9", request.token):
        assert secret not in flat
    assert "token" not in view and "reporter" not in view


@settings(max_examples=50, deadline=None)
@given(email=st.emails(), phone=st.text(alphabet="0123456789", min_size=8, max_size=12))
def test_public_view_never_carries_reporter_details(email, phone):
    ioc = make_ioc()
    request = ioc.submit(draft(reporter=Reporter(email=email, phone=phone), description="x"), T0)
    flat = repr(public_view(request, None))
    assert email not in flat and phone not in flat


def test_sla_risk_on_track_at_risk_breached():
    ioc = make_ioc()
    request = ioc.submit(draft("traffic-signal"), T0)  # 4 h SLA
    sla = request.deadline - T0
    assert ioc.sla_risk(request, T0) == SlaRisk.ON_TRACK
    assert ioc.sla_risk(request, T0 + sla * AT_RISK_FRACTION - timedelta(seconds=1)) == SlaRisk.ON_TRACK
    assert ioc.sla_risk(request, T0 + sla * AT_RISK_FRACTION) == SlaRisk.AT_RISK
    assert ioc.sla_risk(request, request.deadline) == SlaRisk.AT_RISK
    assert ioc.sla_risk(request, request.deadline + timedelta(seconds=1)) == SlaRisk.BREACHED
    # Closed: judged by when it was resolved, not by now.
    ioc.acknowledge(request.id, "op", T0)
    ioc.close(request.id, "op", T0 + timedelta(hours=1))
    done = ioc.get_request(request.id)
    assert ioc.sla_risk(done, T0 + timedelta(days=30)) == SlaRisk.ON_TRACK
    late = ioc.submit(draft("traffic-signal", lat=LAT + 0.1), T0)
    ioc.close(late.id, "op", T0 + timedelta(hours=5))
    assert ioc.sla_risk(ioc.get_request(late.id), T0 + timedelta(days=30)) == SlaRisk.BREACHED


def test_by_sla_risk_lists_open_requests_breached_first_then_at_risk_then_by_deadline():
    ioc = make_ioc()
    now = T0 + timedelta(hours=5)
    breached = ioc.submit(draft("traffic-signal", lat=LAT + 0.01), T0)  # due T0+4h
    at_risk = ioc.submit(draft("flooding", lat=LAT + 0.02), T0)  # due T0+6h, 5/6 used
    on_track_late = ioc.submit(draft("construction-order", lat=LAT + 0.03), T0)  # due T0+5d
    on_track_soon = ioc.submit(draft("waste", lat=LAT + 0.04), T0)  # due T0+24h
    closed = ioc.submit(draft("traffic-signal", lat=LAT + 0.05), T0)
    ioc.close(closed.id, "op", T0 + timedelta(minutes=1))
    ranked = ioc.by_sla_risk(now)
    assert [(r.id, risk) for r, risk in ranked] == [
        (breached.id, SlaRisk.BREACHED), (at_risk.id, SlaRisk.AT_RISK),
        (on_track_soon.id, SlaRisk.ON_TRACK), (on_track_late.id, SlaRisk.ON_TRACK)]
    assert len(ioc.by_sla_risk(now, limit=2)) == 2


def test_duplicate_within_radius_and_window_links_to_the_open_original():
    ioc = make_ioc()
    original = ioc.submit(draft(), T0)
    near = ioc.submit(draft(lat=LAT + 40 * METRE_LAT), T0 + timedelta(days=2))
    assert near.duplicate_of == original.id
    assert str(original.id) in near.status_note
    # Only originals count: a report 45 m from the original and 5 m from its duplicate links to the
    # original, and one 40 m beyond the duplicate (80 m from the original) starts a new original.
    nearer = ioc.submit(draft(lat=LAT + 45 * METRE_LAT), T0 + timedelta(days=2, hours=1))
    assert nearer.duplicate_of == original.id
    beyond = ioc.submit(draft(lat=LAT + 80 * METRE_LAT), T0 + timedelta(days=2, hours=2))
    assert beyond.duplicate_of is None


@settings(max_examples=100, deadline=None)
@given(points=st.lists(st.tuples(st.floats(-0.03, 0.03), st.floats(-0.03, 0.03)), min_size=1, max_size=30),
       probe=st.tuples(st.floats(-0.03, 0.03), st.floats(-0.03, 0.03)),
       radius=st.sampled_from([10.0, 50.0, 400.0, 3000.0, 20_000.0]))
def test_memory_store_near_requests_agree_with_a_full_scan(points, probe, radius):
    # Around a cell corner of the store's grid, so boundaries are crossed often.
    store = MemoryStore()
    ioc = IOC(store, duplicate_radius_m=0.0)
    for dlat, dlon in points:
        ioc.submit(draft("waste", lat=16.0 + dlat, lon=108.0 + dlon), T0)
    lat, lon = 16.0 + probe[0], 108.0 + probe[1]
    with store.transaction() as tx:
        found = {r.id for r in tx.open_requests_near("waste", lon, lat, radius, T0)}
        assert tx.open_requests_near("noise", lon, lat, radius, T0) == []
        assert tx.open_requests_near("waste", lon, lat, radius, T0 + timedelta(seconds=1)) == []
    expected = {r.id for r in ioc.find_requests(RequestQuery())
                if haversine_m(lon, lat, r.lon, r.lat) <= radius}
    assert found == expected


@pytest.mark.parametrize("case", ["far", "late", "other service", "original closed", "no location"])
def test_no_duplicate_outside_radius_window_service_or_when_the_original_is_done(case):
    ioc = make_ioc()
    original = ioc.submit(draft(), T0)
    later = T0 + timedelta(hours=1)
    second = {
        "far": lambda: draft(lat=LAT + 60 * METRE_LAT),
        "late": lambda: draft(),
        "other service": lambda: draft("waste"),
        "original closed": lambda: draft(),
        "no location": lambda: draft(lat=None, lon=None, address="12 Bạch Đằng"),
    }[case]()
    if case == "late":
        later = T0 + timedelta(days=3, seconds=1)
    if case == "original closed":
        ioc.close(original.id, "op", T0 + timedelta(minutes=1))
    assert ioc.submit(second, later).duplicate_of is None
    assert 50 < haversine_m(LON, LAT, LON, LAT + 60 * METRE_LAT) < 70


def test_mark_duplicate_closes_and_links():
    ioc = make_ioc()
    original = ioc.submit(draft(), T0)
    other = ioc.submit(draft(lat=LAT + 0.01), T0)
    marked = ioc.mark_duplicate(other.id, original.id, "op", T0 + timedelta(minutes=3))
    assert marked.status == Status.CLOSED and marked.duplicate_of == original.id
    assert ioc.request_history(other.id)[-1].actor == "op"
    with pytest.raises(Conflict):
        ioc.mark_duplicate(other.id, original.id, "op", T0)
    with pytest.raises(Invalid):
        ioc.mark_duplicate(original.id, original.id, "op", T0)
    with pytest.raises(NotFound):
        ioc.mark_duplicate(original.id, 999, "op", T0)


def test_same_client_ref_returns_the_request_already_accepted():
    ioc = make_ioc()
    first = ioc.submit(draft(client_ref="app-42", description="first"), T0)
    again = ioc.submit(draft(client_ref="app-42", description="retry", lat=LAT + 1), T0 + timedelta(minutes=1))
    assert again == first
    assert len(ioc.find_requests(RequestQuery())) == 1
    assert len(ioc.request_history(first.id)) == 1
    other = ioc.submit(draft(client_ref="app-43", lat=LAT + 1), T0)
    assert other.id != first.id


@pytest.mark.parametrize("bad,field", [
    (dict(lat=91.0), "lat"),
    (dict(lat=-90.5), "lat"),
    (dict(lon=180.1), "long"),
    (dict(lon=float("nan")), "long"),
    (dict(lat=None), "lat"),
    (dict(lon=None), "long"),
    (dict(lat=None, lon=None), "lat"),
    (dict(lat=None, lon=None, address="   "), "lat"),
    (dict(description="x" * 4001), "description"),
    (dict(media_url="javascript:alert(1)"), "media_url"),
])
def test_bad_drafts_are_invalid_naming_the_field(bad, field):
    ioc = make_ioc()
    with pytest.raises(Invalid) as error:
        ioc.submit(draft(**bad), T0)
    assert error.value.field == field
    assert error.value.message
    assert ioc.find_requests(RequestQuery()) == []


def test_unknown_service_code_and_address_only_report():
    ioc = make_ioc()
    with pytest.raises(UnknownService) as error:
        ioc.submit(draft("teleport"), T0)
    assert isinstance(error.value, Invalid) and error.value.field == "service_code"
    with pytest.raises(UnknownService):
        ioc.service("teleport")
    assert ioc.service("waste") is DEFAULT_CATALOG["waste"]
    assert ioc.submit(draft(lat=None, lon=None, address="Chợ Hàn"), T0).address == "Chợ Hàn"
    assert ioc.submit(draft(description="x" * 4000, lat=LAT + 1), T0).description == "x" * 4000


def test_find_requests_filters_and_orders_newest_first():
    ioc = make_ioc()
    ids = [ioc.submit(draft(code, lat=LAT + i * 0.01), T0 + timedelta(hours=i)).id
           for i, code in enumerate(["waste", "noise", "waste", "flooding"])]
    ioc.close(ids[0], "op", T0 + timedelta(hours=9))
    assert [r.id for r in ioc.find_requests(RequestQuery())] == ids[::-1]
    assert [r.id for r in ioc.find_requests(RequestQuery(service_codes=("waste",)))] == [ids[2], ids[0]]
    assert [r.id for r in ioc.find_requests(RequestQuery(open_only=True))] == [ids[3], ids[2], ids[1]]
    assert [r.id for r in ioc.find_requests(RequestQuery(statuses=(Status.CLOSED,)))] == [ids[0]]
    window = RequestQuery(start=T0 + timedelta(hours=1), end=T0 + timedelta(hours=2))
    assert [r.id for r in ioc.find_requests(window)] == [ids[2], ids[1]]
    assert [r.id for r in ioc.find_requests(RequestQuery(limit=2, offset=1))] == [ids[2], ids[1]]
    assert [r.id for r in ioc.find_requests(RequestQuery(ids=(ids[1], 999)))] == [ids[1]]


def test_catalog_has_the_pilot_categories_with_agencies_and_deadlines():
    assert len(DEFAULT_CATALOG) >= 12
    for code, service in DEFAULT_CATALOG.items():
        assert service.code == code and service.name and service.agency and service.keywords
        assert service.description and service.group
        assert timedelta(hours=1) <= service.sla <= timedelta(days=7)
    agencies = " ".join(s.agency for s in DEFAULT_CATALOG.values())
    for body in ("Sở Giao thông vận tải", "URENCO", "Thoát nước", "UBND phường", "Công an"):
        assert body in agencies
