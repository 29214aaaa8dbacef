"""Drive stats: latency from the intended time, HDR histograms, per-second history, exact merges."""

from __future__ import annotations

import json
import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from citytwin.twin.drive.stats import (COUNTS_LEN, HIGHEST_US, INDEX_HIGHEST_US, INDEX_LOWEST_US, LAG, Stats,
                                       counts_index, new_histogram)

START_UNIX = 1_700_000_000.0
KINDS = ["timeout", "connection", "http_4xx", "http_5xx", "invalid_body", "overload"]


def fresh() -> Stats:
    return Stats(start=100.0, start_unix=START_UNIX)


# -- the HDR arithmetic the hot path does by hand must be hdrh's -----------------------------------------


@given(st.integers(min_value=0, max_value=HIGHEST_US))
def test_counts_index_is_hdrh_s(us):
    assert counts_index(us) == new_histogram()._counts_index_for(us)


def test_index_values_are_hdrh_s():
    histogram = new_histogram()
    for index in range(0, COUNTS_LEN, 7):
        lowest = histogram.get_value_from_index(index)
        assert INDEX_LOWEST_US[index] == lowest
        assert INDEX_HIGHEST_US[index] == histogram.get_highest_equivalent_value(lowest)
    assert counts_index(HIGHEST_US) < COUNTS_LEN


# -- recording ---------------------------------------------------------------------------------------


def test_latency_is_measured_from_the_intended_time_and_lag_from_the_send():
    stats = fresh()
    # sent 0.5 s late and answered 0.1 s after that: 0.6 s of latency, 0.5 s of lag
    stats.record("ngsild.upsert", intended=101.0, done=101.6, started=101.5, size=120)
    stats.record("ngsild.upsert", intended=101.2, done=101.25, started=101.2, size=80)
    op = stats.get("ngsild.upsert")
    assert op.count == 2 and op.bytes_in == 200 and op.errors == {}
    assert op.max_s == pytest.approx(0.6) and op.min_s == pytest.approx(0.05)
    assert op.avg_s == pytest.approx(0.325)
    assert op.percentile(100) == pytest.approx(0.6, rel=1e-3)
    assert op.percentile(50) == pytest.approx(0.05, rel=1e-3)
    lag = stats.get(LAG)
    assert lag.count == 2 and lag.max_s == pytest.approx(0.5) and lag.min_s == 0.0
    assert stats.keys() == ["ngsild.upsert"]  # lag is read by name, not listed among the operations


def test_failures_count_as_requests_with_their_time_to_fail():
    stats = fresh()
    stats.record("mqtt.publish", 100.0, 100.01)
    stats.record("mqtt.publish", 100.0, 105.0, error="timeout")
    stats.record("mqtt.publish", 100.0, 100.0, error="overload")
    op = stats.get("mqtt.publish")
    assert op.count == 3 and op.errors == {"timeout": 1, "overload": 1}
    assert op.error_count == 2 and op.error_pct == pytest.approx(200 / 3)
    assert op.max_s == 5.0


def test_out_of_range_durations_are_clamped_not_dropped():
    stats = fresh()
    stats.record("a.b", 100.0, 99.9)  # done before intended: clock noise, counts as 0
    stats.record("a.b", 100.0, 100.0 + 2 * 3600)  # two hours: the histogram's top, one hour
    stats.record_latency("e2e.alert", -1.0, at=99.0)  # before the start: lands in second 0
    op = stats.get("a.b")
    assert op.count == 2 and op.min_us == 0 and op.max_us == HIGHEST_US
    assert stats.get("e2e.alert").count == 1
    assert stats.history()[0]["keys"]["e2e.alert"]["count"] == 1


def test_end_to_end_latencies_and_unknown_keys():
    stats = fresh()
    stats.record_latency("e2e.alert", 2.5, at=103.0)
    stats.record_latency("e2e.alert", 0.5, at=104.0, error="timeout")
    assert stats.get("e2e.alert").count == 2 and stats.get("e2e.alert").errors == {"timeout": 1}
    assert stats.get(LAG).count == 0
    empty = stats.get("open311.post")
    assert empty.count == 0 and empty.percentile(99) is None and empty.avg_s is None


