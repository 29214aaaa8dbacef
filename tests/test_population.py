"""Population synthesis: shares, households, places of work and school, propensity, determinism, scale."""

from __future__ import annotations

import numpy as np
import pytest

from citytwin.agents.population import (ADULT, CHILD, SENIOR, STUDENT, WALK, Population, city_places,
                                        synthesize_population)
from citytwin.twin.city.paths import zone_nodes
from citytwin.twin.city.synthetic import SyntheticParams, generate
from citytwin.twin.scenario.schema import AGE_GROUPS, MODES, PopulationSpec

N = 200_000
SPEC = PopulationSpec(residents=N)


@pytest.fixture(scope="module")
def city():
    return generate(SyntheticParams())


@pytest.fixture(scope="module")
def pop(city):
    return synthesize_population(city, SPEC, np.random.default_rng(7), propensity_mean=0.05,
                                 propensity_concentration=0.5)


def within(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    """A binomial count within `sigmas` standard deviations of n p."""
    return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p)) + 1


def test_columns_have_the_contract_types(pop):
    assert len(pop) == N
    for name, dtype in (("home", np.int32), ("work", np.int32), ("age_group", np.int8), ("household", np.int32),
                        ("smartphone", np.bool_), ("propensity", np.float32), ("mode", np.int8)):
        column = getattr(pop, name)
        assert column.dtype == dtype, name
        assert len(column) == N, name


def test_age_mode_and_smartphone_shares_reproduce_the_spec(pop):
    ages = np.bincount(pop.age_group, minlength=len(AGE_GROUPS))
    for g, name in enumerate(AGE_GROUPS):
        assert within(ages[g], N, SPEC.age_groups[name]), name
    modes = np.bincount(pop.mode, minlength=len(MODES))
    for m, name in enumerate(MODES):
        assert within(modes[m], N, SPEC.mode_share[name]), name
    for g, name in enumerate(AGE_GROUPS):
        members = pop.age_group == g
        assert within(int(pop.smartphone[members].sum()), int(members.sum()), SPEC.smartphone[name]), name
    assert not pop.smartphone[pop.age_group == CHILD].any()


def test_who_has_a_place_of_work_or_school(pop):
    adults = pop.age_group == ADULT
    assert within(int((pop.work[adults] >= 0).sum()), int(adults.sum()), SPEC.employed)
    assert np.all(pop.work[pop.age_group == STUDENT] >= 0)  # everyone 6-22 is in school
    assert np.all(pop.work[np.isin(pop.age_group, [CHILD, SENIOR])] == -1)


def test_homes_and_places_are_zone_nodes(city, pop):
    zones = zone_nodes(city)
    assert np.isin(pop.home, zones).all()
    assert np.isin(pop.work[pop.work >= 0], zones).all()
    assert not np.any(pop.work == pop.home)  # work is elsewhere: the employed work outside the home


def test_households_share_a_home_and_have_the_mean_size(pop):
    n_households = int(pop.household.max()) + 1
    assert np.array_equal(np.unique(pop.household), np.arange(n_households))
    assert np.all(np.diff(pop.household) >= 0)  # members are contiguous
    assert N / n_households == pytest.approx(SPEC.household_size, rel=0.02)
    first = np.flatnonzero(np.diff(pop.household, prepend=-1))
    assert np.array_equal(pop.home, np.repeat(pop.home[first], np.diff(np.append(first, N))))
    # every household is headed by an adult or a senior: no child lives alone
    assert np.isin(pop.age_group[first], [ADULT, SENIOR]).all()


def test_homes_follow_the_population_weights(city, pop):
    zones = zone_nodes(city)
    counts = np.bincount(pop.home, minlength=len(city.nodes))[zones]
    weights = city.zone_weights["population"][zones]
    assert np.corrcoef(counts, weights)[0, 1] > 0.98


def test_work_is_near_home_and_school_nearer_walkers_nearest(city, pop):
    def km(sel):
        return np.hypot(city.nodes.x[pop.home[sel]] - city.nodes.x[pop.work[sel]],
                        city.nodes.y[pop.home[sel]] - city.nodes.y[pop.work[sel]]).mean() / 1000.0

    riders = pop.mode != WALK
    workers, students = (pop.age_group == ADULT) & (pop.work >= 0), pop.age_group == STUDENT
    # with no decay at all, a place drawn by jobs alone would be this far on average
    zones = zone_nodes(city)
    jobs = city.zone_weights["jobs"][zones] / city.zone_weights["jobs"][zones].sum()
    rng = np.random.default_rng(0)
    a, b = rng.choice(zones, 20_000), rng.choice(zones, 20_000, p=jobs)
    random_km = np.hypot(city.nodes.x[a] - city.nodes.x[b], city.nodes.y[a] - city.nodes.y[b]).mean() / 1000.0
    assert km(workers & riders) < random_km
    assert km(students & riders) < km(workers & riders)
    assert km(workers & ~riders) < 0.8 * km(workers & riders)
    assert km(workers & ~riders) < 1.0


def test_decay_zero_places_work_by_jobs_alone(city):
    spec = PopulationSpec(residents=100_000, work_distance_decay_per_km=0.0, mode_share={
        "motorbike": 1.0, "car": 0.0, "bus": 0.0, "walk": 0.0})
    pop = synthesize_population(city, spec, np.random.default_rng(3))
    workers = (pop.age_group == ADULT) & (pop.work >= 0)
    zones = zone_nodes(city)
    counts = np.bincount(pop.work[workers], minlength=len(city.nodes))[zones]
    assert np.corrcoef(counts, city.zone_weights["jobs"][zones])[0, 1] > 0.95


