"""The Store/Tx contract, run against every store: MemoryStore (the twin's), SQLite and PostgreSQL (the
server's). Then what only the SQL stores promise: rollback, bounded statements per batch, concurrent
SQLite writers, Alembic migrations."""

from __future__ import annotations

import shutil
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import event, inspect, text

from citytwin.ioc.core.model import (
    Alert,
    AlertStatus,
    ApiKey,
    Entity,
    EntityQuery,
    Near,
    Observation,
    Reporter,
    RequestEvent,
    RequestQuery,
    Role,
    ServiceRequest,
    Status,
    Subscription,
)
from citytwin.ioc.storage import (
    SqlStore,
    current_revision,
    head_revision,
    make_engine,
    migrate,
    normalise_url,
    open_store,
)
from citytwin.ioc.storage.migrate import MIGRATIONS, downgrade, revision_of, upgrade
from citytwin.ioc.storage.schema import metadata

ICT = timezone(timedelta(hours=7))  # Asia/Ho_Chi_Minh, where the pilot cities are
T0 = datetime(2025, 3, 1, 8, 0, tzinfo=ICT)
HANOI = (105.8412, 21.0245)  # lon, lat
TYPE = "https://smartdatamodels.org/dataModel.Environment/WaterQualityObserved"
OTHER_TYPE = "https://smartdatamodels.org/dataModel.Transportation/TrafficFlowObserved"
LEVEL = "https://smartdatamodels.org/dataModel.Environment/waterLevel"


# -- the stores --------------------------------------------------------------------------------------------
@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "memory":
        memory = pytest.importorskip("citytwin.ioc.core.memory", reason="MemoryStore not written yet")
        made = memory.MemoryStore()
    elif request.param == "sqlite":
        made = open_store(f"sqlite:///{tmp_path / 'ioc.sqlite3'}")
    else:
        made = open_store(request.getfixturevalue("pg_schema_url"))
    yield made
    made.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ioc.sqlite3'}"
    return request.getfixturevalue("pg_schema_url")


@pytest.fixture
def sql_store(sql_url):
    made = open_store(sql_url)
    yield made
    made.close()


# -- builders ----------------------------------------------------------------------------------------------
def make_request(token: str, at: datetime = T0, **changes) -> ServiceRequest:
    request = ServiceRequest(
        id=None, token=token, service_code="pothole", status=Status.RECEIVED, requested_at=at, updated_at=at,
        deadline=at + timedelta(days=3), agency="Sở Xây dựng", lon=HANOI[0], lat=HANOI[1],
        address="Phố Huế", description="ổ gà sâu", reporter=Reporter(email="a@example.vn", first_name="An"),
        client_ref=None)
    return replace(request, **changes)


def make_entity(number: int, at: datetime = T0, **changes) -> Entity:
    entity = Entity(
        id=f"urn:ngsi-ld:WaterQualityObserved:{number:05d}", type=TYPE,
        attrs={LEVEL: {"type": "Property", "value": 1.5 + number, "observedAt": at.isoformat()}},
        created_at=at, modified_at=at, location=HANOI,
        location_attr={"type": "GeoProperty", "value": {"type": "Point", "coordinates": list(HANOI)}},
        owner=None)
    return replace(entity, **changes)


def make_alert(entity_id: str, at: datetime = T0, **changes) -> Alert:
    alert = Alert(id=None, rule_id="flood-level", kind="threshold", entity_id=entity_id, entity_type=TYPE,
                  severity="high", category="weather", status=AlertStatus.RAISED, raised_at=at,
                  message="water level 1.2 m above 1.0 m", attribute=LEVEL, value=1.2, lon=HANOI[0],
                  lat=HANOI[1])
    return replace(alert, **changes)


def offset_m(metres_north: float = 0.0, metres_east: float = 0.0) -> tuple[float, float]:
    """A point that far from HANOI (small distances: flat-earth is plenty exact)."""
    import math

    dlat = metres_north / 111_194.9
    dlon = metres_east / (111_194.9 * math.cos(math.radians(HANOI[1])))
    return HANOI[0] + dlon, HANOI[1] + dlat


