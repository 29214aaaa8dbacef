"""Observation batches and the fast IoT Agent JSON encoder: byte-equal to `to_iota_json`, exact round trips."""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citytwin.devices_sim import encoders as enc
from citytwin.devices_sim.batch import Batch, Clock, Encoder
from citytwin.devices_sim.encoders import AirQuality, BusPosition, CameraAlert, RainGauge, TrafficFlow, WaterLevel

ICT = timezone(timedelta(hours=7))
EPOCH = datetime(2024, 10, 14, 0, 0, tzinfo=ICT)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies -------------------------------------------------------------------------------------------

zones = st.integers(-14 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
epochs = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=zones)
virtual_s = st.floats(-1e6, 3e8, allow_nan=False)   # a little before the start to ~10 years after
device_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}\Z")


def value_strategy(spec: enc.Field):
    if spec.kind == "float":
        return st.floats(spec.lo, min(spec.hi, 1e300), allow_nan=False)
    if spec.kind == "count":
        return st.integers(0, 10**12)
    if spec.kind == "enum":
        return st.sampled_from(spec.choices)
    if spec.kind == "str":
        return st.text(min_size=int(spec.lo > 0), max_size=12)
    return virtual_s


@st.composite
def fleets(draw, kind):
    """(encoder, batch): a device table and a batch of readings of arbitrary valid values."""
    n_devices = draw(st.integers(1, 5))
    ids = draw(st.lists(device_ids, min_size=n_devices, max_size=n_devices, unique=True))
    moving = kind is BusPosition and draw(st.booleans())
    coordinate = st.floats(-180, 180, allow_nan=False)
    lon = [math.nan] * n_devices if moving else draw(st.lists(coordinate, min_size=n_devices, max_size=n_devices))
    lat = [math.nan] * n_devices if moving else \
        draw(st.lists(st.floats(-90, 90, allow_nan=False), min_size=n_devices, max_size=n_devices))
    encoder = Encoder(kind, ids, np.array(lon), np.array(lat), draw(epochs))
    n = draw(st.integers(0, 8))
    rows = st.lists(st.integers(0, n_devices - 1), min_size=n, max_size=n)
    shared = draw(st.booleans())  # one sampling instant for all rows, or skewed clocks
    observed = [draw(virtual_s)] * n if shared else draw(st.lists(virtual_s, min_size=n, max_size=n))
    values = {}
    for spec in kind.FIELDS:
        column = draw(st.lists(value_strategy(spec), min_size=n, max_size=n))
        values[spec.name] = np.array(column, dtype=object if spec.kind in ("str", "enum") else None)
    if kind is TrafficFlow:  # an interval ends after it starts
        widths = draw(st.lists(st.floats(0, 7200), min_size=n, max_size=n))
        values["date_observed_to"] = values["date_observed_from"] + np.array(widths)
    if moving:
        values["lon"] = np.array(draw(st.lists(coordinate, min_size=n, max_size=n)))
        values["lat"] = np.array(draw(st.lists(st.floats(-90, 90, allow_nan=False), min_size=n, max_size=n)))
    return encoder, Batch(kind, np.array(draw(rows), dtype=np.int64), np.array(observed, dtype=float), values)


def same(a, b) -> bool:
    """Exact equality, positions to the last bit."""
    return type(a) is type(b) and a == b and repr(a.lon) == repr(b.lon) and repr(a.lat) == repr(b.lat)


# -- the fast encoder equals the exact one -------------------------------------------------------------------

@pytest.mark.parametrize("kind", enc.KINDS, ids=lambda kind: kind.__name__)
@SETTINGS
@given(data=st.data())
def test_iota_equals_to_iota_json_and_round_trips(kind, data):
    encoder, batch = data.draw(fleets(kind))
    payloads = encoder.iota(batch)
    observations = encoder.observations(batch)
    assert len(payloads) == len(observations) == len(batch)
    for row, (payload, obs) in enumerate(zip(payloads, observations)):
        attrs, suffix = enc.to_iota_json(obs)
        assert payload == json.dumps(attrs).encode()  # byte for byte, so also as parsed JSON
        assert json.loads(payload) == attrs
        device = encoder.device_ids[batch.devices[row]]
        assert suffix == f"/{device}/attrs"
        back = enc.from_iota_json(json.loads(payload), device, kind.ENTITY_TYPE)
        assert same(back, obs)
        assert obs.observed_at == encoder.clock.moment(Clock.micros(batch.observed_t)[row])
    assert encoder.ngsi_ld(batch) == [enc.to_ngsi_ld(obs) for obs in observations]


