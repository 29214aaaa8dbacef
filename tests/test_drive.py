"""`citytwin ioc serve` and `citytwin drive` side by side: the device fleet in wall-clock time into the live
reference IOC over MQTT and NGSI-LD HTTP, end-to-end times from its notifications and alerts, thresholds
setting the exit code, and every output written. Short and bounded: a few wall seconds at a high speedup."""

from __future__ import annotations

import csv
import json

import pytest

from citytwin.ioc.server.process import ServerProcess, provision_key
from citytwin.twin.cli import main
from conftest import mqtt_address

# Rain from the start floods the lowest junctions within the first virtual hour; gauges, detectors and
# cameras report every few virtual minutes.
SCENARIO = """\
name: drive-test
seed: 3
start: "07:00"
duration: 3h
city: {network: {source: synthetic, width_m: 1500, height_m: 1000}}
demand: {kind: od, trips_per_day: 30000}
hazards:
  incidents: {rate_per_lane_km_day: 0.5}
  rain:
    episodes_per_day: 0
    low_node_share: 0.15
    drainage_mm_h: 10
    episodes: [{start: "07:00", duration: 2h, intensity_mm_h: 120}]
devices:
  fleets:
    - {type: water_level, name: wl, interval: 5min, placement: {budget: 8, strategy: hotspots}}
    - {type: detector, name: det, interval: 5min, placement: {budget: 6, strategy: major_roads}}
    - {type: camera, name: cam, interval: 1min, placement: {budget: 4, strategy: max_coverage}, counts: false}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    host, port = mqtt_address()
    tmp = tmp_path_factory.mktemp("ioc")
    db_url = f"sqlite:///{tmp}/ioc.db"
    admin = provision_key(db_url, "admin", rate_per_s=1e6)
    with ServerProcess(db_url, tmp / "server.log", extra_args=("--mqtt", f"mqtt://{host}:{port}")) as process:
        yield process, admin, f"mqtt://{host}:{port}"


def _drive(tmp_path, server, *extra, monkeypatch=None):
    process, admin, mqtt = server
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "drive.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["drive", str(path), "--target", process.url, "--admin-key", admin, "--speedup", "900",
                 "--duration", "8s", "--out", str(out), "--quiet", *extra])
    return code, out


def test_drive_over_mqtt_measures_end_to_end_and_sets_the_exit_code(tmp_path, server):
    _, _, mqtt = server
    code, out = _drive(tmp_path, server, "--mqtt", mqtt, "--threshold", "errors<5%",
                       "--threshold", "mqtt.publish.p99<10s", "--threshold", "mqtt.publish.p50<1us")
    assert code == 99  # the last threshold cannot hold: p50 under a microsecond
    summary = json.loads((out / "summary.json").read_text())
    assert {"mqtt.publish", "e2e.entity", "e2e.alert"} <= set(summary["keys"])
    verdicts = {t["expr"]: t["ok"] for t in summary["thresholds"]}
    assert verdicts == {"errors<5%": True, "mqtt.publish.p99<10s": True, "mqtt.publish.p50<1us": False}
    with (out / "stats.csv").open() as f:
        rows = list(csv.DictReader(f))
    names = {r["Name"] for r in rows}
    assert "mqtt.publish" in names and "Aggregated" in names
    published = next(r for r in rows if r["Name"] == "mqtt.publish")
    assert int(published["Request Count"]) > 50
    for name in ("stats_history.csv", "failures.csv", "report.html", "ledger.parquet"):
        assert (out / name).exists()


def test_drive_over_ngsi_ld_http_holds_its_thresholds(tmp_path, server):
    code, out = _drive(tmp_path, server, "--threshold", "ngsild.upsert.errors<1%", "--threshold", "ngsild.count>5")
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert all(t["ok"] for t in summary["thresholds"])


def test_a_bad_threshold_is_bad_input(tmp_path, server, capsys):
    code, out = _drive(tmp_path, server, "--threshold", "mqtt.publish.p99<<3ms")
    assert code == 2
    assert "--threshold" in capsys.readouterr().err
    assert not out.exists()


def test_an_unreachable_ioc_fails_cleanly(tmp_path, server, capsys):
    process, admin, _ = server
    path = tmp_path / "drive.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    code = main(["drive", str(path), "--target", "http://127.0.0.1:9", "--admin-key", admin, "--duration", "2s",
                 "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 1
    assert "127.0.0.1:9" in capsys.readouterr().err


def test_two_ray_workers_send_what_one_does_and_merge_exactly(tmp_path, server):
    """Same seed: the shards' message counts add up to the one-worker run's, and the merged histogram holds
    every one of them."""
    _, _, mqtt = server
    one_code, one = _drive(tmp_path / "one", server, "--mqtt", mqtt)
    two_code, two = _drive(tmp_path / "two", server, "--mqtt", mqtt, "--workers", "2")
    assert (one_code, two_code) == (0, 0)
    s1 = json.loads((one / "summary.json").read_text())
    s2 = json.loads((two / "summary.json").read_text())
    assert s2["meta"]["messages"] == s1["meta"]["messages"] > 0
    assert len(s2["meta"]["shard_messages"]) == 2 and all(n > 0 for n in s2["meta"]["shard_messages"])
    published = [json.loads((d / "summary.json").read_text())["keys"]["mqtt.publish"]["count"] for d in (one, two)]
    assert published[0] == published[1] == s1["meta"]["messages"]


def drive_while_the_ioc_dies(tmp_path, scenario: str, marker: str, *args: str) -> tuple[int, float, dict]:
    """Drive `scenario`; a little after `marker` first shows in the IOC's access log, kill the IOC. The exit
    code, the wall seconds the drive took, and its summary."""
    import threading
    import time

    db_url = f"sqlite:///{tmp_path}/ioc.db"
    admin = provision_key(db_url, "admin", rate_per_s=1e6)
    path = tmp_path / "drive.yaml"
    path.write_text(scenario, encoding="utf-8")
    out = tmp_path / "out"

    def kill_when_sending(process: ServerProcess) -> None:
        deadline = time.monotonic() + 60
        while marker not in process.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(2.0)
        process.kill()

    with ServerProcess(db_url, tmp_path / "server.log") as process:
        threading.Thread(target=kill_when_sending, args=(process,), daemon=True).start()
        started = time.monotonic()
        code = main(["drive", str(path), "--target", process.url, "--admin-key", admin, "--out", str(out),
                     "--quiet", "--threshold", "errors<1%", *args])
        took = time.monotonic() - started
    return code, took, json.loads((out / "summary.json").read_text())


def test_the_ioc_going_down_mid_run_is_counted_not_waited_for(tmp_path):
    """Kill the IOC a few seconds in: the schedule goes on, the failures are connection errors, the run ends on
    time and its results are complete."""
    code, took, summary = drive_while_the_ioc_dies(tmp_path, SCENARIO, "entityOperations/upsert",
                                                   "--speedup", "900", "--duration", "8s")
    assert code == 99
    assert took < 60
    upsert = summary["keys"]["ngsild.upsert"]
    assert upsert["count"] > 0 and upsert["errors"].get("connection", 0) > 0
    assert upsert["count"] > upsert["errors"]["connection"]  # what went before the kill succeeded


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_writes_the_results_for_the_time_run(tmp_path, server, workers):
    """One process, or Ray workers asked to stop by the driver: either way the results so far are written."""
    import signal
    import subprocess
    import sys
    import time

    process, admin, _ = server
    path = tmp_path / "drive.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "citytwin.twin.cli", "drive", str(path), "--target", process.url,
                              "--admin-key", admin, "--speedup", "900", "--duration", "60s", "--out", str(out),
                              "--quiet", "--workers", workers], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    log = process.log_path
    before = log.read_text().count("entityOperations/upsert")
    deadline = time.monotonic() + 60
    while log.read_text().count("entityOperations/upsert") <= before and time.monotonic() < deadline:
        time.sleep(0.1)  # until this drive's first readings reach the IOC
    time.sleep(2.0)
    child.send_signal(signal.SIGTERM)
    code = child.wait(timeout=60)
    assert code == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["interrupted"] is True and summary["meta"]["workers"] == int(workers)
    assert summary["keys"]["ngsild.upsert"]["count"] > 0
    assert (out / "report.html").exists() and (out / "stats.csv").exists()


def test_ray_workers_show_the_merged_live_table(tmp_path, server):
    import io

    from rich.console import Console

    from citytwin.twin.drive.driver import DriveOptions, drive
    from citytwin.twin.scenario.loader import load_scenario

    process, admin, _ = server
    path = tmp_path / "drive.yaml"
    path.write_text(SCENARIO, encoding="utf-8")
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200)
    options = DriveOptions(target=process.url, admin_key=admin, speedup=900, duration_s=6.0, out=tmp_path / "out",
                           workers=2, live_every_s=0.5)
    result = drive(load_scenario(path), options, console=console)
    assert result.exit_code == 0
    shown = screen.getvalue()
    assert "citytwin drive" in shown and "ngsild.upsert" in shown and "in flight" in shown


# Residents who notice garbage at home and potholes, report in the app, on the web and by hotline, and check
# every half hour; all-day crews: requests open and close within the few wall seconds of the drive.
PEOPLE = """\
name: drive-people
seed: 11
start: "06:00"
duration: 8h
city: {network: {source: synthetic, width_m: 1500, height_m: 1000}}
demand: {kind: od, trips_per_day: 0}
hazards:
  incidents: {rate_per_lane_km_day: 0}
  rain: {episodes_per_day: 0}