def assert_aware(*values: datetime) -> None:
    for value in values:
        assert value.tzinfo is not None and value.utcoffset() is not None, value


# -- service requests --------------------------------------------------------------------------------------
def test_request_insert_get_update_round_trip(store):
    with store.transaction() as tx:
        request_id = tx.insert_request(make_request("tok-1", client_ref="app-1"))
        other_id = tx.insert_request(make_request("tok-2"))
    assert request_id != other_id
    with store.transaction() as tx:
        got = tx.get_request(request_id)
        assert got == make_request("tok-1", client_ref="app-1", id=request_id)
        assert_aware(got.requested_at, got.updated_at, got.deadline)
        assert tx.request_by_token("tok-2").id == other_id
        assert tx.request_by_client_ref("app-1").id == request_id
        assert tx.get_request(999_999) is None
        assert tx.request_by_token("nope") is None
        assert tx.request_by_client_ref("nope") is None
        tx.update_request(replace(got, status=Status.CLOSED, status_note="đã sửa", assignee="crew 7",
                                  duplicate_of=other_id, updated_at=T0 + timedelta(hours=1),
                                  closed_at=T0 + timedelta(hours=1)))
    with store.transaction() as tx:
        got = tx.get_request(request_id)
    assert (got.status, got.status_note, got.assignee, got.duplicate_of) == (Status.CLOSED, "đã sửa", "crew 7",
                                                                             other_id)
    assert got.closed_at == T0 + timedelta(hours=1)
    assert got.reporter == Reporter(email="a@example.vn", first_name="An")


def test_find_requests_filters_order_and_paging(store):
    with store.transaction() as tx:
        ids = [tx.insert_request(make_request(f"t{i}", at=T0 + timedelta(hours=i),
                                              service_code="pothole" if i % 2 else "streetlight",
                                              status=Status.CLOSED if i == 3 else Status.RECEIVED))
               for i in range(6)]
    with store.transaction() as tx:
        newest_first = [r.id for r in tx.find_requests(RequestQuery())]
        assert newest_first == ids[::-1]
        assert [r.id for r in tx.find_requests(RequestQuery(service_codes=("pothole",)))] == [ids[5], ids[3],
                                                                                             ids[1]]
        assert [r.id for r in tx.find_requests(RequestQuery(statuses=(Status.CLOSED,)))] == [ids[3]]
        assert ids[3] not in [r.id for r in tx.find_requests(RequestQuery(open_only=True))]
        window = RequestQuery(start=T0 + timedelta(hours=1), end=T0 + timedelta(hours=3))
        assert [r.id for r in tx.find_requests(window)] == [ids[3], ids[2], ids[1]]
        assert [r.id for r in tx.find_requests(RequestQuery(ids=(ids[0], ids[4])))] == [ids[4], ids[0]]
        assert [r.id for r in tx.find_requests(RequestQuery(limit=2, offset=1))] == [ids[4], ids[3]]
        assert tx.count_requests() == 6
        assert tx.count_requests(since=T0 + timedelta(hours=4)) == 2


def test_request_times_in_another_zone_compare_as_instants(store):
    with store.transaction() as tx:
        tx.insert_request(make_request("t", at=T0))
    utc_same_instant = T0.astimezone(UTC)
    with store.transaction() as tx:
        assert tx.count_requests(since=utc_same_instant) == 1
        assert tx.count_requests(since=utc_same_instant + timedelta(microseconds=1)) == 0
        assert len(tx.find_requests(RequestQuery(end=utc_same_instant))) == 1
        assert tx.find_requests(RequestQuery())[0].requested_at == utc_same_instant


