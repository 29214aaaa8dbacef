"""The ledger: append-only, typed, and a Parquet file that reads back exactly."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citytwin.twin.ledger import KINDS, Ledger, events, read_ledger


def test_rows_keep_append_order_and_their_fields(tmp_path):
    ledger = Ledger(tmp_path / "l.parquet", flush_rows=2)
    ledger.append("incident.start", 10.0, "L1", cause="crash", capacity_factor=0.3, duration_s=600.0)
    ledger.append_many("link.state", [5.0, 5.0, 5.0], ["L1", "L2", "L3"], on_link=[1, 2, 3],
                       speed_mps=[10, 5, 1], density_pcu_km=[0, 0, 0], queue=[0, 0, 1])
    ledger.append("incident.end", 20.0, "L1", cause="crash")
    ledger.close()
    table = read_ledger(tmp_path / "l.parquet")
    assert table["seq"].to_pylist() == [0, 1, 2, 3, 4]
    assert table["kind"].to_pylist() == ["incident.start"] + ["link.state"] * 3 + ["incident.end"]
    start = events(table, "incident.start")
    assert start.iloc[0].to_dict() == {"t": 10.0, "subject": "L1", "cause": "crash", "capacity_factor": 0.3,
                                       "duration_s": 600.0}
    assert table["speed_mps"].to_pylist()[0] is None  # a field the kind does not use is null


def test_unknown_kinds_and_fields_are_refused():
    ledger = Ledger()
    with pytest.raises(KeyError, match="unknown event kind"):
        ledger.append("pothole.appeared", 0.0, "x")
    with pytest.raises(KeyError, match="has no field"):
        ledger.append("rain.end", 0.0, "city", depth_m=1.0)
    assert len(ledger) == 0


def test_closed_ledger_takes_nothing_more(tmp_path):
    ledger = Ledger(tmp_path / "l.parquet")
    ledger.close()
    assert read_ledger(tmp_path / "l.parquet").num_rows == 0
    with pytest.raises(RuntimeError):
        ledger.append("rain.end", 0.0, "city")


finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["flood.start", "incident.start", "rain.start"]), finite,
                          st.text(max_size=8), finite, st.text(max_size=8)), max_size=30))
def test_parquet_round_trip_is_exact(tmp_path_factory, rows):
    path = tmp_path_factory.mktemp("l") / "l.parquet"
    ledger = Ledger(path, flush_rows=7)
    expected = []
    for kind, t, subject, x, text in rows:
        fields = {"flood.start": {"depth_m": x}, "rain.start": {"intensity_mm_h": x, "duration_s": x},
                  "incident.start": {"cause": text, "capacity_factor": x, "duration_s": x}}[kind]
        ledger.append(kind, t, subject, **fields)
        expected.append((kind, t, subject, fields))
    ledger.close()
    table = read_ledger(path).to_pylist()
    assert len(table) == len(expected)
    for row, (kind, t, subject, fields) in zip(table, expected):
        assert (row["kind"], row["t"], row["subject"]) == (kind, t, subject)
        for name, value in fields.items():
            assert row[name] == value
        unused = {f for k in KINDS.values() for f in k} - set(fields)
        assert all(row[f] is None or (isinstance(row[f], float) and math.isnan(row[f])) for f in unused)
