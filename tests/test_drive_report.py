"""The live-drive report: one self-contained HTML page built from a real `Stats`, its figures valid PNGs,
failed thresholds marked, the numbers those of the HDR histograms, and readable from one key to twenty."""

from __future__ import annotations

import base64
import random
import re

import numpy as np
import pytest

from citytwin.twin.drive import thresholds
from citytwin.twin.drive.report import (MAX_KEY_LINES, MAX_TIME_BINS, TimeBins, cdf_points, duration_text,
                                        key_series, latency_label, percentile_ms, time_bin_s, verdict,
                                        write_drive_report)
from citytwin.twin.drive.stats import LAG, Stats

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG_SRC = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
START = 1000.0  # the stats clock (monotonic seconds) of every synthetic run
META = {"scenario": "typhoon_flood", "target": "http://127.0.0.1:8080", "mqtt": "mqtt://127.0.0.1:1883",
        "speedup": 60, "started_at": "2025-06-01T08:00:00+00:00", "wall_s": 30.0, "virtual_s": 1800.0,
        "interrupted": False, "devices": 12, "messages": 700}


def synthetic_stats(seconds: int = 30, keys: tuple[str, ...] = ("mqtt.publish", "ngsild.upsert"),
                    per_second: int = 10, seed: int = 3) -> Stats:
    """A drive as Stats.record sees it: a few ms per request, a 1.2 s stall in second 12, timeouts and
    5xx on the upserts, send lag, and end-to-end times for entities and alerts."""
    rng = random.Random(seed)
    stats = Stats(START, start_unix=1_750_000_000.0)
    for second in range(seconds):
        for i, key in enumerate(keys):
            for n in range(max(1, per_second // (i + 1))):
                intended = START + second + n / per_second
                latency = rng.uniform(0.004, 0.020) + (1.2 if second == 12 else 0.0)
                error = None
                if key == "ngsild.upsert" and n == 0 and second % 10 == 5:
                    error, latency = "timeout", 5.0
                elif key == "ngsild.upsert" and n == 1 and second % 10 == 7:
                    error = "http_5xx"
                stats.record(key, intended, intended + latency, error=error,
                             started=intended + rng.uniform(0.0001, 0.002), size=200)
        stats.record_latency("e2e.entity", rng.uniform(0.2, 0.8), at=START + second + 0.5)
        if second % 5 == 0:
            stats.record_latency("e2e.alert", rng.uniform(1.0, 3.0), at=START + second + 0.7)
    return stats


def images(html: str) -> list[bytes]:
    return [base64.b64decode(m) for m in IMG_SRC.findall(html)]


def render(tmp_path, stats: Stats, exprs: list[str], meta: dict | None = None, name: str = "report.html") -> str:
    meta = META if meta is None else meta
    results = thresholds.evaluate(thresholds.parse_all(exprs), stats, meta.get("wall_s") or 30.0)
    path = write_drive_report(tmp_path / "out" / name, stats, results, meta)
    assert path == tmp_path / "out" / name
    return path.read_text(encoding="utf-8")


def test_report_is_self_contained_with_every_figure_and_the_failed_threshold_marked(tmp_path):
    stats = synthetic_stats()
    html = render(tmp_path, stats, ["mqtt.publish.p99<300ms", "errors<5%", "e2e.alert.p95<5s", "nosuch.p99<1s"])

    assert html.startswith("<!DOCTYPE html>") and "<script" not in html
    assert not re.search(r'(src|href)="(https?:)?//', html)  # nothing fetched from anywhere
    pngs = images(html)
    # latency over time, CDFs, throughput against errors, end-to-end distributions, send lag
    assert len(pngs) == 5 and all(p.startswith(PNG_SIGNATURE) for p in pngs)
    for section in ("thresholds", "keys", "latency", "throughput", "e2e", "lag"):
        assert f'<section id="{section}">' in html

    # header: target, scenario, speedup, wall duration and the verdict the exit code gives
    assert "http://127.0.0.1:8080" in html and "typhoon_flood" in html and "×60" in html
    assert "30 s (30 min 0 s of virtual time)" in html
    assert '<span class="verdict-failed">2 of 4 thresholds failed</span>' in html

    # the stall of second 12 puts mqtt.publish's p99 above 300 ms: that row is marked failed
    assert re.search(r'<tr class="failed"><td><code>mqtt\.publish\.p99&lt;300ms</code></td>'
                     r'<td class="num">1,2\d\d ms</td><td class="failed">failed</td></tr>', html)
    assert re.search(r'<tr><td><code>errors&lt;5%</code></td><td class="num">[0-9.]+%</td><td class="ok">ok</td>',
                     html)
    assert re.search(r'<tr><td><code>e2e\.alert\.p95&lt;5s</code></td><td class="num">[0-9.]+ s</td>'
                     r'<td class="ok">ok</td>', html)
    assert re.search(r'<tr class="failed"><td><code>nosuch\.p99&lt;1s</code></td><td class="num">no data</td>', html)


def test_key_table_has_counts_rates_error_kinds_and_hdr_percentiles(tmp_path):
    stats = synthetic_stats()
    html = render(tmp_path, stats, [])
    upsert = stats.get("ngsild.upsert")
    assert upsert.count == 150 and upsert.errors == {"timeout": 3, "http_5xx": 3}
    row = re.search(r'<tr class="errors"><td>ngsild\.upsert</td>(.*?)</tr>', html).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[:4] == ["150", "5", "6 (4 %)", "timeout 3, http_5xx 3"]
    p50, p99, top = (upsert.percentile(50) * 1000, upsert.percentile(99) * 1000, upsert.max_s * 1000)
    assert float(cells[4].replace(",", "")) == pytest.approx(p50, rel=0.01)
    assert float(cells[7].replace(",", "")) == pytest.approx(p99, rel=0.01)
    assert cells[9] == "5,000"  # the exact maximum, a 5 s timeout, not the top of its HDR bucket
    assert top == 5000.0
    # no errors: no shading; all requests merged in a total row; e2e keys listed after it
    assert "<tr><td>mqtt.publish</td><td class=\"num\">300</td>" in html
    assert re.search(r'<tr class="total"><td>all requests</td><td class="num">450</td><td class="num">15</td>', html)
    assert html.index("all requests") < html.index("<td>e2e.alert</td>") < html.index("<td>e2e.entity</td>")
    assert '<span class="verdict-ok">no thresholds set</span>' in html
    assert "p99 send lag" in html and "Send lag over 450 sends" in html


def test_empty_run_and_interrupted_run_still_render(tmp_path):
    empty = render(tmp_path, Stats(START), ["errors<1%"], {"target": "http://127.0.0.1:9", "interrupted": True,
                                                          "wall_s": 3.0})
    assert len(images(empty)) == 3  # latency over time, CDFs and throughput, each saying there is no data
    assert "No requests were measured." in empty and "Nothing was measured." in empty
    assert "No end-to-end measurements" in empty and "No send lag was recorded." in empty
    assert ('<span class="verdict-failed">interrupted (results for the time run); 1 of 1 threshold failed</span>'
            in empty)
    assert verdict([], interrupted=True) == ("interrupted (results for the time run); no thresholds set", False)


def test_many_keys_and_a_long_run_stay_readable(tmp_path):
    keys = tuple(f"open311.op{i:02d}" for i in range(20))
    stats = Stats(START)
    for second in range(0, 3600, 7):  # an hour, sparse so the test stays fast
        for i, key in enumerate(keys):
            stats.record(key, START + second, START + second + 0.01 * (i + 1))
    html = render(tmp_path, stats, [], {"wall_s": 3600.0})
    assert len(images(html)) == 3  # no e2e and no send lag (nothing recorded when it was sent)
    assert f"Only the {MAX_KEY_LINES} busiest of the 20 operations are drawn" in html
    assert f"the other {20 - MAX_KEY_LINES} are stacked together in grey" in html
    assert "Averaged over 15-second bins." in html
    assert all(f"<td>{key}</td>" in html for key in keys)  # the table lists every key
    assert "1 h 0 min" in html


def test_binned_series_match_the_stats_history_second_by_second():
    stats = synthetic_stats(seconds=20)
    history = stats.history()  # a little past 20 s: the last timeouts complete later
    bins = TimeBins.over(len(history))
    assert bins.step == 1 and len(bins) == len(history)
    series = key_series(stats.to_dict(), bins)
    for key in ("mqtt.publish", "ngsild.upsert", "e2e.entity"):
        s = series[key]
        assert s.count.sum() == stats.get(key).count
        for row in history:
            entry = row["keys"].get(key)
            if entry is None or not entry["count"]:
                continue
            b = row["second"]
            assert s.count[b] == entry["count"]
            assert {k: v[b] for k, v in s.errors.items() if v[b]} == entry["error_kinds"]
            for name in ("p50", "p95", "p99"):
                assert s.percentiles_ms[name][b] == pytest.approx(entry["current_" + name] * 1000.0)
    # coarser bins keep every count and merge the seconds' histograms
    coarse = key_series(stats.to_dict(), TimeBins(step=5, edges=np.arange(0.0, 26.0, 5.0)))
    upsert = coarse["ngsild.upsert"]
    # 5 a second; the timeouts intended in seconds 5 and 15 complete (and count) 5 s later
    assert upsert.count.tolist() == [25, 24, 26, 24, 1]
    assert upsert.errors["timeout"].tolist() == [0, 0, 1, 0, 1]
    assert upsert.percentiles_ms["p99"][2] > 1000.0  # the stall of second 12 sits in the third bin
    assert upsert.percentiles_ms["p50"][0] < 30.0
    # a snapshot of an unknown format gives no series rather than no report
    assert key_series({"format": "something else"}, bins) == {}


def test_time_bins_stay_under_the_cap_from_ten_seconds_to_an_hour():
    assert time_bin_s(10) == 1 and time_bin_s(240) == 1 and time_bin_s(241) == 2 and time_bin_s(3600) == 15
    for duration in (10.0, 65.5, 600.0, 3600.0, 7300.0):
        bins = TimeBins.over(duration)
        assert len(bins) <= MAX_TIME_BINS
        assert bins.edges[0] == 0.0 and bins.edges[-1] >= duration
        assert np.all(bins.widths > 0)


def test_cdf_points_never_reach_one_and_rise_with_latency():
    stats = synthetic_stats(seconds=10)
    values, share = cdf_points(stats.get("mqtt.publish"))
    assert len(values) and np.all(np.diff(values) > 0) and np.all(np.diff(share) > 0)
    assert share[-1] == pytest.approx(100 / 101) and share[-1] < 1.0
    empty_values, empty_share = cdf_points(Stats(START).get("nothing"))
    assert len(empty_values) == 0 and len(empty_share) == 0
    assert percentile_ms(stats.get(LAG), 100.0) <= 2.0  # lag of at most 2 ms in the synthetic run


@pytest.mark.parametrize("ms,text", [(0.25, "250 µs"), (12.0, "12 ms"), (1500.0, "1.5 s"), (150_000.0, "2.5 min"),
                                     (0.0, "0")])
def test_latency_label(ms, text):
    assert latency_label(ms) == text


@pytest.mark.parametrize("seconds,text", [(9.96, "10 s"), (9.4, "9.4 s"), (42.5, "42.5 s"), (125, "2 min 5 s"),
                                          (3600, "1 h 0 min")])
def test_duration_text(seconds, text):
    assert duration_text(seconds) == text