def test_open_requests_near(store):
    since = T0 - timedelta(days=3)
    with store.transaction() as tx:
        near = tx.insert_request(make_request("near", lon=offset_m(30)[0], lat=offset_m(30)[1]))
        tx.insert_request(make_request("far", lon=offset_m(80)[0], lat=offset_m(80)[1]))
        tx.insert_request(make_request("other-service", service_code="streetlight"))
        resolved = tx.insert_request(make_request("resolved", status=Status.RESOLVED))  # reopens: a candidate
        tx.insert_request(make_request("closed", status=Status.CLOSED))
        tx.insert_request(make_request("old", at=since - timedelta(seconds=1)))
        tx.insert_request(make_request("no-location", lon=None, lat=None))
        east = tx.insert_request(make_request("east", lon=offset_m(0, 45)[0], lat=offset_m(0, 45)[1]))
    with store.transaction() as tx:
        found = tx.open_requests_near("pothole", HANOI[0], HANOI[1], 50.0, since)
    assert [r.id for r in found] == [near, resolved, east]


def test_request_events_in_order(store):
    with store.transaction() as tx:
        request_id = tx.insert_request(make_request("t"))
        tx.add_request_event(RequestEvent(request_id, Status.RECEIVED, T0, "citizen"))
        tx.add_request_event(RequestEvent(request_id, Status.ACKNOWLEDGED, T0 + timedelta(minutes=5), "op",
                                          "đã nhận"))
        tx.add_request_event(RequestEvent(request_id, Status.ASSIGNED, T0 + timedelta(minutes=5), "op", "crew"))
    with store.transaction() as tx:
        events = tx.request_events(request_id)
        assert tx.request_events(request_id + 1000) == []
    assert [e.status for e in events] == [Status.RECEIVED, Status.ACKNOWLEDGED, Status.ASSIGNED]
    assert events[1] == RequestEvent(request_id, Status.ACKNOWLEDGED, T0 + timedelta(minutes=5), "op", "đã nhận")
    assert_aware(*(e.at for e in events))


# -- entities ----------------------------------------------------------------------------------------------
def test_entities_put_get_replace_delete(store):
    first = make_entity(1, owner="sensor-1")
    with store.transaction() as tx:
        tx.put_entities([first, make_entity(2, location=None, location_attr=None)])
    with store.transaction() as tx:
        got = tx.get_entities([first.id, make_entity(2).id, "urn:ngsi-ld:X:missing"])
    assert set(got) == {first.id, make_entity(2).id}
    assert got[first.id] == first
    assert got[make_entity(2).id].location is None and got[make_entity(2).id].location_attr is None
    assert_aware(got[first.id].created_at, got[first.id].modified_at)

    changed = replace(first, attrs={LEVEL: {"type": "Property", "value": {"nested": [1, "hai", None, True]}}},
                      modified_at=T0 + timedelta(minutes=1), location=(106.0, 10.8))
    with store.transaction() as tx:
        tx.put_entities([replace(changed, owner="ignored"), changed])  # same id twice: the last wins
    with store.transaction() as tx:
        assert tx.get_entities([first.id]) == {first.id: changed}
        assert tx.delete_entity(first.id) is True
        assert tx.delete_entity(first.id) is False
        assert tx.get_entities([first.id]) == {}
        tx.put_entities([])
        assert tx.get_entities([]) == {}


def test_query_entities_by_ids_types_paging(store):
    with store.transaction() as tx:
        tx.put_entities([make_entity(i, type=TYPE if i < 5 else OTHER_TYPE) for i in range(8)])
    ids = [make_entity(i).id for i in range(8)]
    with store.transaction() as tx:
        assert [e.id for e in tx.query_entities(EntityQuery(limit=100))] == ids
        assert [e.id for e in tx.query_entities(EntityQuery(types=(OTHER_TYPE,)))] == ids[5:]
        assert [e.id for e in tx.query_entities(EntityQuery(types=(TYPE, OTHER_TYPE), limit=3, offset=4))] \
            == ids[4:7]
        by_ids = EntityQuery(ids=(ids[6], ids[1], "urn:ngsi-ld:X:missing"), types=(OTHER_TYPE,))
        assert [e.id for e in tx.query_entities(by_ids)] == [ids[6]]
        assert tx.count_entities(EntityQuery(types=(TYPE,), limit=1)) == 5
        assert tx.count_entities(EntityQuery()) == 8
        assert tx.count_entities(by_ids) == 1


