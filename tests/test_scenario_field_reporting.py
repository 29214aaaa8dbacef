"""Bad input in the population and field-reporting sections: exit 2, the file and the field path, no run."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from citytwin.twin.cli import main

BASE = """\
name: reporting
duration: 2h
demand: {kind: od, trips_per_day: 0}
population: {residents: 1000}
"""


def _write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(BASE + textwrap.dedent(extra), encoding="utf-8")
    return path


@pytest.mark.parametrize("extra, where, expected", [
    ("field_reporting:\n  organisation:\n    deadlines: {waste: -2h}\n",
     "field_reporting.organisation.deadlines.waste", "not a negative one"),
    ("field_reporting:\n  organisation:\n    deadlines: {waste: -7200}\n",
     "field_reporting.organisation.deadlines.waste", "greater than 0"),
    ("field_reporting:\n  citizens:\n    channels: {app: 0.5, hotline: 0.3, web: 0.1}\n",
     "field_reporting.citizens.channels", "sum to 1"),
    ("field_reporting:\n  problems:\n    pothole: {category: potholes, site: roads, rate: 0.1}\n",
     "field_reporting.problems.pothole.category", "unknown category 'potholes'"),
    ("field_reporting:\n  organisation:\n    intake:\n      shifts: [{start: '07:00', end: '15:00', operators: 0}]\n",
     "field_reporting.organisation.intake.shifts[0].operators", "greater than or equal to 1"),
    ("field_reporting:\n  organisation:\n    crews: {roads: {crews: 2}}\n",
     "field_reporting.organisation.crews", "unknown category 'roads'"),
    ("population: {residents: 1000, mode_share: {motorbike: 0.9, car: 0.2, bus: 0, walk: 0}}\n",
     "population.mode_share", "sum to 1"),
    ("field_reporting:\n  problems:\n    garbage: {category: waste, site: homes, rate: 0.1, severity: [0.5, 0.5]}\n",
     "field_reporting.problems.garbage.severity", "three shares"),
])
def test_bad_field_reporting_input_exits_2_with_the_field_path(tmp_path, capsys, extra, where, expected):
    path = _write(tmp_path, extra)
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{path}: {where}: " in err and expected in err, err
    assert "Traceback" not in err
    assert not out.exists()  # bad input leaves nothing behind


def test_field_reporting_needs_a_population(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\nfield_reporting: {}\n", encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    assert "population: required for field_reporting" in capsys.readouterr().err


def test_agent_demand_needs_a_population(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text("name: x\ndemand: {kind: agents}\n", encoding="utf-8")
    assert main(["validate", str(path)]) == 2
    assert "population: required when demand.kind is agents" in capsys.readouterr().err


def test_every_problem_category_needs_crews(tmp_path, capsys):
    path = _write(tmp_path, "field_reporting:\n  organisation:\n    crews: {waste: {crews: 1}}\n")
    assert main(["validate", str(path)]) == 2
    assert "expected crews for every problem category; none for" in capsys.readouterr().err


def test_shifts_past_midnight_and_all_day():
    from citytwin.twin.scenario.schema import Shift

    assert Shift(start="22:00", end="06:00").length_s == 8 * 3600
    assert Shift(start="00:00", end="00:00").length_s == 86400
    assert Shift(start="07:00", end="17:00").length_s == 10 * 3600
