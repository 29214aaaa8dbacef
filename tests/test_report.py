"""The HTML report: one self-contained file, its figures valid PNGs, its text escaped and UTF-8."""

from __future__ import annotations

import base64
import re

import numpy as np
import pandas as pd
import pytest

from citytwin.twin.city.model import City, make_links, make_nodes
from citytwin.twin.kpi.devices import device_kpis
from citytwin.twin.kpi.field_reporting import field_reporting_kpis
from citytwin.twin.ledger import KINDS, Ledger
from citytwin.twin.report.figures import clock_label, parse_clock
from citytwin.twin.report.html import format_value, hazard_intervals, problem_positions, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IMG_SRC = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')
STREET = "Đường Bạch Đằng"


def grid_city() -> City:
    """4×4 grid, 100 m apart: horizontal streets two-way, vertical ones one-way north, node 5 signalised."""
    ids = [f"n{r}{c}" for r in range(4) for c in range(4)]
    nodes = make_nodes(ids, [100.0 * (i % 4) for i in range(16)], [100.0 * (i // 4) for i in range(16)],
                       signalised=[i == 5 for i in range(16)])
    src, dst = [], []
    for r in range(4):
        for c in range(3):
            a, b = 4 * r + c, 4 * r + c + 1
            src += [a, b]
            dst += [b, a]
    for r in range(3):
        for c in range(4):
            src.append(4 * r + c)
            dst.append(4 * (r + 1) + c)
    m = len(src)
    names = [STREET if i == 0 else "" for i in range(m)]
    classes = ["arterial" if i < 6 else "local" for i in range(m)]
    links = make_links([f"L{i}" for i in range(m)], src, dst, [100.0] * m, [2 if i < 6 else 1 for i in range(m)],
                       [12.5] * m, [1800.0] * m, [0.2] * m, classes, names)
    return City(name="Đà Nẵng (test grid)", source="osm_file", nodes=nodes, links=links)


def busy_ledger(city: City):
    ledger = Ledger()
    m = len(city.links)
    for t in (3600.0, 7200.0, 10800.0):
        speeds = np.full(m, 12.5)
        if t == 7200.0:
            speeds[:8] = np.linspace(1.0, 8.0, 8)  # L0, on Bạch Đằng, crawls the most
        ledger.append_many("link.state", [t] * m, list(city.links.ids),
                           on_link=np.ones(m), speed_mps=speeds, density_pcu_km=np.full(m, 20.0),
                           queue=np.zeros(m))
    ledger.append("incident.start", 6000.0, "L3", cause="crash", capacity_factor=0.3, duration_s=1800.0)
    ledger.append("incident.end", 7800.0, "L3", cause="crash")
    ledger.append("rain.start", 5000.0, "", intensity_mm_h=30.0, duration_s=3600.0)
    ledger.append("rain.end", 8600.0, "")
    ledger.append("flood.start", 6500.0, "n10", depth_m=0.3)  # never ends: lasts to the end of the run
    return ledger.table()


def kpis_for(series: bool = True) -> dict:
    hours = list(range(4))
    return {
        "scenario": "test", "seed": 7, "duration_s": 14400, "start_clock": "06:00",
        "kpis": {
            "mean_travel_time": {"value": 11.234, "unit": "min", "label": "Mean travel time"},
            "trips_completed": {"value": 12345, "unit": "trips", "label": "Trips completed"},
            "incident_mean_duration": {"value": None, "unit": "min", "label": "Mean incident duration"},
        },
        "series": {
            "congestion_index_by_hour": {"unit": "%", "x": hours if series else [],
                                         "values": [5.0, 40.0, 12.0, 3.0] if series else []},
            "vehicles_on_network": {"unit": "veh", "x": [3600.0, 7200.0, 10800.0] if series else [],
                                    "values": [100.0, 400.0, 150.0] if series else []},
            "congested_km": {"unit": "km", "x": [3600.0, 7200.0, 10800.0] if series else [],
                             "values": [0.0, 0.8, 0.1] if series else []},
        },
        "peak": {"t": 7200.0 if series else None},
    }


def images(html: str) -> list[bytes]:
    return [base64.b64decode(b64, validate=True) for b64 in IMG_SRC.findall(html)]


def test_report_is_one_self_contained_html_file(tmp_path):
    city = grid_city()
    out = write_report(tmp_path / "out" / "report.html", city=city, ledger=busy_ledger(city), kpis=kpis_for())
    assert out.is_file()
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    assert html.count("<html") == 1 and html.rstrip().endswith("</html>")
    assert '<meta charset="utf-8">' in html
    pngs = images(html)
    assert len(pngs) >= 5  # map, three series, hazard timeline
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', html)
    assert "<script" not in html.lower()


def test_report_shows_kpis_city_and_streets(tmp_path):
    city = grid_city()
    html = write_report(tmp_path / "r.html", city=city, ledger=busy_ledger(city), kpis=kpis_for()).read_text(
        encoding="utf-8")
    for text in ("Mean travel time", "11.2", "Trips completed", "12,345", "Mean incident duration", "—"):
        assert text in html
    assert "© OpenStreetMap contributors" in html
    assert "Đà Nẵng (test grid)" in html
    assert "06:00 to 10:00" in html
    busiest = html.split("Busiest links at the peak", 1)[1]
    assert STREET in busiest  # UTF-8 text, not mangled or turned into entities
    assert busiest.index(">L0<") < busiest.index(">L1<")  # most congested first
    assert "No hazards in this run" not in html
    assert "1 incident episode" in html and "1 flood episode" in html and "1 rain episode" in html


def test_report_escapes_text(tmp_path):
    city = grid_city()
    kpis = kpis_for()
    kpis["kpis"]["odd"] = {"value": 1, "unit": "<b>", "label": "<script>alert(1)</script>"}
    html = write_report(tmp_path / "r.html", city=city, ledger=busy_ledger(city), kpis=kpis,
                        title="A & B").read_text(encoding="utf-8")
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "<title>A &amp; B</title>" in html


def test_empty_ledger_still_renders(tmp_path):
    city = grid_city()
    html = write_report(tmp_path / "r.html", city=city, ledger=Ledger().table(),
                        kpis=kpis_for(series=False)).read_text(encoding="utf-8")
    assert "No hazards in this run" in html
    assert "every link in grey" in html
    assert "no busiest links" in html
    pngs = images(html)
    assert len(pngs) == 4  # map and the three series, each saying it has no data
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)


def test_hazards_pair_by_subject_and_order():
    ledger = Ledger()
    ledger.append("incident.start", 10.0, "A", cause="crash")
    ledger.append("incident.start", 20.0, "B", cause="breakdown")
    ledger.append("incident.end", 30.0, "B")
    ledger.append("incident.end", 40.0, "A")
    ledger.append("incident.start", 50.0, "A", cause="crash")
    ledger.append("incident.end", 60.0, "C")  # nothing open on C: no episode
    ledger.append("link.closed", 70.0, "A", cause="flood")
    hazards = hazard_intervals(ledger.table(), duration_s=100.0)
    spans = [(h.kind, h.subject, h.start, h.end, h.open_ended, h.cause) for h in hazards]
    assert spans == [
        ("incident", "A", 10.0, 40.0, False, "crash"),
        ("incident", "B", 20.0, 30.0, False, "breakdown"),
        ("incident", "A", 50.0, 100.0, True, "crash"),
        ("closure", "A", 70.0, 100.0, True, "flood"),
    ]


@pytest.mark.parametrize("value, text", [(None, "—"), (float("nan"), "—"), (12345, "12,345"), (11.234, "11.2"),
                                         (3.14159, "3.14"), (0.01234, "0.0123"), (2500.4, "2,500"), (7.0, "7")])
def test_format_value(value, text):
    assert format_value(value) == text


def test_clock_labels():
    start = parse_clock("06:30")
    assert clock_label(0, start) == "06:30"
    assert clock_label(5400, start) == "08:00"
    assert clock_label(86400, parse_clock("00:00")) == "24:00"
    assert clock_label(86400 + 60, parse_clock("00:00")) == "+1d 00:01"
    assert clock_label(86400, start) == "+1d 06:30"


# -- field reporting -------------------------------------------------------------------------------------

def field_ledger(city: City):
    """Busy traffic plus three problems: pb1 on link L0 reported twice and fixed, pb2 at junction n11
    reported and still open, pb3 (placed by lon/lat only) never reported."""
    ledger = Ledger()
    for row in busy_ledger(city).to_pylist():  # the traffic rows first, as a run writes them
        kind = row.pop("kind")
        fields = {k: v for k, v in row.items() if k in KINDS[kind] and v is not None}
        ledger.append(kind, row["t"], row["subject"], **fields)
    ledger.append("problem.start", 600.0, "pb1", cause="pothole", category="road-damage", severity=3, link="L0",
                  node="n00", lon=108.2, lat=16.05)
    ledger.append("problem.start", 900.0, "pb2", cause="streetlight", category="streetlight", severity=1,
                  link="", node="n11", lon=108.201, lat=16.051)
    ledger.append("problem.start", 1200.0, "pb3", cause="garbage", category="waste", severity=2, link=None,
                  node=None, lon=108.2029, lat=16.0529)
    for t, key, rid, channel, pb, cat, dup in ((1800.0, "r1", 1, "app", "pb1", "road-damage", None),
                                               (2400.0, "r2", 2, "hotline", "pb1", "road-damage", 1),
                                               (3000.0, "r3", 3, "web", "pb2", "streetlight", None)):
        ledger.append("report.submitted", t, key, channel=channel, category=cat, problem=pb, resident=rid,
                      request_id=rid, duplicate_of=dup, deadline_t=t + 7200.0, lon=108.2, lat=16.05)
        ledger.append("request.status", t, str(rid), status="received", actor="citizen", published=dup is not None,
                      duplicate_of=dup)
    ledger.append("request.status", 2500.0, "2", status="closed", actor="op", published=True, duplicate_of=1)
    ledger.append("request.status", 2700.0, "1", status="acknowledged", actor="op", published=True)
    ledger.append("problem.fixed", 5000.0, "pb1", crew="road-damage-1", request_id=1)
    ledger.append("request.status", 5400.0, "1", status="closed", actor="road-damage-1", published=True)
    ledger.append("report.feedback", 9000.0, "r1", satisfaction=4.2, published=True, request_id=1,
                  duration_s=7200.0)
    ledger.append("call.answered", 2300.0, "r2", wait_s=12.0, actor="op-1")
    return ledger.table()


def field_kpis(city: City) -> dict:
    kpis = kpis_for()
    kpis["field_reporting"] = field_reporting_kpis(field_ledger(city), start_s=parse_clock("06:00"),
                                                   duration_s=kpis["duration_s"])
    return kpis


def test_report_field_reporting_section(tmp_path):
    city = grid_city()
    html = write_report(tmp_path / "r.html", city=city, ledger=field_ledger(city), kpis=field_kpis(city)).read_text(
        encoding="utf-8")
    assert '<section id="field-reporting">' in html and "phản ánh hiện trường" in html
    section = html.split('<section id="field-reporting">', 1)[1].split("</section>", 1)[0]
    # the national indicator leads the table, with its target and whether the run met it
    first_row = section.split("<tr", 2)[2]
    assert "L1.N1.PN2.01" in first_row and ">100 %<" in first_row and ">met<" in first_row
    for text in ("Field reports by channel", "Backlog over time", "Time to close by category",
                 "Share closed within deadline by category", "Reporter satisfaction",
                 "Map of urban problems", "By category", "By channel", "road-damage", "hotline"):
        assert text in section
    assert "1 problem could not be placed" in section  # pb3 has only lon/lat, and the grid no geography
    pngs = images(html)
    assert len(pngs) >= 11  # map, three series, hazards, and six field-reporting figures
    assert all(png.startswith(PNG_SIGNATURE) for png in pngs)
    assert "<script" not in html.lower()
    assert not re.search(r'(?:src|href)\s*=\s*["\']?\s*(?:https?:)?//', html)


def test_report_without_field_reporting_has_no_section(tmp_path):
    city = grid_city()
    html = write_report(tmp_path / "r.html", city=city, ledger=busy_ledger(city), kpis=kpis_for()).read_text(
        encoding="utf-8")
    assert "field-reporting" not in html
    assert 'id="devices"' not in html  # nor a devices section without devices


def test_field_reporting_section_with_no_reports(tmp_path):
    """Problems but no report: every figure says so instead of failing."""
    city = grid_city()
    ledger = Ledger()
    ledger.append("problem.start", 600.0, "pb1", cause="pothole", category="road-damage", severity=2, link="L0",
                  node="n00", lon=None, lat=None)
    kpis = kpis_for(series=False)
    kpis["field_reporting"] = field_reporting_kpis(ledger.table(), start_s=parse_clock("06:00"),
                                                   duration_s=kpis["duration_s"])
    html = write_report(tmp_path / "r.html", city=city, ledger=ledger.table(), kpis=kpis).read_text(encoding="utf-8")
    assert '<section id="field-reporting">' in html
    assert len(images(html)) == 4 + 6
    assert "Nothing to list." in html


def test_problem_positions():
    city = grid_city()
    city.nodes.lon[:] = 108.2 + 0.001 * (np.arange(16) % 4)  # 1/1000 degree ≈ 100 m, as the grid
    city.nodes.lat[:] = 16.05 + 0.001 * (np.arange(16) // 4)
    problems = pd.DataFrame({"link": ["L0", "", None, "nope"], "node": ["n00", "n11", None, "nope"],
                             "lon": [0.0, 0.0, 108.2029, np.nan], "lat": [0.0, 0.0, 16.0529, np.nan]})
    x, y = problem_positions(city, problems)
    assert (x[0], y[0]) == (50.0, 0.0)  # the middle of L0 (n00 → n01)
    assert (x[1], y[1]) == (100.0, 100.0)  # junction n11
    assert (x[2], y[2]) == (300.0, 300.0)  # nearest node to its lon/lat: n33
    assert np.isnan(x[3]) and np.isnan(y[3])


# -- devices ---------------------------------------------------------------------------------------------

def device_ledger(city: City):
    """Busy traffic plus a small device network: a camera at n00 seeing L0-L3 (it recognises the crash on L3)
    with its counting companion, a detector on L6, an air sensor, a bus on L8/L9 and a water-level gauge at
    n10, whose junction floods at 6500 after the IOC raised its level alert at 6000."""
    ledger = Ledger()
    for row in busy_ledger(city).to_pylist():
        kind = row.pop("kind")
        fields = {k: v for k, v in row.items() if k in KINDS[kind] and v is not None}
        ledger.append(kind, row["t"], row["subject"], **fields)

    def install(device, device_type, interval, node=None, link=None, covers=(), fleet=None):
        ledger.append("device.installed", 0.0, device, device_type=device_type, fleet=fleet or device[:3], node=node,
                      link=link, lon=None, lat=None, interval_s=interval, covers=" ".join(covers))

    install("cam-0000", "camera", 60.0, node="n00", link="L0", covers=["L0", "L1", "L2", "L3"])
    install("cam-0000-flow", "detector", 300.0, link="L0", covers=["L0"], fleet="cam")
    install("det-0000", "detector", 300.0, link="L6", covers=["L6"])
    install("air-0000", "air", 900.0, node="n01", covers=["n01", "n02"])
    install("bus-r1-000", "bus", 30.0, covers=["L8", "L9"])
    install("wl-0000", "water_level", 300.0, node="n10", covers=["n10"])
    for k in range(1, 48):
        t = 300.0 * k
        for device, link in (("cam-0000-flow", "L0"), ("det-0000", "L6")):
            if device == "det-0000" and k % 7 == 0:
                continue  # dropouts
            ledger.append("device.reading", t + 2.0, device, device_type="detector", fleet=device[:3], observed_t=t,
                          fault="", link=link, node=None, value=30.0)
        level = max(0.0, (t - 4800.0) / 6000.0)  # rises from 4800 s and passes 0.10 m at 5400 s
        ledger.append("device.reading", t + 1.0, "wl-0000", device_type="water_level", fleet="wl", observed_t=t,
                      fault="stuck" if k == 30 else "", link=None, node="n10", value=level)
    for t in range(3600, 7200, 30):
        ledger.append("device.reading", t + 1.0, "bus-r1-000", device_type="bus", fleet="bus", observed_t=float(t),
                      fault="", link="L8" if t < 5400 else "L9", node=None, value=20.0)
    ledger.append("camera.alert", 6240.0, "cam-0000", fleet="cam", cause="incident", link="L3", node="n00",
                  truth_t=6000.0, observed_t=6200.0)
    ledger.append("camera.alert", 7300.0, "cam-0000", fleet="cam", cause="congestion", link="L1", node="n00",
                  truth_t=7200.0, observed_t=7280.0)
    ledger.append("ioc.alert", 6000.0, "urn:ngsi-ld:FloodMonitoring:wl-0000", rule="flood-gauge-level",
                  category="weather", status="raised", value=0.2)
    ledger.append("ioc.alert", 6240.0, "urn:ngsi-ld:Alert:cam-0000-1", rule="camera-event", category="traffic",
                  status="raised", value=None)
    return ledger.table()


def test_report_devices_section(tmp_path):
    city = grid_city()
    ledger = device_ledger(city)
    kpis = kpis_for()
    kpis["devices"] = device_kpis(ledger, city, duration_s=kpis["duration_s"], freshness_s=600.0,
                                  flood_prone=np.array([city.node_index()["n10"], city.node_index()["n11"]]))
    html = write_report(tmp_path / "r.html", city=city, ledger=ledger, kpis=kpis).read_text(encoding="utf-8")
    assert '<section id="devices">' in html and "<h2>Devices</h2>" in html
    section = html.split('<section id="devices">', 1)[1].split("</section>", 1)[0]
    # the national indicators lead the table, each with its target and whether the run met it
    first_row = section.split("<tr", 2)[2]
    assert "L2.N2.PN2.01" in first_row and ">50 %<" in first_row and ">not met<" in first_row  # 4 of 36 links
    assert "L2.N1.PN2.01" in section and "L2.N3.PN1.03" in section and "L2.N3.PN1.05" in section
    assert ">met<" in section  # water: the gauge covers one of the two flood-prone junctions
    for text in ("Map of device sites and camera coverage", "Real-time traffic information over the run",
                 "Completeness by device type", "Incident and congestion detection times", "Flood-warning lead times",
                 "Water level at the gauges", "Floods at gauged junctions", "Messages by device type",
                 "IOC alerts by category", "Camera alerts by cause", "flood-gauge-level", "water level"):
        assert text in section, text
    assert len(images(section)) == 6
    assert all(png.startswith(PNG_SIGNATURE) for png in images(html))
    floods = section.split("<h3>Floods at gauged junctions</h3>", 1)[1].split("</table>", 1)[0]
    # flooded 06:00 + 6500 s, warned at 6000 s: 500 s ahead
    assert ">n10<" in floods and ">wl-0000<" in floods and ">07:48<" in floods and ">07:40<" in floods
    assert ">8.33<" in floods