def test_query_entities_near(store):
    spots = {0: offset_m(0), 1: offset_m(90), 2: offset_m(-110), 3: offset_m(0, 99), 4: offset_m(0, -101),
             5: offset_m(5000)}
    with store.transaction() as tx:
        tx.put_entities([make_entity(i, location=spot) for i, spot in spots.items()]
                        + [make_entity(9, location=None, location_attr=None)])
    near = Near(HANOI[0], HANOI[1], 100.0)
    with store.transaction() as tx:
        found = [e.id for e in tx.query_entities(EntityQuery(near=near, limit=100))]
        assert found == [make_entity(i).id for i in (0, 1, 3)]
        assert tx.count_entities(EntityQuery(near=near)) == 3
        assert [e.id for e in tx.query_entities(EntityQuery(near=near, limit=1, offset=1))] == [make_entity(1).id]
        assert tx.query_entities(EntityQuery(near=near, types=(OTHER_TYPE,))) == []
        wide = EntityQuery(near=Near(HANOI[0], HANOI[1], 6000.0), ids=(make_entity(5).id, make_entity(9).id))
        assert [e.id for e in tx.query_entities(wide)] == [make_entity(5).id]


def test_near_across_the_antimeridian(store):
    with store.transaction() as tx:
        tx.put_entities([make_entity(1, location=(179.9995, 0.0)), make_entity(2, location=(-179.9995, 0.0)),
                         make_entity(3, location=(179.99, 0.0))])
    with store.transaction() as tx:
        found = tx.query_entities(EntityQuery(near=Near(180.0, 0.0, 100.0)))
    assert [e.id for e in found] == [make_entity(1).id, make_entity(2).id]


def test_batches_beyond_one_thousand_ids(store):
    many = [make_entity(i) for i in range(2300)]
    with store.transaction() as tx:
        tx.put_entities(many)
        tx.insert_alert(make_alert(many[2200].id))
        tx.insert_alert(make_alert(many[5].id))
    ids = [e.id for e in many] + [f"urn:ngsi-ld:X:missing{i}" for i in range(100)]
    with store.transaction() as tx:
        assert len(tx.get_entities(ids)) == 2300
        page = tx.query_entities(EntityQuery(ids=tuple(ids), limit=10, offset=1500))
        assert [e.id for e in page] == [e.id for e in many[1500:1510]]
        assert tx.count_entities(EntityQuery(ids=tuple(ids))) == 2300
        assert {a.entity_id for a in tx.active_alerts_for(ids)} == {many[2200].id, many[5].id}


def test_find_requests_by_more_ids_than_one_in_list(store):
    with store.transaction() as tx:
        ids = [tx.insert_request(make_request(f"t{i}", at=T0 + timedelta(seconds=i))) for i in range(1100)]
    wanted = tuple(ids[::2]) + (10_000_000,)
    with store.transaction() as tx:
        page = tx.find_requests(RequestQuery(ids=wanted, limit=5, offset=100))
        everything = tx.find_requests(RequestQuery(ids=wanted, limit=10_000))
    assert [r.id for r in page] == sorted(ids[::2], reverse=True)[100:105]
    assert len(everything) == 550