@SETTINGS
@given(epoch=epochs, us=st.lists(st.integers(-10**12, 10**16), min_size=1, max_size=6))
def test_clock_formats_like_iso(epoch, us):
    clock = Clock(epoch)
    for u in us:
        assert clock.iso(u) == enc.iso(clock.moment(u))
        assert enc.parse_iso(clock.iso(u), "t") == clock.moment(u)
    seconds = np.array(us, dtype=float) / 1e6
    assert clock.iso_column(seconds) == [enc.iso(clock.moment(u)) for u in Clock.micros(seconds).tolist()]


def test_virtual_seconds_round_to_microseconds_once():
    clock = Clock(EPOCH)
    t = np.array([0.0000005, 0.0000015, 1.2345674999, 3600.25, -0.0000005])
    us = Clock.micros(t)
    assert us.tolist() == [0, 2, 1234567, 3600250000, 0]  # half to even, as NumPy's rint
    encoder = Encoder(RainGauge, ["rg-1"], np.array([108.2]), np.array([16.0]), EPOCH)
    batch = Batch(RainGauge, np.zeros(5, dtype=np.int64), t, {"precipitation": np.full(5, 1.5)})
    for payload, obs, u in zip(encoder.iota(batch), encoder.observations(batch), us.tolist()):
        assert obs.observed_at == EPOCH + timedelta(microseconds=u)
        assert json.loads(payload)["TimeInstant"] == clock.iso(u)


def test_strings_are_json_escaped():
    encoder = Encoder(CameraAlert, ["cam-1"], np.array([108.2]), np.array([16.0]), EPOCH)
    text = np.array(['say "hi"\\ \n tab\t % {x} ý Đà Nẵng \u2028', ""], dtype=object)
    batch = Batch(CameraAlert, np.array([0, 0]), np.array([10.0, 20.0]), {
        "category": np.array(["traffic", "weather"], dtype=object),
        "sub_category": np.array(["carAccident", "flood"], dtype=object),
        "severity": np.array(["high", "low"], dtype=object), "description": text,
        "date_issued": np.array([5.0, 15.0])})
    for payload, obs in zip(encoder.iota(batch), encoder.observations(batch)):
        assert payload == json.dumps(enc.to_iota_json(obs)[0]).encode()
    assert json.loads(encoder.iota(batch)[0])["description"] == text[0]


# -- batches --------------------------------------------------------------------------------------------------

def traffic_batch(n: int, t: float = 600.0) -> Batch:
    rng = np.random.default_rng(n)
    return Batch(TrafficFlow, np.arange(n), np.full(n, t), {
        "intensity": rng.poisson(40, n), "occupancy": rng.random(n), "average_vehicle_speed": rng.random(n) * 60,
        "date_observed_from": np.full(n, t - 300), "date_observed_to": np.full(n, t)},
        {"link": np.arange(n) * 2, "value": rng.random(n)})


def test_take_and_concat():
    batch = traffic_batch(6)
    part = batch.take(np.array([4, 1]))
    assert part.devices.tolist() == [4, 1] and part.meta["link"].tolist() == [8, 2]
    assert part.values["intensity"].tolist() == [batch.values["intensity"][4], batch.values["intensity"][1]]
    assert len(batch.take(batch.values["occupancy"] > 2)) == 0
    bare = Batch(TrafficFlow, [0], [600.0], {name: column[:1] for name, column in batch.values.items()})
    both = Batch.concat([batch, bare])
    assert len(both) == 7 and both.meta["link"][-1] == -1 and math.isnan(both.meta["value"][-1])
    assert both.values["intensity"].dtype == np.int64
    empty = Batch.empty(TrafficFlow, meta=("link", "event"))
    assert len(Batch.concat([empty, batch])) == 6
    with pytest.raises(ValueError, match="concat"):
        Batch.concat([])
    with pytest.raises(ValueError, match="concat"):
        Batch.concat([batch, Batch.empty(RainGauge)])


