"""A whole run through the CLI: outputs, KPIs with units, repeatability, and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from citytwin.twin.cli import main
from citytwin.twin.ledger import events, read_ledger

SMALL = """\
name: small
seed: 3
start: "06:00"
duration: 3h
city: {network: {source: synthetic, width_m: 1500, height_m: 1000}}
demand: {kind: od, trips_per_day: 60000}
hazards:
  incidents: {rate_per_lane_km_day: 0.5}
  rain:
    episodes_per_day: 0
    low_node_share: 0.1
    episodes: [{start: "06:30", duration: 90min, intensity_mm_h: 90}]
"""


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    path = tmp_path_factory.mktemp("sc") / "small.yaml"
    path.write_text(SMALL, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def first_run(scenario, tmp_path_factory):
    out = tmp_path_factory.mktemp("run1")
    assert main(["run", str(scenario), "--out", str(out), "--quiet"]) == 0
    return out


def test_run_writes_ledger_kpis_and_report(first_run):
    kpis = json.loads((first_run / "kpis.json").read_text(encoding="utf-8"))
    for key in ("mean_travel_time", "mean_delay", "peak_congested_km", "incident_count", "incident_mean_duration"):
        assert set(kpis["kpis"][key]) == {"value", "unit", "label"}
    assert kpis["kpis"]["mean_travel_time"]["unit"] == "min"
    assert kpis["kpis"]["mean_travel_time"]["value"] > 0
    assert kpis["kpis"]["mean_delay"]["value"] < kpis["kpis"]["mean_travel_time"]["value"]
    assert set(kpis["series"]["congestion_index_by_hour"]["x"]) == {6, 7, 8}
    html = (first_run / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 4


def test_ledger_holds_ground_truth_and_traffic(first_run):
    table = read_ledger(first_run / "ledger.parquet")
    kinds = set(table["kind"].to_pylist())
    assert {"run.start", "run.end", "trip.end", "link.state", "link.flow", "incident.start", "rain.start",
            "flood.start", "link.closed"} <= kinds
    trips = events(table, "trip.end")
    assert (trips["travel_time_s"] >= trips["free_flow_s"] - 5.0).all()  # never faster than free flow (one step)
    flows = events(table, "link.flow")
    states = events(table, "link.state")
    assert set(flows["t"]) == set(states["t"])
    assert (flows["entries"] >= 0).all()
    # Links at a flooded junction close when it floods.
    floods = events(table, "flood.start")
    closed = events(table, "link.closed")
    assert len(closed) >= len(floods) > 0


def test_same_seed_same_ledger_byte_for_byte(scenario, first_run, tmp_path):
    assert main(["run", str(scenario), "--out", str(tmp_path / "again"), "--quiet", "--no-report"]) == 0
    assert (tmp_path / "again" / "ledger.parquet").read_bytes() == (first_run / "ledger.parquet").read_bytes()
    assert main(["run", str(scenario), "--out", str(tmp_path / "other"), "--quiet", "--no-report", "--seed", "4"]) == 0
    assert (tmp_path / "other" / "ledger.parquet").read_bytes() != (first_run / "ledger.parquet").read_bytes()


def test_bad_input_exits_2_with_the_field_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncity: {network: {source: osmm}}\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "citytwin.twin.cli", "run", str(bad), "--out", str(tmp_path / "o")],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{bad}: city.network.source: expected one of synthetic, osm_file, osm_place, tntp; got 'osmm'"
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()


def test_validate_exit_codes(scenario, tmp_path, capsys):
    assert main(["validate", str(scenario)]) == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntraffic: {platoon_pcu: 0}\n", encoding="utf-8")
    assert main(["validate", str(scenario), str(bad)]) == 2
    assert f"{bad}: traffic.platoon_pcu: input should be greater than or equal to 1; got 0" in capsys.readouterr().err