def test_observations_idempotent_and_filtered(store):
    entity_id = make_entity(1).id
    batch = [Observation(entity_id, LEVEL, T0 + timedelta(minutes=i), 1.0 + i) for i in range(5)]
    batch.append(Observation(entity_id, "https://x/temp", T0, {"v": [1, 2]}))
    with store.transaction() as tx:
        tx.add_observations(batch)
    with store.transaction() as tx:
        # A device retrying: same instants (written in another zone), new values ignored.
        tx.add_observations([replace(o, observed_at=o.observed_at.astimezone(UTC), value=-1.0) for o in batch]
                            + [batch[0], batch[0]])
        tx.add_observations([])
    with store.transaction() as tx:
        level = tx.observations(entity_id, LEVEL)
        assert [o.value for o in level] == [1.0, 2.0, 3.0, 4.0, 5.0]
        assert_aware(*(o.observed_at for o in level))
        assert level[0] == batch[0]
        assert len(tx.observations(entity_id)) == 6
        assert [o.value for o in tx.observations(entity_id, LEVEL, since=T0 + timedelta(minutes=1),
                                                 until=T0 + timedelta(minutes=3))] == [2.0, 3.0, 4.0]
        assert [o.value for o in tx.observations(entity_id, LEVEL, limit=2)] == [1.0, 2.0]
        assert tx.observations(entity_id, "https://x/temp")[0].value == {"v": [1, 2]}
        assert tx.observations("urn:ngsi-ld:X:none") == []


def test_stale_entities_and_freshness(store):
    with store.transaction() as tx:
        tx.put_entities([make_entity(1, modified_at=T0), make_entity(2, modified_at=T0 + timedelta(hours=1)),
                         make_entity(3, type=OTHER_TYPE, modified_at=T0 + timedelta(hours=2))])
    with store.transaction() as tx:
        assert [e.id for e in tx.stale_entities(TYPE, T0 + timedelta(minutes=30))] == [make_entity(1).id]
        assert tx.stale_entities(TYPE, T0) == []
        fresh = sorted(tx.freshness())
    assert fresh == [(TYPE, 2, T0, T0 + timedelta(hours=1)),
                     (OTHER_TYPE, 1, T0 + timedelta(hours=2), T0 + timedelta(hours=2))]
    for _, _, oldest, newest in fresh:
        assert_aware(oldest, newest)


# -- alerts ------------------------------------------------------------------------------------------------
def test_alerts_lifecycle(store):
    with store.transaction() as tx:
        first = tx.insert_alert(make_alert("urn:a", at=T0))
        second = tx.insert_alert(make_alert("urn:b", at=T0 + timedelta(minutes=1), value={"count": 3}))
        third = tx.insert_alert(make_alert("urn:a", at=T0 + timedelta(minutes=2), kind="rate", value=None))
    assert len({first, second, third}) == 3
    with store.transaction() as tx:
        got = tx.get_alert(first)
        assert got == make_alert("urn:a", at=T0, id=first)
        assert tx.get_alert(second).value == {"count": 3}
        assert tx.get_alert(10_000) is None
        tx.update_alert(replace(got, status=AlertStatus.CLEARED, cleared_at=T0 + timedelta(hours=1), actor="op"))
    with store.transaction() as tx:
        cleared = tx.get_alert(first)
        assert (cleared.status, cleared.cleared_at, cleared.actor) == (AlertStatus.CLEARED,
                                                                       T0 + timedelta(hours=1), "op")
        assert sorted(a.id for a in tx.active_alerts_for(["urn:a", "urn:b"])) == sorted([second, third])
        assert tx.active_alerts_for([]) == []
        assert [a.id for a in tx.find_alerts()] == [third, second, first]
        assert [a.id for a in tx.find_alerts(limit=1)] == [third]
        assert [a.id for a in tx.find_alerts([AlertStatus.CLEARED])] == [first]
        assert [a.id for a in tx.find_alerts([AlertStatus.RAISED, AlertStatus.ACKNOWLEDGED])] == [third, second]


