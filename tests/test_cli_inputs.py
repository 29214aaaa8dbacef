"""Bad input through the CLI: exit 2, one line per problem naming the file, no traceback, no ledger.
Plus the help texts, and real data end to end (Đà Nẵng on OSM, Sioux Falls on TNTP) when ../shared is here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import REPO, shared_file

from citytwin.twin.cli import main
from citytwin.twin.scenario import load_scenario

OSM_FOOTWAY = """\
<?xml version="1.0" encoding="UTF-8"?>
<osm version="0.6" generator="citytwin tests">
  <node id="1" lat="16.0600" lon="108.2200"/>
  <node id="2" lat="16.0610" lon="108.2212"/>
  <node id="3" lat="16.0620" lon="108.2224"/>
  <way id="10">
    <nd ref="1"/>
    <nd ref="2"/>
    <nd ref="3"/>
    <tag k="highway" v="footway"/>
    <tag k="name" v="Bạch Đằng walk"/>
  </way>
</osm>
"""

TINY_NET = """\
<NUMBER OF ZONES> 3
<NUMBER OF NODES> 3
<FIRST THRU NODE> 1
<NUMBER OF LINKS> 3
<END OF METADATA>

~ init term capacity length free_flow_time b power speed toll link_type ;
  1 2 1800 5 5 0.15 4 0 0 1 ;
  2 1 1800 5 5 0.15 4 0 0 1 ;
  3 1 1800 5 5 0.15 4 0 0 1 ;
"""

TINY_NODES = """\
Node X Y ;
1 0 0 ;
2 5000 0 ;
3 0 5000 ;
"""

TINY_TRIPS = """\
<NUMBER OF ZONES> 3
<TOTAL OD FLOW> 15.0
<END OF METADATA>

Origin  1
    2 :       5.0;    3 :      10.0;