def test_merged_selects_by_dotted_prefix_and_leaves_e2e_out_unless_named():
    stats = fresh()
    for key, n in [("open311.post", 3), ("open311.token", 2), ("open311x.post", 1), ("mqtt.publish", 4),
                   ("e2e.alert", 5), ("e2e.entity", 6)]:
        for i in range(n):
            stats.record(key, 100.0 + i, 100.1 + i)
    assert stats.merged("open311").count == 5
    assert stats.merged("open311.post").count == 3
    assert stats.merged(None).count == 10 and stats.merged("").count == 10
    assert stats.merged("e2e").count == 11 and stats.merged("e2e.alert").count == 5
    assert stats.merged("nothing").count == 0


def test_rate_counts_whole_seconds_before_now():
    stats = fresh()
    for second in range(10):
        for i in range(second):  # second s has s completions
            stats.record("mqtt.publish", 100.0 + second, 100.0 + second + 0.5)
    # at 10.3 s the last five whole seconds are 5..9
    assert stats.rate("mqtt.publish", now=110.3, window_s=5) == pytest.approx((5 + 6 + 7 + 8 + 9) / 5)
    assert stats.rate("mqtt.publish", now=101.5, window_s=5) == 0.0  # only second 0 has passed
    assert stats.rate("nothing", now=110.0) == 0.0


def test_recording_from_many_threads_loses_nothing():
    stats = fresh()
    per_thread = 3000

    def work(worker: int) -> None:
        for i in range(per_thread):
            stats.record(f"k.{worker % 2}", 100.0 + i * 0.001, 100.0 + i * 0.001 + 0.002,
                         started=100.0 + i * 0.001, error="timeout" if i % 100 == 0 else None)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert stats.merged().count == 4 * per_thread
    assert stats.merged().errors == {"timeout": 4 * per_thread // 100}
    assert stats.get(LAG).count == 4 * per_thread
    assert sum(row["aggregated"]["count"] for row in stats.history()) == 4 * per_thread


# -- history -------------------------------------------------------------------------------------------


def test_history_has_a_row_per_second_with_cumulative_percentiles():
    stats = fresh()
    for i in range(100):  # second 0: 100 fast ones
        stats.record("ngsild.upsert", 100.0 + i * 0.009, 100.0 + i * 0.009 + 0.010, size=10)
    stats.record("ngsild.upsert", 102.0, 102.9, error="http_5xx")  # second 2: one slow failure
    stats.record_latency("e2e.entity", 1.5, at=103.2)  # second 3
    rows = stats.history()
    assert [row["second"] for row in rows] == [0, 1, 2, 3]
    assert [row["time"] for row in rows] == [START_UNIX + s for s in range(4)]
    first, idle, failed, last = (row["keys"]["ngsild.upsert"] for row in rows)
    assert first["count"] == 100 and first["total_count"] == 100 and first["bytes"] == 1000
    assert first["current_p50"] == pytest.approx(0.010, rel=0.035)
    assert idle["count"] == 0 and idle["current_p99"] is None and idle["total_count"] == 100
    assert failed["errors"] == 1 and failed["error_kinds"] == {"http_5xx": 1}
    assert failed["total_errors"] == 1 and failed["current_max"] == pytest.approx(0.9)
    assert failed["p100"] == pytest.approx(0.9, rel=0.035) and failed["max"] == pytest.approx(0.9)
    assert failed["p50"] == pytest.approx(0.010, rel=0.035)
    assert last["total_count"] == 101
    # e2e keys appear from their first record, and stay out of the aggregate
    assert "e2e.entity" not in rows[2]["keys"] and rows[3]["keys"]["e2e.entity"]["count"] == 1
    assert rows[3]["aggregated"]["total_count"] == 101
    assert Stats().history() == []


def test_history_percentiles_are_within_the_per_second_resolution_of_the_totals():
    stats = fresh()
    for i in range(2000):
        stats.record("mqtt.publish", 100.0 + i * 0.005, 100.0 + i * 0.005 + 0.001 * (1 + i % 97))
    final = stats.history()[-1]["keys"]["mqtt.publish"]
    exact = stats.get("mqtt.publish")
    for p in (50, 90, 99, 99.9):
        assert final[f"p{p:g}"] >= exact.percentile(p) * (1 - 1e-3)
        assert final[f"p{p:g}"] == pytest.approx(exact.percentile(p), rel=0.035)


def test_late_records_land_in_their_own_second():
    stats = fresh()
    stats.record("a.b", 100.0, 100.5)
    stats.record("a.b", 103.0, 103.5)
    stats.record("a.b", 100.9, 101.1)  # completed in second 1, recorded after second 3 began
    stats.record("a.b", 100.0, 100.2)  # second 0 again, now frozen
    assert [row["keys"]["a.b"]["count"] for row in stats.history()] == [2, 1, 0, 1]


# -- shards: merge and serialisation -------------------------------------------------------------------

record_strategy = st.tuples(
    st.sampled_from(["mqtt.publish", "ngsild.upsert", "open311.post", "e2e.alert", "e2e.entity"]),
    st.floats(min_value=0.0, max_value=12.0),                       # intended, seconds after start
    st.one_of(st.floats(min_value=-0.01, max_value=3.0),            # latency
              st.floats(min_value=3.0, max_value=40.0)),
    st.one_of(st.none(), st.sampled_from(KINDS)),
    st.one_of(st.none(), st.floats(min_value=0.0, max_value=2.0)),  # lag, when sent
    st.integers(min_value=0, max_value=5000),                       # bytes
    st.booleans(),                                                  # which shard
)


def _apply(stats: Stats, records) -> None:
    for key, intended, latency, error, lag, size, _ in records:
        if key.startswith("e2e."):
            stats.record_latency(key, latency, at=100.0 + intended + max(latency, 0.0), error=error)
        else:
            started = None if lag is None else 100.0 + intended + lag
            stats.record(key, 100.0 + intended, 100.0 + intended + latency, error=error, started=started,
                         size=size)


def _assert_same(a: Stats, b: Stats) -> None:
    assert a.to_dict() == b.to_dict()
    assert a.history() == b.history()
    assert a.keys() == b.keys()
    for key in [*a.keys(), LAG]:
        x, y = a.get(key), b.get(key)
        assert x.latency.equals(y.latency)
        assert (x.count, x.errors, x.bytes_in, x.sum_us, x.min_us, x.max_us) == \
               (y.count, y.errors, y.bytes_in, y.sum_us, y.min_us, y.max_us)
        assert x.percentiles([50, 90, 99, 99.9, 100]) == y.percentiles([50, 90, 99, 99.9, 100])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record_strategy, max_size=120))