# -- subscriptions and keys --------------------------------------------------------------------------------
def test_subscriptions(store):
    sub = Subscription(id="urn:ngsi-ld:Subscription:1", entity_types=(TYPE,), endpoint="http://127.0.0.1:9/n",
                       watched_attrs=(LEVEL,), q=f"{LEVEL}>1.0",
                       context=["https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld", {"x": "urn:x"}],
                       throttling_s=5.0, created_at=T0)
    with store.transaction() as tx:
        tx.put_subscription(sub)
        tx.put_subscription(replace(sub, id="urn:ngsi-ld:Subscription:0", active=False))
    with store.transaction() as tx:
        assert tx.get_subscription(sub.id) == sub
        assert [s.id for s in tx.subscriptions()] == ["urn:ngsi-ld:Subscription:0", sub.id]
        assert tx.get_subscription("urn:none") is None
        tx.put_subscription(replace(sub, times_sent=3, last_notification=T0 + timedelta(seconds=9),
                                    last_failure=T0.astimezone(UTC)))
    with store.transaction() as tx:
        got = tx.get_subscription(sub.id)
        assert (got.times_sent, got.last_notification, got.last_failure) == (3, T0 + timedelta(seconds=9), T0)
        assert_aware(got.created_at, got.last_notification, got.last_failure)
        assert tx.delete_subscription(sub.id) is True
        assert tx.delete_subscription(sub.id) is False
        assert [s.id for s in tx.subscriptions()] == ["urn:ngsi-ld:Subscription:0"]


def test_api_keys(store):
    device = ApiKey(digest="a" * 64, role=Role.DEVICE, label="gauge 7", device_id="gauge-7",
                    entity_type="WaterQualityObserved", rate_per_s=20.0, created_at=T0)
    admin = ApiKey(digest="b" * 64, role=Role.ADMIN, created_at=T0 + timedelta(seconds=1))
    undated = ApiKey(digest="0" * 64, role=Role.CITIZEN)
    with store.transaction() as tx:
        tx.put_key(undated)
        tx.put_key(admin)
        tx.put_key(device)
    with store.transaction() as tx:
        assert tx.get_key(device.digest) == device
        assert tx.get_key(undated.digest) == undated
        assert tx.get_key("c" * 64) is None
        assert [k.digest for k in tx.keys()] == [device.digest, admin.digest, undated.digest]  # by creation
        tx.put_key(replace(device, revoked=True))
    with store.transaction() as tx:
        assert tx.get_key(device.digest).revoked is True
        assert len(tx.keys()) == 3


# -- what the SQL stores add -------------------------------------------------------------------------------
def test_rollback_on_exception(store):
    with store.transaction() as tx:
        kept = tx.insert_request(make_request("kept"))
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as tx:
            tx.insert_request(make_request("lost"))
            tx.put_entities([make_entity(1)])
            tx.add_observations([Observation(make_entity(1).id, LEVEL, T0, 1.0)])
            tx.update_request(replace(make_request("kept", id=kept), status=Status.CLOSED))
            tx.put_key(ApiKey(digest="d" * 64, role=Role.ADMIN))
            raise RuntimeError("boom")
    with store.transaction() as tx:
        assert tx.request_by_token("lost") is None
        assert tx.get_request(kept).status == Status.RECEIVED
        assert tx.get_entities([make_entity(1).id]) == {}
        assert tx.observations(make_entity(1).id) == []
        assert tx.keys() == []


def test_committed_when_the_block_returns(sql_url):
    """Another store (another process, say) sees the write as soon as the block has exited."""
    writer, reader = open_store(sql_url), open_store(sql_url)
    try:
        with writer.transaction() as tx:
            tx.put_entities([make_entity(1)])
        with reader.transaction() as tx:
            assert list(tx.get_entities([make_entity(1).id])) == [make_entity(1).id]
    finally:
        writer.close()
        reader.close()


def test_naive_datetimes_are_refused(sql_store):
    with pytest.raises(Exception, match="timezone-aware"):
        with sql_store.transaction() as tx:
            tx.insert_request(make_request("naive", at=datetime(2025, 3, 1, 8, 0)))


