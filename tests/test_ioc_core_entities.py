"""The IOC core's entities: validation, merge and replace, history, ownership, q, geo queries, rollback."""

from __future__ import annotations

import operator
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citytwin.ioc.core import (
    IOC,
    Conflict,
    EntityQuery,
    Forbidden,
    Invalid,
    MemoryStore,
    Near,
    NotFound,
)
from citytwin.ioc.core.entities import And, Compare, Or, format_q, matches, parse_q, to_document
from citytwin.ioc.core.ldcontext import DISPLAY, NGSI_LD

T0 = datetime(2024, 10, 14, 7, 30, tzinfo=timezone.utc)
X = DISPLAY.expand
AQ = X("AirQualityObserved")
PM25, NO2, NAME = X("pm25"), X("no2"), X("name")
LOCATION = NGSI_LD + "location"


def make_ioc() -> IOC:
    return IOC(MemoryStore(), rules=())


def prop(value, at: str | None = None) -> dict:
    attr = {"type": "Property", "value": value}
    if at is not None:
        attr["observedAt"] = at
    return attr


def point(lon: float, lat: float) -> dict:
    return {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [lon, lat]}}


def aq(n: int, **attrs) -> dict:
    return {"id": f"urn:ngsi-ld:AirQualityObserved:aq{n}", "type": AQ, **attrs}


def test_upsert_creates_then_merges_and_reports_what_changed():
    ioc = make_ioc()
    first = ioc.upsert([aq(1, **{PM25: prop(20), NAME: prop("Hải Châu"), LOCATION: point(108.2, 16.05)})], T0)
    assert first.created == ["urn:ngsi-ld:AirQualityObserved:aq1"] and first.updated == []
    [(entity, changed)] = first.changed
    assert set(changed) == {PM25, NAME, LOCATION}
    assert entity.location == (108.2, 16.05)
    later = T0 + timedelta(minutes=5)
    second = ioc.upsert([aq(1, **{PM25: prop(25), NO2: prop(30)})], later)
    assert second.created == [] and second.updated == ["urn:ngsi-ld:AirQualityObserved:aq1"]
    [(entity, changed)] = second.changed
    assert set(changed) == {PM25, NO2}
    stored = ioc.get_entity(entity.id)
    assert stored.attrs[PM25]["value"] == 25 and stored.attrs[NAME]["value"] == "Hải Châu"
    assert stored.location == (108.2, 16.05)  # a merge keeps what the update does not mention
    assert (stored.created_at, stored.modified_at) == (T0, later)
    # The same state again changes nothing, but the write still counts as a sign of life.
    third = ioc.upsert([aq(1, **{PM25: prop(25)})], later + timedelta(minutes=1))
    assert third.changed == [] and third.updated == [entity.id]
    assert ioc.get_entity(entity.id).modified_at == later + timedelta(minutes=1)


def test_upsert_replace_drops_attributes_not_sent():
    ioc = make_ioc()
    ioc.upsert([aq(1, **{PM25: prop(20), NAME: prop("a"), LOCATION: point(108.2, 16.05)})], T0)
    result = ioc.upsert([aq(1, **{NO2: prop(7)})], T0, replace=True)
    [(entity, changed)] = result.changed
    assert set(changed) == {PM25, NAME, NO2, LOCATION}
    stored = ioc.get_entity(entity.id)
    assert set(stored.attrs) == {NO2} and stored.location is None