"""


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "citytwin.twin.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def run_bad(scenario: Path, out: Path) -> list[str]:
    """Run a scenario that must fail on its input, in a fresh interpreter as a user would; the lines it
    printed on stderr."""
    result = cli("run", str(scenario), "--out", str(out), "--quiet")
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert not (out / "ledger.parquet").exists() and not (out / "kpis.json").exists()
    lines = result.stderr.strip().splitlines()
    assert lines, "expected a message on stderr"
    return lines


def run_bad_here(scenario: Path, out: Path, capsys) -> list[str]:
    """The same in this process (a fresh interpreter costs ~1.5 s of imports): main returns 2, no raise."""
    capsys.readouterr()
    assert main(["run", str(scenario), "--out", str(out), "--quiet"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert not (out / "ledger.parquet").exists() and not (out / "kpis.json").exists()
    lines = captured.err.strip().splitlines()
    assert lines, "expected a message on stderr"
    return lines


def osm_scenario(tmp_path: Path, osm: Path) -> Path:
    return write(tmp_path / "osm.yaml", f"""\
        name: osm_input
        duration: 1h
        city: {{network: {{source: osm_file, path: {osm}}}}}
        """)


def test_missing_osm_file_is_named(tmp_path):
    osm = tmp_path / "nowhere" / "hai_chau.osm"
    lines = run_bad(osm_scenario(tmp_path, osm), tmp_path / "out")
    assert lines == [f"{osm}: file not found"]


def test_missing_osm_file_relative_to_the_scenario(tmp_path, capsys):
    (tmp_path / "sc").mkdir()
    scenario = write(tmp_path / "sc" / "rel.yaml", """\
        name: rel
        city: {network: {source: osm_file, path: ../data/city.osm, if_missing: error}}
        """)
    lines = run_bad_here(scenario, tmp_path / "out", capsys)
    assert len(lines) == 1
    assert lines[0].endswith("data/city.osm: file not found")
    assert Path(lines[0].split(": ")[0]).resolve() == (tmp_path / "data" / "city.osm").resolve()


def test_empty_osm_file(tmp_path):
    osm = write(tmp_path / "empty.osm", "")
    lines = run_bad(osm_scenario(tmp_path, osm), tmp_path / "out")
    assert lines == [f"{osm}: empty file; expected OSM XML (<osm> with nodes and ways)"]


def test_osm_file_without_a_drivable_road(tmp_path):
    osm = write(tmp_path / "footway.osm", OSM_FOOTWAY)
    lines = run_bad(osm_scenario(tmp_path, osm), tmp_path / "out")
    assert len(lines) == 1
    assert lines[0].startswith(f"{osm}: ") and "no drivable road" in lines[0]


def test_osm_file_that_is_not_xml(tmp_path, capsys):
    osm = write(tmp_path / "notes.osm", "this is not XML at all\n")
    lines = run_bad_here(osm_scenario(tmp_path, osm), tmp_path / "out", capsys)
    assert len(lines) == 1 and lines[0].startswith(f"{osm}: ") and "OSM XML" in lines[0]


def tntp_scenario(tmp_path: Path, net: Path, trips: Path) -> Path:
    return write(tmp_path / "tntp.yaml", f"""\
        name: tntp_input
        duration: 1h
        city: {{network: {{source: tntp, net: {net}}}}}
        traffic: {{vehicle_mix: {{car: {{share: 1.0, pcu: 1.0}}}}}}
        demand: {{kind: tntp, trips: {trips}}}
        hazards: {{incidents: {{rate_per_lane_km_day: 0}}, rain: {{episodes_per_day: 0}}}}
        """)


def test_tntp_net_with_a_broken_header(tmp_path):
    net = write(tmp_path / "tiny_net.tntp", TINY_NET.replace("<NUMBER OF NODES> 3", "<NUMBER OF NODES> three"))
    trips = write(tmp_path / "tiny_trips.tntp", TINY_TRIPS)
    lines = run_bad(tntp_scenario(tmp_path, net, trips), tmp_path / "out")
    assert lines == [f"{net}: header: expected <NUMBER OF NODES> N; got <NUMBER OF NODES> three"]


def test_tntp_net_without_end_of_metadata(tmp_path, capsys):
    net = write(tmp_path / "tiny_net.tntp", TINY_NET.replace("<END OF METADATA>\n", ""))
    trips = write(tmp_path / "tiny_trips.tntp", TINY_TRIPS)
    lines = run_bad_here(tntp_scenario(tmp_path, net, trips), tmp_path / "out", capsys)
    assert len(lines) == 1 and lines[0].startswith(f"{net}: header: ") and "END OF METADATA" in lines[0]


def test_tntp_trips_with_an_od_pair_without_a_path(tmp_path):
    net = write(tmp_path / "tiny_net.tntp", TINY_NET)
    write(tmp_path / "tiny_node.tntp", TINY_NODES)
    trips = write(tmp_path / "tiny_trips.tntp", TINY_TRIPS)
    lines = run_bad(tntp_scenario(tmp_path, net, trips), tmp_path / "out")
    assert len(lines) == 1
    assert lines[0].startswith(f"{trips}: OD pairs: ")
    assert "no path" in lines[0] and "1 -> 3" in lines[0]


def test_tntp_trips_without_the_unreachable_pair_runs(tmp_path):
    """The same tiny network runs once the pair with no path is gone: the error above is about the pair."""
    net = write(tmp_path / "tiny_net.tntp", TINY_NET)
    write(tmp_path / "tiny_node.tntp", TINY_NODES)
    trips = write(tmp_path / "tiny_trips.tntp",
                  TINY_TRIPS.replace("3 :      10.0;", "").replace("<TOTAL OD FLOW> 15.0", "<TOTAL OD FLOW> 5.0"))
    out = tmp_path / "out"
    assert main(["run", str(tntp_scenario(tmp_path, net, trips)), "--out", str(out), "--quiet", "--no-report"]) == 0
    kpis = json.loads((out / "kpis.json").read_text(encoding="utf-8"))
    assert kpis["kpis"]["trips_completed"]["value"] + kpis["kpis"]["trips_unfinished"]["value"] == pytest.approx(5.0)


def test_malformed_yaml_gives_line_and_column(tmp_path):
    scenario = write(tmp_path / "broken.yaml", """\
        name: broken
        seed: 1
          duration: 1h
        """)
    lines = run_bad(scenario, tmp_path / "out")
    assert len(lines) == 1
    assert re.fullmatch(rf"{re.escape(str(scenario))}: line 3, column \d+: malformed YAML: .+", lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_several_schema_problems_one_line_each(tmp_path, capsys):
    scenario = write(tmp_path / "many.yaml", """\
        name: many
        duration: -1h
        traffic: {platoon_pcu: 0}
        demand: {kind: od, peak_direction_share: 0.2}
        """)
    lines = run_bad_here(scenario, tmp_path / "out", capsys)
    assert len(lines) == 3
    assert all(line.startswith(f"{scenario}: ") for line in lines)
    fields = sorted(line.split(": ")[1] for line in lines)
    assert fields == ["demand.peak_direction_share", "duration", "traffic.platoon_pcu"]


# --- help -------------------------------------------------------------------------------------------


def test_help_texts():
    script = Path(sys.executable).with_name("citytwin")
    prog = [str(script)] if script.exists() else [sys.executable, "-m", "citytwin.twin.cli"]
    top = subprocess.run([*prog, "--help"], capture_output=True, text=True)
    assert top.returncode == 0
    for word in ("validate", "run", "ledger.parquet", "kpis.json", "report.html"):
        assert word in top.stdout
    run = subprocess.run([*prog, "run", "--help"], capture_output=True, text=True)
    assert run.returncode == 0
    for word in ("ledger.parquet", "kpis.json", "report.html", "--out", "--seed", "--no-report", "--quiet"):
        assert word in run.stdout
    validate = subprocess.run([*prog, "validate", "--help"], capture_output=True, text=True)
    assert validate.returncode == 0
    assert "one line per problem" in validate.stdout and "exits 2" in validate.stdout
    bare = subprocess.run(prog, capture_output=True, text=True)
    assert bare.returncode == 2
    assert "usage: citytwin" in bare.stdout + bare.stderr and "run" in bare.stdout + bare.stderr
    assert "Traceback" not in bare.stderr


def test_unknown_verb_and_missing_argument_exit_2(capsys):
    with pytest.raises(SystemExit) as err:
        main(["simulate"])
    assert err.value.code == 2
    with pytest.raises(SystemExit) as err:
        main(["run"])
    assert err.value.code == 2
    assert "scenario" in capsys.readouterr().err


# --- real data end to end -----------------------------------------------------------------------------


def test_danang_osm_end_to_end(tmp_path):
    osm = shared_file("osm/danang_haichau.osm")
    scenario = write(tmp_path / "danang_short.yaml", f"""\
        extends: {REPO / "scenarios" / "danang_haichau.yaml"}
        duration: 2h
        start: "06:30"
        demand: {{trips_per_day: 60000}}
        city: {{network: {{path: {osm}}}}}  # where conftest found it (CITYTWIN_SHARED may move ../shared)
        """)
    out = tmp_path / "out"
    assert main(["run", str(scenario), "--out", str(out), "--quiet", "--no-report"]) == 0
    kpis = json.loads((out / "kpis.json").read_text(encoding="utf-8"))
    assert kpis["scenario"] == "danang_haichau" and kpis["start_clock"] == "06:30" and kpis["duration_s"] == 7200
    city = kpis["city"]
    assert city["source"] == "osm_file", city  # not the synthetic stand-in
    assert "synthetic" not in city["name"] and osm.exists()
    assert city["links"] > 1000
    assert kpis["kpis"]["mean_travel_time"]["value"] > 0
    assert kpis["kpis"]["trips_completed"]["value"] > 1000
    assert (out / "ledger.parquet").exists()


def test_sioux_falls_end_to_end(tmp_path):
    sioux = "tntp/SiouxFalls/SiouxFalls_{}.tntp"
    net, nodes, trips = (shared_file(sioux.format(k)) for k in ("net", "node", "trips"))
    scenario = write(tmp_path / "sioux_short.yaml", f"""\
        extends: {REPO / "scenarios" / "sioux_falls.yaml"}
        duration: 1h
        demand: {{scale: 0.3, trips: {trips}}}
        city: {{network: {{net: {net}, nodes: {nodes}}}}}
        """)
    loaded = load_scenario(scenario)
    assert loaded.demand.scale == 0.3 and loaded.duration == 3600
    # the demand's period, clipped to what the run has left after the demand's start
    period_h = min(loaded.demand.period, loaded.duration - loaded.demand.start) / 3600.0
    out = tmp_path / "out"
    assert main(["run", str(scenario), "--out", str(out), "--quiet", "--no-report"]) == 0
    kpis = json.loads((out / "kpis.json").read_text(encoding="utf-8"))
    assert kpis["city"]["source"] == "tntp" and kpis["city"]["links"] == 76
    vehicles = kpis["kpis"]["trips_completed"]["value"] + kpis["kpis"]["trips_unfinished"]["value"]
    assert vehicles == pytest.approx(360_600 * 0.3 * period_h, rel=0.01)
    assert kpis["kpis"]["trips_completed"]["value"] > 0.5 * vehicles
    assert kpis["kpis"]["mean_travel_time"]["value"] > 0
