"""Device fault models: each fault does what it says, at the rate it says, and a reading always still encodes."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import numpy as np
import pytest

from citytwin.devices_sim.batch import Batch, Encoder
from citytwin.devices_sim.encoders import CameraAlert, TrafficFlow, WaterLevel
from citytwin.devices_sim.faults import LABELS, FaultEvent, FaultModel, measured_fields

DAY = 86_400.0
INTERVAL = 300.0
EPOCH = datetime(2024, 10, 14, tzinfo=timezone(timedelta(hours=7)))
DEFAULTS = dict(dropout=0.0, dropout_duration=1800.0, stuck=0.0, stuck_duration=7200.0, drift=0.0,
                drift_per_day=0.05, burst=0.0, burst_duration=600.0, burst_scale=0.5, duplicate=0.0, late=0.0,
                late_delay=300.0, clock_skew=0.0, battery=0.0, battery_life=5 * DAY, network_delay=1.0)


def faults(**over):
    """The scenario's FaultSpec when it exists; else a stand-in with the contract's fields and defaults."""
    try:
        from citytwin.twin.scenario.schema import FaultSpec
    except ImportError:
        return SimpleNamespace(**{**DEFAULTS, **over})
    return FaultSpec(**over)


ZERO = dict(network_delay=0.0)
TRAFFIC = measured_fields(TrafficFlow)


def readings(n: int, t: float, rng: np.random.Generator, devices=None) -> Batch:
    """What a detector fleet samples at t."""
    devices = np.arange(n) if devices is None else np.asarray(devices)
    m = len(devices)
    return Batch(TrafficFlow, devices, np.full(m, t), {
        "intensity": rng.poisson(60, m), "occupancy": rng.uniform(0.05, 0.9, m),
        "average_vehicle_speed": rng.uniform(5, 60, m),
        "date_observed_from": np.full(m, t - INTERVAL), "date_observed_to": np.full(m, t)},
        {"link": devices + 100, "delay": np.zeros(m)})


def run(spec, n: int, steps: int, seed: int = 0, data_seed: int = 99):
    """(model, [(sampled batch, delivery)]) over `steps` sampling instants."""
    model = FaultModel(spec, n, INTERVAL, np.random.default_rng(seed), TRAFFIC)
    data = np.random.default_rng(data_seed)
    out = []
    for k in range(1, steps + 1):
        t = k * INTERVAL
        batch = readings(n, t, data)
        out.append((batch, model.apply(batch, t)))
    return model, out


def test_contract_fields_exist():
    spec = faults()
    for name, default in DEFAULTS.items():
        assert getattr(spec, name) == pytest.approx(default), name
    assert LABELS[0] == ""
    assert FaultEvent(1.0, 2, "battery", math.nan).cause == "battery"


def test_no_faults_leave_the_batch_unchanged():
    model, out = run(faults(**ZERO), 50, 5)
    for batch, delivery in out:
        assert delivery.batch is batch
        assert (delivery.send_t == batch.observed_t).all() and (delivery.true_t == batch.observed_t).all()
        assert delivery.fault.tolist() == [""] * len(batch)
    assert model.drain_events() == []
    # the meta delay (cameras' analytics) and the network delay still apply
    model = FaultModel(faults(), 4, INTERVAL, np.random.default_rng(1), TRAFFIC)
    batch = readings(4, 600.0, np.random.default_rng(2))
    batch.meta["delay"] = np.array([0.0, 10.0, 20.0, 30.0])
    delivery = model.apply(batch, 600.0)
    assert delivery.batch is batch
    assert (delivery.send_t > 600.0 + batch.meta["delay"]).all()
    assert (delivery.send_t < 600.0 + batch.meta["delay"] + 30).all()


def test_dropout_one_sends_nothing():
    model, out = run(faults(dropout=1.0, **ZERO), 20, 10)
    assert sum(len(delivery.batch) for _, delivery in out) == 0
    events = model.drain_events()
    assert {e.cause for e in events} == {"dropout"} and all(e.duration_s > 0 for e in events)
    assert len(events) >= 20  # every device went offline at its first reading, and again after recovering


def test_dropout_share_matches_theory():
    """Each online reading starts an outage with chance p; readings within Exp(mean) after it are lost.
    Renewal: lost share = (1 + E[K]) / (1/p + E[K]), K = readings inside the outage, E[K] = q/(1-q)."""
    p, mean = 0.05, 1800.0
    n, steps = 400, 300
    _, out = run(faults(dropout=p, dropout_duration=mean, **ZERO), n, steps)
    sent = sum(len(delivery.batch) for _, delivery in out)
    q = math.exp(-INTERVAL / mean)
    k = q / (1 - q)
    expected = (1 + k) / (1 / p + k)
    assert 1 - sent / (n * steps) == pytest.approx(expected, abs=0.02)


def test_outages_recover():
    steps = 200
    model, out = run(faults(dropout=0.02, dropout_duration=900, **ZERO), 30, steps)
    events = [e for e in model.drain_events() if e.cause == "dropout"]
    assert len(events) > 50
    rows = [(device, t) for _, d in out for device, t in zip(d.batch.devices.tolist(), d.true_t.tolist())]
    for event in events:
        end = event.t + event.duration_s
        mine = [t for device, t in rows if device == event.device]
        assert not any(event.t <= t < end for t in mine)  # silent while offline
        if end + 10 * INTERVAL < steps * INTERVAL:
            assert any(end <= t < end + 10 * INTERVAL for t in mine)  # and back afterwards


def test_stuck_repeats_the_last_delivered_values():
    model, out = run(faults(stuck=0.05, stuck_duration=3 * INTERVAL, **ZERO), 40, 100)
    last: dict[int, tuple] = {}
    repeated = 0
    for batch, delivery in out:
        b = delivery.batch
        for row, device in enumerate(b.devices.tolist()):
            values = tuple(b.values[name][row] for name in TRAFFIC)
            if delivery.fault[row] == "stuck" and device in last:
                assert values == last[device]
                repeated += 1
            last[device] = values
        # the interval still moves on: only measured values freeze
        assert (b.values["date_observed_to"] == batch.observed_t[0]).all()
    assert repeated > 50
    assert any(e.cause == "stuck" and e.duration_s > 0 for e in model.drain_events())


def test_stuck_for_good_freezes_every_device_at_its_first_reading():
    _, out = run(faults(stuck=1.0, **ZERO), 10, 20)
    first = out[0][1].batch
    for _, delivery in out[1:]:
        for name in TRAFFIC:
            assert (delivery.batch.values[name] == first.values[name]).all()
        assert set(delivery.fault.tolist()) == {"stuck"}


def test_late_messages_arrive_out_of_order():
    _, out = run(faults(late=0.3, late_delay=900, **ZERO), 20, 30)
    sent = [(d.send_t, d.true_t, d.batch.devices, d.fault) for _, d in out]
    send_t, true_t, devices, fault = (np.concatenate(column) for column in zip(*sent))
    assert (fault == "late").mean() == pytest.approx(0.3, abs=0.05)
    assert (send_t[fault == "late"] > true_t[fault == "late"]).all()
    overtaken = 0
    for device in range(20):
        mine = devices == device
        arrival = np.argsort(send_t[mine], kind="stable")
        overtaken += int((np.diff(true_t[mine][arrival]) < 0).sum())
    assert overtaken > 0
    # without late messages (and a network far faster than the interval) the order holds
    _, out = run(faults(), 20, 30)
    send_t, true_t, devices = (np.concatenate(c) for c in zip(*[(d.send_t, d.true_t, d.batch.devices)
                                                                for _, d in out]))
    for device in range(20):
        mine = devices == device
        assert (np.diff(true_t[mine][np.argsort(send_t[mine])]) > 0).all()


def test_duplicates_repeat_the_row_a_little_later():
    _, out = run(faults(duplicate=1.0, **ZERO), 15, 3)
    for batch, delivery in out:
        b = delivery.batch
        assert len(b) == 2 * len(batch)
        assert delivery.fault.tolist() == ["", "duplicate"] * len(batch)
        for name in b.values:
            assert (b.values[name][0::2] == b.values[name][1::2]).all()
        assert (b.observed_t[0::2] == b.observed_t[1::2]).all()
        assert (delivery.send_t[1::2] > delivery.send_t[0::2]).all()
        assert (b.meta["link"][0::2] == b.devices[0::2] + 100).all()


def test_clock_skew_is_a_fixed_offset_per_device():
    model, out = run(faults(clock_skew=30.0, **ZERO), 400, 3)
    offsets = []
    for batch, delivery in out:
        b = delivery.batch
        offset = b.observed_t - delivery.true_t
        assert np.allclose(b.values["date_observed_to"] - batch.values["date_observed_to"], offset)
        assert np.allclose(b.values["date_observed_from"] - batch.values["date_observed_from"], offset)
        offsets.append(offset)
    assert np.allclose(offsets[0], offsets[1]) and np.allclose(offsets[0], offsets[2])
    assert np.std(offsets[0]) == pytest.approx(30.0, rel=0.15)
    assert model.drain_events() == []


def test_drift_scales_values_with_days_since_start():
    spec = faults(drift=0.25, drift_per_day=0.2, **ZERO)
    model = FaultModel(spec, 40, INTERVAL, np.random.default_rng(5), ("average_vehicle_speed",))
    events = model.drain_events()
    assert len(events) == 10 and all(e.t == 0 and e.cause == "drift" and math.isnan(e.duration_s)
                                     for e in events)
    drifting = sorted(e.device for e in events)
    t = 2 * DAY
    batch = readings(40, t, np.random.default_rng(6))
    delivery = model.apply(batch, t)
    speed = delivery.batch.values["average_vehicle_speed"]
    expected = batch.values["average_vehicle_speed"].copy()
    expected[drifting] *= 1.4
    assert np.allclose(speed, expected)
    assert (delivery.batch.values["intensity"] == batch.values["intensity"]).all()  # not measured here
    assert set(np.flatnonzero(delivery.fault == "drift")) == set(drifting)


def test_bursts_add_noise_and_report_their_start():
    model, out = run(faults(burst=0.05, burst_duration=1200, burst_scale=0.5, **ZERO), 50, 40)
    events = [e for e in model.drain_events() if e.cause == "burst"]
    assert events and all(e.duration_s > 0 for e in events)
    noisy = [(b, d) for b, d in out if (d.fault == "burst").any()]
    batch, delivery = noisy[0]
    rows = delivery.fault == "burst"
    ratio = delivery.batch.values["average_vehicle_speed"][rows] / batch.values["average_vehicle_speed"][rows]
    assert not np.allclose(ratio, 1.0)
    clean = delivery.fault == ""
    assert (delivery.batch.values["occupancy"][clean] == batch.values["occupancy"][clean]).all()


def test_battery_death_is_for_good():
    model, out = run(faults(battery=0.5, battery_life=DAY / 4, **ZERO), 40, 200)
    deaths = [e for e in model.drain_events() if e.cause == "battery"]
    assert len(deaths) == 20 and all(math.isnan(e.duration_s) for e in deaths)
    assert len({e.device for e in deaths}) == 20
    dead_at = {e.device: e.t for e in deaths}
    for _, delivery in out:
        for device, t in zip(delivery.batch.devices.tolist(), delivery.true_t.tolist()):
            assert device not in dead_at or t < dead_at[device]
    assert len(out[-1][1].batch) == 20  # 200 readings = 2/3 day: every battery is flat by then
    model.apply(readings(40, 201 * INTERVAL, np.random.default_rng(0)), 201 * INTERVAL)
    assert model.drain_events() == []  # reported once


EVERYTHING = dict(dropout=0.05, stuck=0.05, drift=0.3, drift_per_day=1.0, burst=0.1, burst_scale=10.0,
                  duplicate=0.05, late=0.1, clock_skew=5.0, battery=0.2, battery_life=DAY / 2, network_delay=2.0)


def test_deterministic_per_seed():
    def record(seed):
        model, out = run(faults(**EVERYTHING), 30, 60, seed=seed)
        rows = [(d.send_t.tolist(), d.true_t.tolist(), d.fault.tolist(), d.batch.devices.tolist(),
                 {k: v.tolist() for k, v in d.batch.values.items()}) for _, d in out]
        return rows, model.drain_events()

    first = record(3)
    assert repr(first) == repr(record(3))
    assert repr(first) != repr(record(4))


def test_faulted_values_stay_valid_and_encode():
    ids = [f"det-{k:03d}" for k in range(30)]
    encoder = Encoder(TrafficFlow, ids, np.full(30, 108.2), np.full(30, 16.05), EPOCH)
    _, out = run(faults(**EVERYTHING), 30, 150)
    labels = set()
    for _, delivery in out:
        b = delivery.batch
        assert b.values["intensity"].dtype == np.int64 and (b.values["intensity"] >= 0).all()
        assert ((b.values["occupancy"] >= 0) & (b.values["occupancy"] <= 1)).all()
        assert (b.values["average_vehicle_speed"] >= 0).all()
        labels |= set(delivery.fault.tolist())
        assert len(encoder.iota(b)) == len(b)
        encoder.observations(b)  # every row a valid observation
    assert labels == set(LABELS)


def test_float_bounds_and_unmeasured_fields():
    model = FaultModel(faults(drift=1.0, drift_per_day=1.0, **ZERO), 3, INTERVAL, np.random.default_rng(0),
                       measured_fields(WaterLevel))
    assert measured_fields(WaterLevel) == ("level_m",)
    batch = Batch(WaterLevel, [0, 1, 2], [DAY * 1e5] * 3, {
        "level_m": [1.0, 5000.0, 0.0], "warning_level_m": [0.1] * 3,
        "warning_state": np.array(["severe", "severe", "none"], dtype=object)})
    values = model.apply(batch, DAY * 1e5).batch.values
    assert values["level_m"].tolist() == [10000.0, 10000.0, 0.0]  # clipped to the field's bound
    assert values["warning_level_m"].tolist() == [0.1] * 3
    with pytest.raises(ValueError, match="measured"):
        FaultModel(faults(stuck=0.5), 3, INTERVAL, np.random.default_rng(0), ("warning_state",)).apply(batch, 1.0)


def test_alerts_without_measured_values():
    """Cameras: rows only when something is seen, several per device, no numeric measurements."""
    model = FaultModel(faults(dropout=0.5, duplicate=0.5, late=0.5, stuck=0.5, **ZERO), 3, 60.0,
                       np.random.default_rng(0), measured_fields(CameraAlert))
    batch = Batch(CameraAlert, [0, 0, 1, 2], [60.0] * 4, {
        "category": np.array(["traffic"] * 4, dtype=object), "sub_category": np.array(["trafficJam"] * 4, object),
        "severity": np.array(["medium"] * 4, dtype=object), "description": np.array([""] * 4, dtype=object),
        "date_issued": [30.0] * 4}, {"delay": np.array([5.0, 6.0, 7.0, 8.0])})
    delivery = model.apply(batch, 60.0)
    assert (delivery.send_t >= 65.0).all()
    events = model.drain_events()
    assert len({(e.device, e.cause) for e in events}) == len(events)  # one start per device