def test_history_is_idempotent_for_the_same_observed_at():
    ioc = make_ioc()
    doc = aq(1, **{PM25: prop(20, "2024-10-14T07:00:00Z"), NO2: prop(9, "2024-10-14T07:00:00Z")})
    ioc.upsert([doc], T0)
    ioc.upsert([doc], T0 + timedelta(minutes=1))  # a device retry
    assert len(ioc.entity_history(doc["id"])) == 2
    ioc.upsert([aq(1, **{PM25: prop(22, "2024-10-14T07:10:00Z")})], T0 + timedelta(minutes=2))
    ioc.upsert([aq(1, **{PM25: prop(21, "2024-10-14T07:05:00+00:00")})], T0 + timedelta(minutes=3))
    rows = ioc.entity_history(doc["id"], PM25)
    assert [row.value for row in rows] == [20, 21, 22]  # oldest first, whatever the arrival order
    assert [row.value for row in ioc.entity_history(doc["id"], PM25, since=T0 - timedelta(minutes=27))] == [21, 22]
    assert [row.value for row in ioc.entity_history(doc["id"], PM25, until=T0 - timedelta(minutes=25))] == [20, 21]
    assert len(ioc.entity_history(doc["id"], limit=1)) == 1
    # Without observedAt the write time stands for it.
    ioc.upsert([aq(1, **{NO2: prop(11)})], T0 + timedelta(hours=1))
    assert ioc.entity_history(doc["id"], NO2)[-1].observed_at == T0 + timedelta(hours=1)
    with pytest.raises(NotFound):
        ioc.entity_history("urn:ngsi-ld:AirQualityObserved:none")


def test_a_device_writes_only_its_own_entities_and_a_refused_batch_writes_nothing():
    ioc = make_ioc()
    mine = ioc.upsert([aq(1, **{PM25: prop(20)})], T0, owner="dev-1")
    assert ioc.get_entity(mine.created[0]).owner == "dev-1"
    ioc.upsert([aq(1, **{PM25: prop(21)})], T0, owner="dev-1")
    with pytest.raises(Forbidden):
        ioc.upsert([aq(2, **{PM25: prop(5)}), aq(1, **{PM25: prop(99)})], T0, owner="dev-2")
    assert ioc.get_entity(mine.created[0]).attrs[PM25]["value"] == 21
    with pytest.raises(NotFound):
        ioc.get_entity("urn:ngsi-ld:AirQualityObserved:aq2")
    with pytest.raises(Forbidden):
        ioc.update_attrs(mine.created[0], {PM25: prop(1)}, T0, owner="dev-2")
    with pytest.raises(Forbidden):
        ioc.delete_entity(mine.created[0], owner="dev-2")
    # An operator (no owner) may correct a device's entity; the device keeps it.
    ioc.upsert([aq(1, **{NAME: prop("fixed")})], T0)
    assert ioc.get_entity(mine.created[0]).owner == "dev-1"
    # An entity created by an operator is not a device's to write.
    ioc.upsert([aq(3, **{PM25: prop(1)})], T0)
    with pytest.raises(Forbidden):
        ioc.upsert([aq(3, **{PM25: prop(2)})], T0, owner="dev-1")
    ioc.delete_entity(mine.created[0], owner="dev-1")
    with pytest.raises(NotFound):
        ioc.delete_entity(mine.created[0])


def test_create_update_get_delete():
    ioc = make_ioc()
    created = ioc.create_entity(aq(1, **{PM25: prop(20)}), T0)
    assert created.created == [aq(1)["id"]]
    with pytest.raises(Conflict):
        ioc.create_entity(aq(1, **{PM25: prop(20)}), T0)
    updated = ioc.update_attrs(aq(1)["id"], {NO2: prop(3)}, T0 + timedelta(seconds=1))
    assert updated.changed[0][1] == (NO2,)
    assert set(ioc.get_entity(aq(1)["id"]).attrs) == {PM25, NO2}
    with pytest.raises(NotFound):
        ioc.update_attrs(aq(9)["id"], {NO2: prop(3)}, T0)
    with pytest.raises(Invalid):
        ioc.update_attrs(aq(1)["id"], {NO2: 3}, T0)
    with pytest.raises(Conflict):  # an entity keeps its type
        ioc.upsert([{"id": aq(1)["id"], "type": X("Vehicle"), NO2: prop(1)}], T0)
    ioc.delete_entity(aq(1)["id"])
    with pytest.raises(NotFound):
        ioc.get_entity(aq(1)["id"])


