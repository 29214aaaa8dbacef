"""Scenario files: validation messages, extends, paths, and the duration/clock parsers."""

from __future__ import annotations

import textwrap

import pytest
from hypothesis import given
from hypothesis import strategies as st

from citytwin.twin.errors import UserInputError
from citytwin.twin.scenario import load_scenario
from citytwin.twin.scenario.units import format_clock, parse_clock, parse_duration


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def problems(path) -> list[str]:
    with pytest.raises(UserInputError) as err:
        load_scenario(path)
    return err.value.problems


def test_shipped_scenarios_validate(repo):
    for path in sorted((repo / "scenarios").glob("*.yaml")):
        load_scenario(path)


def test_unknown_network_source_names_file_field_and_choices(tmp_path):
    path = write(tmp_path, "x.yaml", "name: x\ncity: {network: {source: osmm}}\n")
    assert problems(path) == [
        f"{path}: city.network.source: expected one of synthetic, osm_file, osm_place, tntp; got 'osmm'"]


def test_unknown_keys_are_errors_at_any_depth(tmp_path):
    path = write(tmp_path, "x.yaml", """\
        name: x
        colour: red
        traffic: {platoon_pcu: 5, bogus: 1}
        demand: {kind: od, trips_per_day: 10, extra: true}
        """)
    found = problems(path)
    assert f"{path}: colour: unknown key" in found
    assert f"{path}: traffic.bogus: unknown key" in found
    assert f"{path}: demand.extra: unknown key" in found


def test_every_problem_is_reported_once_with_its_path(tmp_path):
    path = write(tmp_path, "x.yaml", """\
        name: x
        duration: 3 days
        traffic: {vehicle_mix: {motorbike: {share: 0.5, pcu: 0.3}}}
        hazards: {rain: {episodes: [{start: "25:00", duration: 1h, intensity_mm_h: 10}]}}
        """)
    found = problems(path)
    assert len(found) == 3
    assert any(p.startswith(f"{path}: duration: expected a duration") for p in found)
    assert f"{path}: traffic.vehicle_mix: expected shares that sum to 1; they sum to 0.5" in found
    assert f"{path}: hazards.rain.episodes[0].start: expected a clock time HH:MM; got '25:00'" in found


def test_missing_name_and_malformed_yaml(tmp_path):
    assert problems(write(tmp_path, "a.yaml", "seed: 1\n")) == [f"{tmp_path / 'a.yaml'}: name: required field is missing"]
    bad = write(tmp_path, "b.yaml", "name: x\ncity: [unclosed\n")
    (line,) = problems(bad)
    assert line.startswith(f"{bad}: line ") and "malformed YAML" in line
    assert problems(write(tmp_path, "c.yaml", "")) == [f"{tmp_path / 'c.yaml'}: the file is empty; expected a scenario mapping"]
    assert problems(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: file not found"]


def test_extends_merges_overrides_and_resolves_paths_against_the_base(tmp_path):
    base_dir = tmp_path / "base"
    base_dir.mkdir()
    write(base_dir, "base.yaml", """\
        name: base
        seed: 1
        city: {network: {source: tntp, net: data/net.tntp}}
        demand: {kind: tntp, trips: data/trips.tntp, scale: 0.5}
        """)
    child = write(tmp_path, "child.yaml", "extends: base/base.yaml\nname: child\ndemand: {scale: 2.0}\n")
    s = load_scenario(child)
    assert (s.name, s.seed, s.demand.scale) == ("child", 1, 2.0)
    assert s.city.network.net == str(base_dir / "data/net.tntp")
    assert s.demand.trips == str(base_dir / "data/trips.tntp")


def test_extends_cycle_and_missing_base(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path, "b.yaml", "extends: a.yaml\nname: b\n")
    (line,) = problems(tmp_path / "a.yaml")
    assert "extends: extends itself in a cycle" in line
    (line,) = problems(write(tmp_path, "c.yaml", "extends: gone.yaml\nname: c\n"))
    assert line.endswith(f"extends: file not found: {tmp_path / 'gone.yaml'}")


@given(h=st.integers(0, 200), m=st.integers(0, 59), s=st.integers(0, 59))
def test_duration_parts_add_up(h, m, s):
    assert parse_duration(f"{h}h{m}m{s}s") == h * 3600 + m * 60 + s
    assert parse_duration(f"{m}min") == m * 60
    assert parse_duration(h * 3600 + 0.5) == h * 3600 + 0.5


@given(st.text(max_size=12))
def test_duration_rejects_what_it_cannot_read(text):
    try:
        value = parse_duration(text)
    except ValueError as err:
        assert "expected a duration" in str(err)
    else:
        assert value >= 0


@given(st.integers(0, 86399))
def test_clock_round_trips_to_the_minute(seconds):
    minute = seconds - seconds % 60
    assert parse_clock(format_clock(minute)) == minute


def test_clock_rejects_impossible_times():
    for bad in ("24:00", "7:60", "noon", 730):
        with pytest.raises(ValueError):
            parse_clock(bad)


def test_union_fields_give_one_line_in_the_scenarios_own_words(tmp_path):
    path = write(tmp_path, "x.yaml", "name: x\ndemand: {kind: od, profile: vn_weekend}\ntraffic: {chunk: 2s}\n")
    assert problems(path) == [
        f"{path}: traffic.chunk: expected at least the engine step (5 s); got 2 s",
        f"{path}: demand.profile: expected one of vn_weekday, flat or 24 non-negative hourly weights with a "
        "positive sum; got 'vn_weekend'"]
    ok = write(tmp_path, "y.yaml", "name: y\ndemand: {kind: od, profile: [" + ", ".join(["1"] * 24) + "]}\n")
    assert load_scenario(ok).demand.hourly_weights() == (1.0,) * 24
