"""A drive's outputs: summary.json, Locust-compatible CSVs (checked against Locust itself) and the live table."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import re
import subprocess
import sys

import pytest
from rich.console import Console

from citytwin.twin.drive import live
from citytwin.twin.drive.outputs import (FAILURES_COLUMNS, HISTORY_COLUMNS, STATS_COLUMNS, locust_type,
                                         write_locust_csvs, write_summary)
from citytwin.twin.drive.stats import Stats
from citytwin.twin.drive.thresholds import evaluate, parse

START_UNIX = 1_700_000_000.0


def _stats() -> Stats:
    stats = Stats(start=0.0, start_unix=START_UNIX)
    for i in range(40):  # ngsild.upsert over 4 s: 20 ms, two 5xx in second 1, one timeout in second 3
        error = "http_5xx" if i in (12, 15) else "timeout" if i == 35 else None
        stats.record("ngsild.upsert", i * 0.1, i * 0.1 + 0.020, error=error, started=i * 0.1 + 0.001, size=50)
    for i in range(10):
        stats.record("mqtt.publish", i * 0.3, i * 0.3 + 0.002, size=0)
    stats.record_latency("e2e.alert", 1.5, at=3.5)
    return stats


def _read(path) -> list[list[str]]:
    return list(csv.reader(io.StringIO(path.read_text(encoding="utf-8"), newline="")))


# -- summary.json --------------------------------------------------------------------------------------


def test_summary_has_every_key_the_aggregate_lag_thresholds_and_meta(tmp_path):
    stats = _stats()
    results = evaluate([parse("errors<5%"), parse("ngsild.upsert.p99<50ms")], stats, 4.0)
    path = write_summary(tmp_path / "out" / "summary.json", stats, results,
                         {"target": "http://127.0.0.1:8080", "scenario": "typhoon_flood", "duration_s": 4.0})
    summary = json.loads(path.read_text())
    assert summary["ok"] is False and summary["duration_s"] == 4.0
    assert summary["thresholds"][0] == {"expr": "errors<5%", "ok": False, "actual": 6.0, "unit": "%"}
    assert summary["thresholds"][1]["ok"] is True
    assert list(summary["keys"]) == ["e2e.alert", "mqtt.publish", "ngsild.upsert"]
    upsert = summary["keys"]["ngsild.upsert"]
    assert upsert["count"] == 40 and upsert["rps"] == 10.0 and upsert["bytes_in"] == 2000
    assert upsert["errors"] == {"http_5xx": 2, "timeout": 1} and upsert["error_pct"] == 7.5
    assert set(upsert["latency_ms"]) == {"p50", "p90", "p95", "p99", "p99.9", "max", "min", "avg"}
    assert upsert["latency_ms"]["max"] == 20.0 and upsert["latency_ms"]["avg"] == 20.0
    assert upsert["latency_ms"]["p99"] == pytest.approx(20.0, rel=1e-3)
    assert summary["aggregated"]["count"] == 50  # e2e is not a request
    assert summary["keys"]["e2e.alert"]["latency_ms"]["max"] == 1500.0
    assert summary["lag"]["count"] == 40 and summary["lag"]["latency_ms"]["max"] == 1.0
    assert summary["meta"]["scenario"] == "typhoon_flood"
    assert not list(tmp_path.glob("out/.*tmp"))  # written whole, then renamed


def test_summary_duration_defaults_to_the_span_of_the_records(tmp_path):
    stats = _stats()
    summary = json.loads(write_summary(tmp_path / "s.json", stats, [], {}).read_text())
    assert summary["ok"] is True and summary["thresholds"] == []
    assert summary["duration_s"] == pytest.approx(3.92)
    empty = json.loads(write_summary(tmp_path / "e.json", Stats(), [], {}).read_text())
    assert empty["keys"] == {} and empty["aggregated"]["count"] == 0 and empty["lag"]["latency_ms"]["p99"] is None


# -- Locust CSVs ---------------------------------------------------------------------------------------


def test_stats_csv_has_a_row_per_key_and_the_aggregate(tmp_path):
    paths = write_locust_csvs(tmp_path, _stats(), 4.0)
    rows = _read(paths["stats"])
    assert rows[0] == STATS_COLUMNS
    assert [row[:2] for row in rows[1:]] == [["E2E", "e2e.alert"], ["MQTT", "mqtt.publish"],
                                             ["POST", "ngsild.upsert"], ["", "Aggregated"]]
    upsert = dict(zip(STATS_COLUMNS, rows[3]))
    assert upsert["Request Count"] == "40" and upsert["Failure Count"] == "3"
    assert upsert["Median Response Time"] == "20" and float(upsert["Average Response Time"]) == 20.0
    assert float(upsert["Min Response Time"]) == 20.0 and float(upsert["Max Response Time"]) == 20.0
    assert float(upsert["Average Content Size"]) == 50.0
    assert float(upsert["Requests/s"]) == 10.0 and float(upsert["Failures/s"]) == 0.75
    assert upsert["99%"] == "20" and upsert["100%"] == "20"
    aggregated = dict(zip(STATS_COLUMNS, rows[-1]))
    assert aggregated["Request Count"] == "50" and aggregated["Failure Count"] == "3"
    assert float(aggregated["Min Response Time"]) == 2.0


def test_stats_history_has_every_key_and_the_aggregate_for_every_second(tmp_path):
    stats = _stats()
    rows = _read(write_locust_csvs(tmp_path, stats, 4.0)["stats_history"])
    assert rows[0] == HISTORY_COLUMNS
    body = [dict(zip(HISTORY_COLUMNS, row)) for row in rows[1:]]
    seconds = sorted({int(row["Timestamp"]) for row in body})
    assert seconds == [int(START_UNIX) + s for s in range(4)]
    upsert = [row for row in body if row["Name"] == "ngsild.upsert"]
    assert [row["Requests/s"] for row in upsert] == ["10.000000"] * 4
    assert [row["Failures/s"] for row in upsert] == ["0.000000", "2.000000", "0.000000", "1.000000"]
    assert [row["Total Request Count"] for row in upsert] == ["10", "20", "30", "40"]
    aggregated = [row for row in body if row["Name"] == "Aggregated"]
    assert len(aggregated) == 4 and all(row["Type"] == "" for row in aggregated)
    assert aggregated[-1]["Total Request Count"] == "50"  # e2e is not in the aggregate
    assert [row["Name"] for row in body if int(row["Timestamp"]) == int(START_UNIX) + 3] == \
           ["e2e.alert", "mqtt.publish", "ngsild.upsert", "Aggregated"]
    assert upsert[0]["User Count"] == "0" and upsert[-1]["99%"] == "20"


def test_failures_csv_has_a_row_per_key_and_kind_with_first_and_last_seen(tmp_path):
    rows = _read(write_locust_csvs(tmp_path, _stats(), 4.0)["failures"])
    assert rows == [
        FAILURES_COLUMNS,
        ["POST", "ngsild.upsert", "http_5xx", "2", "2023-11-14T22:13:21Z", "2023-11-14T22:13:21Z"],
        ["POST", "ngsild.upsert", "timeout", "1", "2023-11-14T22:13:23Z", "2023-11-14T22:13:23Z"],
    ]


def test_an_empty_run_still_writes_the_aggregate_row(tmp_path):
    paths = write_locust_csvs(tmp_path, Stats(), 0.0)
    assert _read(paths["stats"])[1] == ["", "Aggregated", "0", "0", "0", "0.0", "0", "0", "0", "0.0", "0.0",
                                        *["N/A"] * 11]
    assert _read(paths["stats_history"]) == [HISTORY_COLUMNS]
    assert _read(paths["failures"]) == [FAILURES_COLUMNS]


def test_types_follow_the_interface_or_method_and_can_be_overridden(tmp_path):
    assert [locust_type(k) for k in ("mqtt.publish", "ngsild.upsert", "e2e.report", "operator.ack")] == \
           ["MQTT", "POST", "E2E", "OPERATOR"]
    assert locust_type("operator.ack", {"operator.ack": "PATCH"}) == "PATCH"
    rows = _read(write_locust_csvs(tmp_path, _stats(), 4.0, types={"mqtt.publish": "MQTT-QoS1"})["stats"])
    assert rows[2][:2] == ["MQTT-QoS1", "mqtt.publish"]


LOCUST_SCRIPT = r'''
import csv, io, json, os, sys, tempfile, types
from locust.stats import PERCENTILES_TO_REPORT, RequestStats, StatsCSV, StatsCSVFileWriter

stats = RequestStats()
for i in range(40):
    stats.log_request("POST", "ngsild.upsert", 20.0 + i * 0.01, 50)
stats.log_error("POST", "ngsild.upsert", "http_5xx")
env = types.SimpleNamespace(stats=stats, runner=None)
writer = StatsCSVFileWriter(env, PERCENTILES_TO_REPORT, os.path.join(tempfile.mkdtemp(), "run"),
                            full_history=False)
requests, history, failures = io.StringIO(), io.StringIO(), io.StringIO()
writer.requests_csv(csv.writer(requests))
csv.writer(history).writerow(writer.stats_history_csv_columns)
writer._stats_history_data_rows(csv.writer(history), 1700000000.0)
writer.failures_csv(csv.writer(failures))
writer.close_files()
print(json.dumps({"stats": requests.getvalue(), "stats_history": history.getvalue(),
                  "failures": failures.getvalue()}))
'''


def _shape(field: str) -> str:
    """What kind of value a CSV field holds, the way a reader of Locust's files would parse it."""
    for name, pattern in [("int", r"-?\d+"), ("float", r"-?\d+\.\d+(e-?\d+)?"), ("time", r"\d{4}-.*Z")]:
        if re.fullmatch(pattern, field):
            return name
    return field  # "N/A", "", names


@pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust is not installed (bench extra)")
def test_files_match_what_locust_itself_writes(tmp_path):
    # Locust is run in a subprocess: importing it here would monkey-patch this test process with gevent.
    done = subprocess.run([sys.executable, "-c", LOCUST_SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    theirs = {name: list(csv.reader(io.StringIO(text, newline="")))
              for name, text in json.loads(done.stdout).items()}
    ours = {name: _read(path) for name, path in write_locust_csvs(tmp_path, _stats(), 4.0).items()}
    raw = {name: path.read_bytes() for name, path in write_locust_csvs(tmp_path, _stats(), 4.0).items()}
    for name in ("stats", "stats_history", "failures"):
        assert ours[name][0] == theirs[name][0], name  # headers, column for column
        assert raw[name].count(b"\r\n") == len(ours[name])  # the same csv dialect (\r\n)
    # row for row, every column holds the same kind of value as Locust's
    assert [_shape(f) for f in ours["stats"][3]] == [_shape(f) for f in theirs["stats"][1]]
    assert [_shape(f) for f in ours["stats"][-1]] == [_shape(f) for f in theirs["stats"][-1]]
    assert ours["stats"][-1][:2] == theirs["stats"][-1][:2] == ["", "Aggregated"]
    assert [_shape(f) for f in ours["stats_history"][-1]] == [_shape(f) for f in theirs["stats_history"][-1]]
    assert ours["stats_history"][-1][2:4] == theirs["stats_history"][-1][2:4]
    assert [_shape(f) for f in ours["failures"][1]] == [_shape(f) for f in theirs["failures"][1]]


# -- the live table ------------------------------------------------------------------------------------


def _render(table) -> str:
    console = Console(record=True, width=180, color_system=None)
    console.print(table)
    return console.export_text()


def test_live_table_shows_elapsed_time_keys_in_order_lag_and_in_flight():
    stats = _stats()
    text = _render(live.table(stats, 65.4, in_flight=17))
    lines = text.splitlines()
    assert "0:01:05 elapsed" in lines[0]
    order = [next(i for i, line in enumerate(lines) if key in line)
             for key in ("e2e.alert", "mqtt.publish", "ngsild.upsert", "all (not e2e)")]
    assert order == sorted(order)
    upsert = next(line for line in lines if "ngsild.upsert" in line)
    assert "40" in upsert and "3 (7.5 %)" in upsert and "http_5xx 2, timeout 1" in upsert and "20.0" in upsert
    assert "send lag p99 1.0 ms" in text and "in flight 17" in text


def test_live_rate_is_over_the_last_whole_seconds():
    stats = _stats()
    text = _render(live.table(stats, 4.2, window_s=2))
    upsert = next(line for line in text.splitlines() if "ngsild.upsert" in line)
    assert re.search(r"ngsild\.upsert\s+│\s+40\s+│\s+10\.0\s+│", upsert), upsert
    bare = _render(live.table(Stats(), 0.0))
    assert "0:00:00 elapsed" in bare and "lag" not in bare and "in flight" not in bare