def test_nul_characters_are_bad_input_not_a_crash(sql_store):
    """PostgreSQL refuses NUL in text and JSONB; the store says so as Invalid (a 400), and keeps nothing."""
    from citytwin.ioc.core.errors import Invalid

    for write in (lambda tx: tx.insert_request(make_request("nul", description="a\x00b")),
                  lambda tx: tx.put_entities([make_entity(1, attrs={LEVEL: {"type": "Property", "value": "\x00"}})]),
                  lambda tx: tx.put_entities([make_entity(1, attrs={"urn:x\x00": {"type": "Property"}})])):
        try:
            with sql_store.transaction() as tx:
                tx.put_key(ApiKey(digest="e" * 64, role=Role.ADMIN))
                write(tx)
        except Invalid as error:
            assert sql_store.dialect == "postgresql" and "NUL" in error.message
            with sql_store.transaction() as tx:
                assert tx.keys() == []
        else:
            assert sql_store.dialect == "sqlite"


def count_statements(store: SqlStore) -> list[str]:
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: seen.append(args[2]))
    return seen


def test_batches_issue_a_bounded_number_of_statements(sql_store):
    many = [make_entity(i) for i in range(2500)]
    readings = [Observation(e.id, LEVEL, T0, 1.0) for e in many]
    seen = count_statements(sql_store)
    with sql_store.transaction() as tx:
        tx.put_entities(many)
        tx.add_observations(readings)
        assert len(tx.get_entities(e.id for e in many)) == 2500
    # BEGIN and the three chunks of ids, plus a few insert batches; one per row would be 5000+.
    assert len(seen) <= 20, len(seen)


def test_sqlite_writers_in_threads_never_see_database_is_locked(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'ioc.sqlite3'}")
    errors: list[BaseException] = []
    threads_n, per_thread = 8, 25

    def work(worker: int) -> None:
        try:
            for i in range(per_thread):
                # Read first, then write: the pattern that fails with 'database is locked' when a deferred
                # SQLite transaction is upgraded to a write under contention.
                with store.transaction() as tx:
                    tx.count_requests()
                    tx.insert_request(make_request(f"w{worker}-{i}", client_ref=f"w{worker}-{i}"))
                    tx.add_observations([Observation(f"urn:e{worker}", LEVEL, T0 + timedelta(seconds=i), i)])
                with store.transaction(readonly=True) as tx:
                    assert tx.request_by_client_ref(f"w{worker}-{i}") is not None
        except BaseException as error:  # collected: an exception in a thread would pass silently
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert errors == []
        with store.transaction() as tx:
            assert tx.count_requests() == threads_n * per_thread
            assert len(tx.observations("urn:e3")) == per_thread
    finally:
        store.close()


def test_readonly_transaction_refuses_writes(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'ioc.sqlite3'}")
    try:
        with pytest.raises(RuntimeError, match="read-only"):
            with store.transaction(readonly=True) as tx:
                tx.put_entities([make_entity(1)])
    finally:
        store.close()


def test_sqlite_is_in_wal_mode(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'ioc.sqlite3'}")
    try:
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 1000
    finally:
        store.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@pytest.fixture(scope="module")
def sqlite_store(tmp_path_factory):
    store = open_store(f"sqlite:///{tmp_path_factory.mktemp('hyp') / 'ioc.sqlite3'}")
    yield store
    store.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values, when=st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1),
                                            timezones=st.sampled_from([UTC, ICT, timezone(timedelta(hours=-5))])))
def test_json_values_and_instants_round_trip(sqlite_store, value, when):
    import uuid

    entity = make_entity(1, id=f"urn:ngsi-ld:X:{uuid.uuid4().hex}", attrs={LEVEL: {"type": "Property",
                                                                                "value": value}}, modified_at=when)
    with sqlite_store.transaction() as tx:
        tx.put_entities([entity])
        tx.add_observations([Observation(entity.id, LEVEL, when, value)])
    with sqlite_store.transaction() as tx:
        got = tx.get_entities([entity.id])[entity.id]
        history = tx.observations(entity.id, LEVEL, since=when, until=when)
    assert got.attrs == entity.attrs and got.modified_at == when
    assert [(o.observed_at, o.value) for o in history] == [(when, value)]