def test_to_document_gives_back_what_was_posted():
    ioc = make_ioc()
    doc = aq(1, **{PM25: prop(20, "2024-10-14T07:00:00Z"), LOCATION: point(108.2, 16.05),
                   X("refDevice"): {"type": "Relationship", "object": "urn:ngsi-ld:Device:d1"}})
    ioc.upsert([doc], T0)
    entity = ioc.get_entity(doc["id"])
    assert to_document(entity) == doc
    with_sys = to_document(entity, sys_attrs=True)
    assert with_sys["createdAt"] == with_sys["modifiedAt"] == "2024-10-14T07:30:00Z"


@pytest.mark.parametrize("document,field", [
    ({"type": AQ}, "id"),
    ({"id": "", "type": AQ}, "id"),
    ({"id": "not a uri", "type": AQ}, "id"),
    ({"id": "aq1", "type": AQ}, "id"),
    ({"id": "urn:ngsi-ld:X:1"}, "type"),
    ({"id": "urn:ngsi-ld:X:1", "type": ["A", "B"]}, "type"),
    ({"id": "urn:ngsi-ld:X:1", "type": AQ, PM25: 20}, PM25),
    ({"id": "urn:ngsi-ld:X:1", "type": AQ, PM25: {"value": 20}}, PM25),
    ({"id": "urn:ngsi-ld:X:1", "type": AQ, PM25: {"type": "Thing", "value": 20}}, PM25),
    ({"id": "urn:ngsi-ld:X:1", "type": AQ, PM25: {"type": "Property"}}, PM25),
    ({"id": "urn:ngsi-ld:X:1", "type": AQ, PM25: {"type": "Property", "value": 1, "observedAt": "yesterday"}},
     PM25),
    ({"id": "urn:ngsi-ld:X:1", "type": AQ, NAME: {"type": "Relationship"}}, NAME),
    ({"id": "urn:ngsi-ld:X:1", "type": AQ, LOCATION: point(200.0, 16.0)}, "location"),
    ({"id": "urn:ngsi-ld:X:1", "type": AQ, LOCATION: point(108.0, -91.0)}, "location"),
    ({"id": "urn:ngsi-ld:X:1", "type": AQ, LOCATION: {"type": "GeoProperty", "value": "16.0,108.0"}}, "location"),
    ({"id": "urn:ngsi-ld:X:1", "type": AQ,
      LOCATION: {"type": "GeoProperty", "value": {"type": "Point", "coordinates": [108.0]}}}, "location"),
    ({"id": "urn:ngsi-ld:X:1", "type": AQ,
      LOCATION: {"type": "GeoProperty", "value": {"type": "Circle", "coordinates": [1, 2]}}}, "location"),
    # JSON objects where a type name belongs (unhashable: must be a 400, not a crash)
    ({"id": "urn:ngsi-ld:X:1", "type": AQ, PM25: {"type": {}, "value": 1}}, PM25),
    ({"id": "urn:ngsi-ld:X:1", "type": AQ,
      LOCATION: {"type": "GeoProperty", "value": {"type": {}, "coordinates": [1, 2]}}}, "location"),
    ("urn:ngsi-ld:X:1", "entity"),
])
def test_invalid_documents_name_the_field_and_write_nothing(document, field):
    ioc = make_ioc()
    good = aq(7, **{PM25: prop(1)})
    with pytest.raises(Invalid) as error:
        ioc.upsert([good, document], T0)
    assert error.value.field == field and error.value.message
    assert ioc.query_entities(EntityQuery())[1] == 0


def test_line_locations_are_indexed_by_their_centre():
    ioc = make_ioc()
    line = {"type": "GeoProperty", "value": {"type": "LineString", "coordinates": [[108.20, 16.04], [108.22, 16.06]]}}
    ioc.upsert([{"id": "urn:ngsi-ld:RoadSegment:r1", "type": X("RoadSegment"), LOCATION: line}], T0)
    entity = ioc.get_entity("urn:ngsi-ld:RoadSegment:r1")
    assert entity.location == pytest.approx((108.21, 16.05))
    assert entity.location_attr == line