def test_merging_two_halves_equals_recording_everything(records):
    whole, left, right = fresh(), fresh(), fresh()
    _apply(whole, records)
    _apply(left, [r for r in records if r[-1]])
    _apply(right, [r for r in records if not r[-1]])
    left.merge(right)
    _assert_same(left, whole)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(record_strategy, max_size=80), st.lists(record_strategy, max_size=20))
def test_to_dict_round_trips_through_json_and_keeps_recording(records, more):
    stats = fresh()
    _apply(stats, records)
    loaded = Stats.from_dict(json.loads(json.dumps(stats.to_dict())))
    _assert_same(loaded, stats)
    # a loaded shard takes new records (its seconds come in frozen) and stays equal to the original
    _apply(stats, more)
    _apply(loaded, more)
    _assert_same(loaded, stats)


def test_merging_shards_of_three_and_into_an_empty_stats():
    records = [("mqtt.publish", i * 0.1, 0.01 * (i % 7), None if i % 5 else "timeout", 0.001, 10, i % 3)
               for i in range(90)]
    whole = fresh()
    _apply(whole, records)
    total = fresh()
    for shard in range(3):
        part = fresh()
        _apply(part, [r for r in records if r[-1] == shard])
        total.merge(Stats.from_dict(part.to_dict()))
    _assert_same(total, whole)
    with pytest.raises(ValueError, match="itself"):
        total.merge(total)


def test_from_dict_refuses_what_it_cannot_trust():
    stats = fresh()
    stats.record("a.b", 100.0, 100.1)
    data = stats.to_dict()
    with pytest.raises(ValueError, match="format"):
        Stats.from_dict({**data, "format": "something else"})
    data["keys"]["a.b"]["count"] = 5
    with pytest.raises(ValueError, match="inconsistent"):
        Stats.from_dict(data)