def test_propensity_is_beta_and_children_never_report(pop):
    p = pop.propensity
    assert np.all((p >= 0) & (p <= 1))
    assert np.all(p[pop.age_group == CHILD] == 0)
    grown = p[pop.age_group != CHILD]
    assert grown.mean() == pytest.approx(0.05, abs=0.003)
    # Beta(0.025, 0.475): most people almost never report, a few nearly always do
    assert np.median(grown) < 1e-3 and (grown > 0.9).mean() > 0.01


def test_propensity_is_zero_without_field_reporting(city):
    pop = synthesize_population(city, PopulationSpec(residents=1000), np.random.default_rng(0))
    assert not pop.propensity.any()


def test_same_seed_same_population_other_seed_another(city):
    spec = PopulationSpec(residents=20_000)
    a, b, c = (synthesize_population(city, spec, np.random.default_rng(s), propensity_mean=0.02)
               for s in (1, 1, 2))
    for name in ("home", "work", "age_group", "household", "smartphone", "propensity", "mode"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert not np.array_equal(a.home, c.home)


def test_at_home_nodes_lists_the_residents_of_each_node(city, pop):
    order, offsets = pop.at_home_nodes()
    assert len(offsets) == len(city.nodes) + 1 and offsets[-1] == N
    for k in (int(pop.home[0]), int(pop.home[-1]), int(np.argmax(np.bincount(pop.home)))):
        residents = order[offsets[k]:offsets[k + 1]]
        assert np.array_equal(np.sort(residents), np.flatnonzero(pop.home == k))
    assert pop.at_home_nodes()[0] is order  # cached


def test_a_population_built_by_hand_indexes_its_homes():
    home = np.array([2, 0, 2, 5], np.int32)
    pop = Population(home=home, work=np.full(4, -1, np.int32), age_group=np.full(4, ADULT, np.int8),
                     household=np.arange(4, dtype=np.int32), smartphone=np.ones(4, bool),
                     propensity=np.zeros(4, np.float32), mode=np.zeros(4, np.int8))
    order, offsets = pop.at_home_nodes()
    assert list(offsets) == [0, 1, 1, 3, 3, 3, 4]
    assert list(order[offsets[2]:offsets[3]]) == [0, 2]


@pytest.mark.parametrize("residents", [1, 2, 7])
def test_tiny_populations(city, residents):
    pop = synthesize_population(city, PopulationSpec(residents=residents), np.random.default_rng(0))
    assert len(pop) == residents and pop.household[0] == 0
    assert np.isin(pop.age_group[0], [ADULT, SENIOR])  # the first member heads the first household


def test_big_networks_draw_places_on_grid_cells(city):
    places = city_places(city, max_units=40)
    assert not places.exact and len(places.unit_x) <= 40
    rng = np.random.default_rng(5)
    origin = np.repeat(places.nodes[:10], 2000)
    near = places.near(origin, "jobs", 3.0, rng)
    far = places.near(origin, "jobs", 0.0, rng)
    assert np.isin(near, places.nodes).all()
    assert places.distance_m(origin, near).mean() < 0.7 * places.distance_m(origin, far).mean()
    # without decay, cell by its total weight then node by weight within the cell: node by weight
    everywhere = places.near(np.repeat(places.nodes[:1], 200_000), "jobs", 0.0, rng)
    counts = np.bincount(everywhere, minlength=len(city.nodes))[places.nodes]
    assert np.corrcoef(counts, places.weights["jobs"])[0, 1] > 0.99


def test_a_million_residents_build(city):
    pop = synthesize_population(city, PopulationSpec(residents=1_000_000), np.random.default_rng(11),
                                propensity_mean=0.02, propensity_concentration=0.5)
    assert len(pop) == 1_000_000
    assert np.isin(pop.home, zone_nodes(city)).all()
    assert within(int((pop.mode == MODES.index("motorbike")).sum()), 1_000_000, 0.75)


def test_gravity_draws_have_the_gravity_probabilities(city):
    places = city_places(city)
    origin = int(places.nodes[17])
    decay = 1.5
    draws = places.near(np.full(200_000, origin), "jobs", decay, np.random.default_rng(1))
    d_km = places.distance_m(np.full(len(places.nodes), origin), places.nodes) / 1000.0
    p = places.weights["jobs"] * np.exp(-decay * d_km)
    p[places.nodes == origin] = 0.0  # a place elsewhere
    p /= p.sum()
    freq = np.bincount(draws, minlength=len(city.nodes))[places.nodes] / len(draws)
    assert freq[places.nodes == origin].sum() == 0
    assert np.all(np.abs(freq - p) <= 5 * np.sqrt(p * (1 - p) / len(draws)) + 1e-5)


def test_gravity_draws_do_not_depend_on_the_block_size(city, monkeypatch):
    import citytwin.agents.population as population

    places = city_places(city)
    origin = np.random.default_rng(0).choice(places.nodes, 50_000)
    whole = places.near(origin, "jobs", 0.35, np.random.default_rng(2))
    monkeypatch.setattr(population, "_BLOCK_CELLS", 7 * len(places.nodes))  # 7 rows a block
    assert np.array_equal(places.near(origin, "jobs", 0.35, np.random.default_rng(2)), whole)