def test_bad_batches_rejected():
    batch = traffic_batch(3)
    with pytest.raises(ValueError, match="missing"):
        Batch(TrafficFlow, batch.devices, batch.observed_t, {"intensity": batch.values["intensity"]})
    with pytest.raises(ValueError, match="intensity"):
        Batch(TrafficFlow, batch.devices, batch.observed_t, {**batch.values, "intensity": np.array([1.5, 2, 3])})
    with pytest.raises(ValueError, match="occupancy"):
        Batch(TrafficFlow, batch.devices, batch.observed_t, {**batch.values, "occupancy": np.zeros(2)})
    with pytest.raises(ValueError, match="lon and lat"):
        Batch(BusPosition, [0], [1.0], {"speed": [1.0], "heading": [0.0], "route_id": ["R1"], "lon": [108.0]})
    counts = Batch(TrafficFlow, batch.devices, batch.observed_t, {**batch.values, "intensity": np.array([1.0, 2, 3])})
    assert counts.values["intensity"].dtype == np.int64


def test_encoder_rejects_what_would_not_encode():
    encoder = Encoder(TrafficFlow, ["d-0", "d-1", "d-2"], np.array([108.0, 108.1, math.nan]),
                      np.array([16.0, 16.1, 16.2]), EPOCH)
    good = traffic_batch(2)
    assert len(encoder.iota(good)) == 2
    for name, bad in (("occupancy", 1.5), ("occupancy", math.nan), ("average_vehicle_speed", math.inf),
                      ("intensity", -1)):
        values = {k: v.copy() for k, v in good.values.items()}
        values[name][1] = bad
        with pytest.raises(ValueError, match=name):
            encoder.iota(Batch(TrafficFlow, good.devices, good.observed_t, values))
    with pytest.raises(ValueError, match="date_observed_to"):
        encoder.iota(Batch(TrafficFlow, good.devices, good.observed_t,
                           {**good.values, "date_observed_to": good.values["date_observed_from"] - 1}))
    with pytest.raises(ValueError, match="position"):
        encoder.iota(traffic_batch(3))  # d-2 has no position
    with pytest.raises(ValueError, match="device table"):
        encoder.iota(traffic_batch(4))
    with pytest.raises(ValueError, match="encoder"):
        encoder.iota(Batch.empty(RainGauge))
    gauge = Encoder(WaterLevel, ["w-1"], np.array([108.0]), np.array([16.0]), EPOCH)
    with pytest.raises(ValueError, match="warning_state"):
        gauge.iota(Batch(WaterLevel, [0], [1.0], {"level_m": [0.2], "warning_level_m": [0.1],
                                                 "warning_state": np.array(["panic"], dtype=object)}))
    with pytest.raises(ValueError, match="device_ids"):
        Encoder(AirQuality, ["a/b"], np.array([108.0]), np.array([16.0]), EPOCH)
    with pytest.raises(ValueError, match="epoch"):
        Encoder(AirQuality, ["a"], np.array([108.0]), np.array([16.0]), datetime(2024, 1, 1))


def test_iota_speed():
    """Not a wall-clock assertion: prints µs per row for a 10,000-row TrafficFlow batch."""
    n = 10_000
    rng = np.random.default_rng(0)
    encoder = Encoder(TrafficFlow, [f"det-{k:05d}" for k in range(n)], 108.1 + rng.random(n) / 10,
                      16.0 + rng.random(n) / 10, EPOCH)
    batch = traffic_batch(n)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        payloads = encoder.iota(batch)
        best = min(best, time.perf_counter() - start)
    print(f"\niota: {best / n * 1e6:.2f} µs/row on {n} TrafficFlow rows")
    assert len(payloads) == n