def test_query_by_type_ids_paging_and_near():
    ioc = make_ioc()
    # Points 0, 100, 200 … 900 m north of a centre point.
    centre_lon, centre_lat = 108.2, 16.05
    docs = [aq(i, **{PM25: prop(i * 10), LOCATION: point(centre_lon, centre_lat + i * 100 / 111_195)})
            for i in range(10)]
    docs.append({"id": "urn:ngsi-ld:Vehicle:bus1", "type": X("Vehicle"), LOCATION: point(centre_lon, centre_lat)})
    ioc.upsert(docs, T0)
    page, total = ioc.query_entities(EntityQuery(types=(AQ,), limit=3, offset=2))
    assert total == 10 and [e.id for e in page] == sorted(d["id"] for d in docs[:10])[2:5]
    near, total = ioc.query_entities(EntityQuery(types=(AQ,), near=Near(centre_lon, centre_lat, 350.0), limit=100))
    assert total == 4 and {e.id for e in near} == {d["id"] for d in docs[:4]}
    both, total = ioc.query_entities(EntityQuery(near=Near(centre_lon, centre_lat, 50.0)))
    assert {e.id for e in both} == {docs[0]["id"], "urn:ngsi-ld:Vehicle:bus1"}
    by_id, total = ioc.query_entities(EntityQuery(ids=(docs[3]["id"], "urn:x:none")))
    assert [e.id for e in by_id] == [docs[3]["id"]] and total == 1
    found, total = ioc.query_entities(EntityQuery(types=(AQ,), limit=100), q=f"{PM25}>=50;{PM25}<80")
    assert total == 3 and {e.attrs[PM25]["value"] for e in found} == {50, 60, 70}
    found, total = ioc.query_entities(EntityQuery(types=(AQ,), limit=1), q=f"{PM25}==10|{PM25}==90")
    assert total == 2 and len(found) == 1
    with pytest.raises(Invalid) as error:
        ioc.query_entities(EntityQuery(), q=f"{PM25}>>3")
    assert error.value.field == "q"
    with pytest.raises(Invalid):
        ioc.query_entities(EntityQuery(near=Near(200.0, 0.0, 10.0)))
    with pytest.raises(Invalid):
        ioc.query_entities(EntityQuery(limit=-1))


# -- the q language --------------------------------------------------------------------------------------

def test_q_examples():
    assert parse_q('a==1') == Compare("a", "==", 1)
    assert parse_q(' a >= -2.5e1 ') == Compare("a", ">=", -25.0)
    assert parse_q('a=="x;y|z"') == Compare("a", "==", "x;y|z")
    assert parse_q(r'a=="say \"hi\""') == Compare("a", "==", 'say "hi"')
    assert parse_q('a==true;b!=false') == And((Compare("a", "==", True), Compare("b", "!=", False)))
    assert parse_q('a;b|c') == Or((And((Compare("a", None), Compare("b", None))), Compare("c", None)))
    assert parse_q('a;(b|c)') == And((Compare("a", None), Or((Compare("b", None), Compare("c", None)))))
    iri = "https://smartdatamodels.org/dataModel.Environment/pm25"
    assert parse_q(f"{iri}<50") == Compare(iri, "<", 50)


@pytest.mark.parametrize("text", ["", "   ", "a==", "==1", "a==b", "a==1;", "(a==1", "a==1)", "a===1", 'a=="x',
                                  "a==1 b==2", "a<>1", "a==1||b==2"])
def test_bad_q_is_invalid(text):
    with pytest.raises(Invalid) as error:
        parse_q(text)
    assert error.value.field == "q"


ATTRS = st.sampled_from(["a", "https://smartdatamodels.org/dataModel.Environment/pm25", "urn:x:y.z", "b_2"])
VALUES = st.one_of(st.integers(-10**9, 10**9), st.floats(allow_nan=False, allow_infinity=False),
                   st.text(max_size=12), st.booleans())