# -- URLs and migrations -----------------------------------------------------------------------------------
def test_urls():
    assert normalise_url("postgres://u@h/db").drivername == "postgresql+psycopg"
    assert normalise_url("postgresql://u@h/db?options=-csearch_path%3Dt_1").query == {
        "options": "-csearch_path=t_1"}
    assert normalise_url("sqlite:///x.db").drivername == "sqlite"
    with pytest.raises(ValueError, match="sqlite"):
        normalise_url("mysql://u@h/db")


def test_migrate_twice_is_a_no_op_and_reports_head(sql_url):
    assert current_revision(sql_url) is None
    assert migrate(sql_url) == head_revision() == "0001"
    store = open_store(sql_url)
    try:
        with store.transaction() as tx:
            tx.put_entities([make_entity(1)])
        assert migrate(sql_url) == "0001"
        assert current_revision(sql_url) == head_revision()
        with store.transaction() as tx:
            assert list(tx.get_entities([make_entity(1).id])) == [make_entity(1).id]
    finally:
        store.close()


def test_migrated_schema_matches_the_metadata(sql_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    migrate(sql_url)
    engine = make_engine(sql_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), metadata)
    finally:
        engine.dispose()
    assert differences == []


def test_postgresql_tables_and_version_land_in_the_url_schema(pg_schema_url):
    schema = pg_schema_url.rsplit("%3D", 1)[1]
    migrate(pg_schema_url)
    engine = make_engine(pg_schema_url.split("?")[0])
    try:
        with engine.connect() as connection:
            tables = set(connection.execute(text(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = :s"), {"s": schema}).scalars())
    finally:
        engine.dispose()
    assert {"alembic_version", "requests", "entities", "observations", "alerts"} <= tables


def test_an_old_database_is_upgraded(sql_url, tmp_path):
    """A database at an older revision, with data in it, moves to a newer head without losing the data:
    simulated by a copy of the migrations with one more revision, and by going down to base and up."""
    engine = make_engine(sql_url)
    try:
        upgrade(engine, "0001")
        downgrade(engine, "base")
        assert revision_of(engine) is None
        assert "requests" not in inspect(engine).get_table_names()
        upgrade(engine)
        store = SqlStore(engine)
        with store.transaction() as tx:
            request_id = tx.insert_request(make_request("old"))

        newer = tmp_path / "migrations"
        shutil.copytree(MIGRATIONS, newer, ignore=shutil.ignore_patterns("__pycache__"))
        (newer / "versions" / "0002_test.py").write_text(
            'import sqlalchemy as sa\nfrom alembic import op\n'
            'revision = "0002"\ndown_revision = "0001"\nbranch_labels = None\ndepends_on = None\n\n'
            'def upgrade():\n    op.add_column("requests", sa.Column("priority", sa.Integer, server_default="3"))\n\n'
            'def downgrade():\n    with op.batch_alter_table("requests") as batch:\n'
            '        batch.drop_column("priority")\n')
        assert head_revision(newer) == "0002"
        upgrade(engine, script_location=newer)
        assert revision_of(engine) == "0002"
        with engine.connect() as connection:
            assert connection.execute(text("SELECT token, priority FROM requests")).all() == [("old", 3)]
        with store.transaction() as tx:  # the store reads its columns by name: an added one is harmless
            assert tx.get_request(request_id).token == "old"
    finally:
        engine.dispose()


def test_open_store_upgrades_a_fresh_database(sql_url):
    store = open_store(sql_url)
    try:
        assert current_revision(sql_url) == head_revision()
        assert {t.name for t in metadata.sorted_tables} <= set(inspect(store.engine).get_table_names())
    finally:
        store.close()


def test_memory_sqlite_url_works():
    store = open_store("sqlite://")
    try:
        with store.transaction() as tx:
            tx.put_entities([make_entity(1)])
        with store.transaction(readonly=True) as tx:
            assert len(tx.get_entities([make_entity(1).id])) == 1
    finally:
        store.close()