population: {residents: 20000}
field_reporting:
  problems:
    garbage: {category: waste, site: homes, rate: 3.0, service_time: 30min}
    pothole: {category: road-damage, site: roads, rate: 1.0, service_time: 40min}
  citizens: {propensity_mean: 0.05, notice_at_home_per_day: 1.0, check_interval: 30min}
  organisation:
    crews:
      waste: {crews: 4, shift: {start: "00:00", end: "00:00"}}
      road-damage: {crews: 2, shift: {start: "00:00", end: "00:00"}}
    deadlines: {waste: 4h}
"""


def test_citizens_operators_and_crews_close_the_loop_over_open311_and_the_operator_api(tmp_path, server):
    """Reports go out as Open311 POSTs; the ids the IOC gives are what reporters poll and what operators and
    crews move through the workflow; the reporters see their requests closed (e2e.report)."""
    import httpx
    import pandas as pd

    from citytwin.twin.ledger import events, read_ledger

    process, admin, _ = server
    path = tmp_path / "people.yaml"
    path.write_text(PEOPLE, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["drive", str(path), "--target", process.url, "--admin-key", admin, "--speedup", "7200",
                 "--out", str(out), "--quiet", "--threshold", "open311.post.errors<1%", "--threshold",
                 "e2e.report.count>0"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    keys = summary["keys"]
    for key in ("open311.post", "open311.token", "open311.get", "operator.get", "operator.assign", "operator.start",
                "operator.resolve", "operator.close", "e2e.report"):
        assert keys[key]["count"] > 0, key
    assert summary["meta"]["reports"] == keys["open311.post"]["count"] and summary["meta"]["devices"] == 0
    # The field-reporting KPIs, by the simulated run's code, from what the live IOC answered.
    reporting = summary["meta"]["field_reporting"]
    assert 0 <= reporting["closed_within_deadline"]["value"] <= 100

    table = read_ledger(out / "ledger.parquet")
    submitted = events(table, "report.submitted")
    assert len(submitted) == keys["open311.post"]["count"] - keys["open311.post"]["error_count"]
    ids = set(submitted.request_id.astype(int))
    # The IOC gave these ids: each is a request there, filed by the drive's residents' key.
    headers = {"X-API-Key": admin}
    with httpx.Client(base_url=process.url, headers=headers, timeout=10) as client:
        for rid in sorted(ids)[:20]:
            assert client.get(f"/operator/v1/requests/{rid}").json()["reporter"]["account_id"].startswith("resident-")
    # The workflow steps the operators and crews took were on those ids, and some reached closed.
    status = events(table, "request.status")
    # (requests an earlier test left waiting in the IOC's queue may be among them: operators take what it shows)
    assert len(set(status.subject.astype(int)) & ids) > 0
    assert status[status.subject.astype(int).isin(ids)].status.eq("closed").sum() > 0
    checked = events(table, "report.checked")
    assert len(checked) > 0 and set(checked.request_id.dropna().astype(int)) <= ids
    assert isinstance(checked, pd.DataFrame)


def test_two_ray_workers_share_the_reports_each_sent_once(tmp_path, server):
    """Each worker runs the same world and sends the reports whose key it owns: both send some, no report is
    sent by both, and the merged counts are the shards' sum."""
    from citytwin.twin.ledger import events, read_ledger

    process, admin, _ = server
    path = tmp_path / "people.yaml"
    path.write_text(PEOPLE, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["drive", str(path), "--target", process.url, "--admin-key", admin, "--speedup", "7200",
                 "--out", str(out), "--quiet", "--workers", "2", "--threshold", "errors<1%"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    shards = summary["meta"]["shard_reports"]
    assert len(shards) == 2 and all(n > 0 for n in shards)
    assert summary["keys"]["open311.post"]["count"] == sum(shards) == summary["meta"]["reports"]
    assert summary["keys"]["e2e.report"]["count"] > 0
    sent = [set(events(read_ledger(out / f"shard-{i}" / "ledger.parquet"), "report.submitted").subject)
            for i in range(2)]
    assert not sent[0] & sent[1] and len(sent[0]) + len(sent[1]) == sum(shards)


def test_from_fast_forwards_the_day_and_a_shape_sets_the_pace(tmp_path, server):
    """--from 10:00: nothing made before 10:00 is sent (those reports stay in memory); --shape step: 2 s at
    1x then 4x, so the four hours left take 2 + (4 h - 1 h) / 4x wall seconds."""
    from citytwin.twin.ledger import events, read_ledger

    process, admin, _ = server
    path = tmp_path / "people.yaml"
    path.write_text(PEOPLE, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["drive", str(path), "--target", process.url, "--admin-key", admin, "--speedup", "1800",
                 "--from", "10:00", "--shape", "step:2s:1,4", "--out", str(out), "--quiet"])
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    meta = summary["meta"]
    assert (meta["from"], meta["virtual_from_s"], meta["shape"]) == ("10:00", 4 * 3600.0, "step:2s:1,4")
    assert meta["virtual_s"] == 8 * 3600.0
    expected_wall = 2.0 + (4 * 3600.0 - 3600.0) / (4 * 1800.0)  # 3.5 s
    assert expected_wall <= meta["wall_s"] < expected_wall + 6.0  # + settling, on a shared machine
    submitted = events(read_ledger(out / "ledger.parquet"), "report.submitted")
    assert len(submitted) == summary["keys"]["open311.post"]["count"] > 0
    assert submitted.t.min() >= 4 * 3600.0


@pytest.mark.parametrize("args, says", [(["--from", "25:00"], "--from"), (["--from", "7h"], "ends before it"),
                                        (["--shape", "wave:1m"], "--shape"), (["--shape", "ramp:1m:0-0"], "never")])
def test_a_bad_pace_is_bad_input(tmp_path, server, capsys, args, says):
    process, admin, _ = server
    path = tmp_path / "people.yaml"
    path.write_text(PEOPLE.replace("duration: 8h", "duration: 6h"), encoding="utf-8")
    code = main(["drive", str(path), "--target", process.url, "--admin-key", admin, "--out", str(tmp_path / "out"),
                 "--quiet", *args])
    assert code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_people_carry_on_when_the_ioc_dies(tmp_path):
    """Residents, operators and crews whose IOC is gone: their calls fail as connection errors, nobody waits
    for an answer that will not come, and the drive ends on time."""
    code, took, summary = drive_while_the_ioc_dies(tmp_path, PEOPLE, "/requests.json", "--speedup", "3600")
    assert code == 99
    assert took < 60
    keys = summary["keys"]
    failed = sum(k["errors"].get("connection", 0) for name, k in keys.items() if not name.startswith("e2e."))
    assert failed > 0 and keys["open311.post"]["count"] > keys["open311.post"]["errors"].get("connection", 0)
    assert summary["meta"]["virtual_s"] == 8 * 3600.0  # the whole day ran


def test_operators_triage_what_the_ioc_queue_shows_even_a_request_the_twin_did_not_file(tmp_path):
    """A resident's report filed at the IOC by someone else (another app) before the drive: the twin's
    operators find it in the IOC's queue, route it, and its crews fix it and close it. (An IOC of its own:
    the shared one's queue holds what other tests left.)"""
    import httpx

    from citytwin.twin.drive.provision import create_key

    db_url = f"sqlite:///{tmp_path}/ioc.db"
    admin = provision_key(db_url, "admin", rate_per_s=1e6)
    path = tmp_path / "people.yaml"
    path.write_text(PEOPLE, encoding="utf-8")
    with ServerProcess(db_url, tmp_path / "server.log") as process:
        outsider = create_key(process.url, admin, "citizen", label="another app")
        with httpx.Client(base_url=process.url, timeout=10) as client:
            posted = client.post("/requests.json", headers={"X-API-Key": outsider},
                                 data={"service_code": "waste", "lat": "16.0678", "long": "108.2208",
                                       "description": "Rác tồn đọng nhiều ngày"})
            assert posted.status_code == 201
            rid = int(posted.json()[0]["service_request_id"])
        code = main(["drive", str(path), "--target", process.url, "--admin-key", admin, "--speedup", "3600",
                     "--out", str(tmp_path / "out"), "--quiet"])
        with httpx.Client(base_url=process.url, headers={"X-API-Key": admin}, timeout=10) as client:
            detail = client.get(f"/operator/v1/requests/{rid}").json()
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["keys"]["operator.queue"]["count"] > 0
    steps = [event["status"] for event in detail["history"]]
    assert detail["status"] == "closed" and "acknowledged" in steps and "in_progress" in steps
    assert all(event["actor"].startswith("citytwin drive") for event in detail["history"][1:])
