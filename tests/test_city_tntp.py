"""TNTP benchmark networks: Sioux Falls as a City, its BPR parameters, demand and reference flows."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_file

from citytwin.twin.city.tntp import (
    NOMINAL_SPEED_MPS,
    load_tntp_bpr,
    load_tntp_network,
    read_tntp_flow,
    read_tntp_trips,
)
from citytwin.twin.errors import UserInputError

SIOUX = "tntp/SiouxFalls/SiouxFalls_{}.tntp"


@pytest.fixture(scope="module")
def net_path():
    return shared_file(SIOUX.format("net"))


def _link(city, a: str, b: str) -> int:
    index = city.node_index()
    return int(np.flatnonzero((city.links.src == index[a]) & (city.links.dst == index[b]))[0])


def test_sioux_falls_network(net_path):
    city = load_tntp_network(net_path)
    assert city.source == "tntp" and city.name == "SiouxFalls"
    assert "bstabler/TransportationNetworks" in city.attribution
    assert len(city.nodes) == 24 and len(city.links) == 76
    k = _link(city, "1", "2")
    assert city.links.free_flow_s[k] == pytest.approx(360.0)
    assert city.links.capacity_pcu_h[k] == pytest.approx(25900.20064)
    assert city.links.lanes[k] == 14  # 25,900 / 1,800 per lane
    np.testing.assert_allclose(city.links.free_flow_mps, NOMINAL_SPEED_MPS)
    assert set(city.links.road_class) == {"arterial"}
    assert len(set(city.links.ids)) == 76


def test_sioux_falls_coordinates_are_projected_degrees(net_path):
    city = load_tntp_network(net_path, node_path=shared_file(SIOUX.format("node")))
    assert city.nodes.lon[0] == pytest.approx(-96.77041974) and city.nodes.lat[0] == pytest.approx(43.61282792)
    # metres about the centroid: node 1 lies north-west of the middle, the town spans some 10 km
    assert city.nodes.x[0] < 0 < city.nodes.y[0]
    assert 5_000 < np.ptp(city.nodes.x) < 20_000 and abs(city.nodes.x.mean()) < 1e-6


def test_network_without_node_file_gets_a_layout(net_path, tmp_path):
    copy = tmp_path / "SiouxFalls_net.tntp"
    copy.write_bytes(net_path.read_bytes())
    city = load_tntp_network(copy)
    assert np.all(np.isnan(city.nodes.lon))
    assert len(np.unique(np.round(city.nodes.x))) > 20  # nodes are spread out, not piled up


def test_bpr_parameters_in_file_order(net_path):
    bpr = load_tntp_bpr(net_path)
    assert set(bpr) == {"free_flow_s", "capacity", "b", "power", "init", "term"}
    assert all(len(v) == 76 for v in bpr.values())
    assert (bpr["init"][0], bpr["term"][0], bpr["free_flow_s"][0]) == (1, 2, 360.0)
    assert bpr["init"].min() == 1 and bpr["term"].max() == 24  # 1-based, as in the file
    np.testing.assert_allclose(bpr["b"], 0.15)
    np.testing.assert_allclose(bpr["power"], 4.0)


def test_trips_total_and_shape():
    zones, matrix = read_tntp_trips(shared_file(SIOUX.format("trips")))
    assert zones == [str(z) for z in range(1, 25)]
    assert matrix.shape == (24, 24)
    assert matrix.sum() == pytest.approx(360_600.0)
    assert matrix[0, 1] == 100.0 and matrix[0, 9] == 1300.0 and matrix[0, 0] == 0.0


def test_reference_flows():
    flow = read_tntp_flow(shared_file(SIOUX.format("flow")))
    assert list(flow.columns) == ["from", "to", "volume", "cost"]
    assert len(flow) == 76
    assert (flow["from"][0], flow["to"][0]) == (1, 2)
    assert flow["volume"][0] == pytest.approx(4494.6576464564205)


# --- bad input -------------------------------------------------------------------------------------


def _broken_net(net_path, tmp_path, edit) -> str:
    path = tmp_path / "SiouxFalls_net.tntp"
    path.write_text(edit(net_path.read_text()), encoding="utf-8")
    return str(path)


_NET_EDITS = {
    "links not a number": (lambda t: t.replace("<NUMBER OF LINKS> 76", "<NUMBER OF LINKS> many"),
                           "header: expected <NUMBER OF LINKS> N; got <NUMBER OF LINKS> many"),
    "no links line": (lambda t: t.replace("<NUMBER OF LINKS> 76", ""),
                      "header: expected <NUMBER OF LINKS> N; got no such line"),
    "no end of metadata": (lambda t: t.replace("<END OF METADATA>", ""), "expected <END OF METADATA>"),
    "link count": (lambda t: t.replace("<NUMBER OF LINKS> 76", "<NUMBER OF LINKS> 77"),
                   "header: expected <NUMBER OF LINKS> 77 to match the link table; got 76 link rows"),
    "node out of range": (lambda t: t.replace("<NUMBER OF NODES> 24", "<NUMBER OF NODES> 23"),
                          ": term_node: expected a node number in 1..23"),
    "short row": (lambda t: t.replace("\t1\t2\t25900.20064\t6\t6\t0.15\t4\t0\t0\t1\t;", "\t1\t2\t25900.20064\t6\t;"),
                  "line 10: expected 10 columns (init_node term_node capacity length free_flow_time b power speed "
                  "toll link_type); got 4"),
    "text in a number": (lambda t: t.replace("\t1\t3\t23403.47319", "\t1\t3\tlots"),
                         "line 11: capacity: expected a number; got 'lots'"),
}


@pytest.mark.parametrize("case", sorted(_NET_EDITS))
def test_broken_network_files_are_user_errors(net_path, tmp_path, case):
    edit, expected = _NET_EDITS[case]
    path = _broken_net(net_path, tmp_path, edit)
    for load in (load_tntp_network, load_tntp_bpr):
        with pytest.raises(UserInputError) as err:
            load(path)
        assert err.value.problems[0].startswith(f"{path}: ")
        assert expected in err.value.problems[0]


def test_missing_and_empty_files_are_user_errors(tmp_path):
    with pytest.raises(UserInputError, match=r"SiouxFalls_net\.tntp: file not found"):
        load_tntp_network(tmp_path / "SiouxFalls_net.tntp")
    (tmp_path / "empty_trips.tntp").write_text("\n")
    with pytest.raises(UserInputError, match=r"empty_trips\.tntp: empty file"):
        read_tntp_trips(tmp_path / "empty_trips.tntp")
    with pytest.raises(UserInputError, match=r"nowhere_flow\.tntp: file not found"):
        read_tntp_flow(tmp_path / "nowhere_flow.tntp")


@pytest.mark.parametrize(("edit", "expected"), [
    (lambda t: t.replace("<TOTAL OD FLOW> 360600.0", "<TOTAL OD FLOW> 360000.0"),
     "header: expected <TOTAL OD FLOW> 360000 to equal the sum of the OD flows; got a sum of 360600"),
    (lambda t: t.replace("<NUMBER OF ZONES> 24", "<NUMBER OF ZONES> 23"), "expected a zone in 1..23"),
    (lambda t: t.replace("    2 :    100.0;", "    2 :    oops;", 1), "line 7: flow: expected a number; got 'oops'"),
    (lambda t: t.replace("    2 :    100.0;", "    2 100.0;", 1), "line 7: expected entries 'destination : flow;'"),
])
def test_broken_trips_are_user_errors(tmp_path, edit, expected):
    path = tmp_path / "SiouxFalls_trips.tntp"
    path.write_text(edit(shared_file(SIOUX.format("trips")).read_text()), encoding="utf-8")
    with pytest.raises(UserInputError) as err:
        read_tntp_trips(path)
    assert err.value.problems[0].startswith(f"{path}: ") and expected in err.value.problems[0]


def test_flow_row_with_missing_column_names_its_line(tmp_path):
    path = tmp_path / "SiouxFalls_flow.tntp"
    path.write_text("From \tTo \tVolume \tCost \n1 \t2 \t4494.6 \t6.0\n1 \t3 \t8119.0\n", encoding="utf-8")
    with pytest.raises(UserInputError, match=r"SiouxFalls_flow\.tntp: line 3: expected 4 columns"):
        read_tntp_flow(path)