OPS = st.sampled_from(["==", "!=", ">", ">=", "<", "<="])
COMPARES = st.one_of(st.builds(Compare, ATTRS, OPS, VALUES), st.builds(Compare, ATTRS, st.none(), st.none()))
NODES = st.recursive(COMPARES, lambda inner: st.one_of(
    st.builds(And, st.lists(inner, min_size=2, max_size=3).map(tuple)),
    st.builds(Or, st.lists(inner, min_size=2, max_size=3).map(tuple))), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(NODES)
def test_q_round_trips_through_text(node):
    # Nested groups are written in parentheses, so the exact shape comes back.
    assert parse_q(format_q(node)) == node


PY_OPS = {"==": operator.eq, "!=": operator.ne, ">": operator.gt, ">=": operator.ge, "<": operator.lt,
          "<=": operator.le}


@settings(max_examples=300, deadline=None)
@given(actual=st.one_of(st.integers(-100, 100), st.floats(-100, 100), st.text(max_size=4)),
       expected=st.one_of(st.integers(-100, 100), st.floats(-100, 100), st.text(max_size=4)), op=OPS)
def test_q_evaluates_as_a_direct_comparison(actual, expected, op):
    from citytwin.ioc.core import Entity

    entity = Entity("urn:x:1", "T", {"v": {"type": "Property", "value": actual}}, T0, T0)
    node = parse_q(format_q(Compare("v", op, expected)))
    same_kind = isinstance(actual, str) == isinstance(expected, str)
    assert matches(node, entity) == (same_kind and PY_OPS[op](actual, expected))
    missing = Entity("urn:x:2", "T", {}, T0, T0)
    assert not matches(node, missing)


def test_q_on_booleans_lists_and_relationships():
    from citytwin.ioc.core import Entity

    entity = Entity("urn:x:1", "T", {
        "flag": {"type": "Property", "value": True},
        "tags": {"type": "Property", "value": ["a", "b"]},
        "rel": {"type": "Relationship", "object": "urn:ngsi-ld:Device:d1"},
        "n": {"type": "Property", "value": 1},
    }, T0, T0)
    assert matches(parse_q("flag==true"), entity) and not matches(parse_q("flag==false"), entity)
    assert not matches(parse_q("flag>false"), entity)
    assert not matches(parse_q("n==true"), entity)  # 1 is not true
    assert matches(parse_q('tags=="b"'), entity)
    assert matches(parse_q('rel=="urn:ngsi-ld:Device:d1"'), entity)
    assert matches(parse_q("rel"), entity) and not matches(parse_q("nothing"), entity)


# -- the store's transactions ----------------------------------------------------------------------------

def test_memory_store_rolls_back_a_failed_transaction():
    store = MemoryStore()
    ioc = IOC(store, rules=())
    ioc.upsert([aq(1, **{PM25: prop(1, "2024-10-14T07:00:00Z")})], T0)
    with pytest.raises(RuntimeError):
        with store.transaction() as tx:
            entity = tx.get_entities([aq(1)["id"]])[aq(1)["id"]]
            entity.attrs[PM25] = prop(2)
            tx.put_entities([entity])
            tx.delete_entity(aq(1)["id"])
            tx.add_observations([])
            raise RuntimeError("boom")
    assert ioc.get_entity(aq(1)["id"]).attrs[PM25]["value"] == 1
    assert len(ioc.query_entities(EntityQuery(types=(AQ,)))[0]) == 1


def test_memory_store_hands_out_copies():
    store = MemoryStore()
    ioc = IOC(store, rules=())
    ioc.upsert([aq(1, **{PM25: prop(1)})], T0)
    entity = ioc.get_entity(aq(1)["id"])
    entity.attrs.clear()
    assert PM25 in ioc.get_entity(aq(1)["id"]).attrs
