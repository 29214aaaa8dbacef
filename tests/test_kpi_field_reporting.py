"""Field-reporting KPIs from small hand-built ledgers, checked against values worked out by hand.

The ledger rows are written the way the in-process port writes them: `report.submitted` followed by the
request's `received` status row, then one `request.status` row per workflow step.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from citytwin.twin.kpi.field_reporting import (PUBLISHED_KPI, field_reporting_kpis, km_quantiles,
                                               problem_outcomes)
from citytwin.twin.ledger import Ledger

H = 3600.0
DAY = 86400.0


def submit(ledger: Ledger, t: float, key: str, rid: int, *, channel: str, category: str, problem: str,
           deadline_h: float, linked_to: int | None = None) -> None:
    ledger.append("report.submitted", t, key, channel=channel, category=category, problem=problem, resident=rid,
                  request_id=rid, duplicate_of=linked_to, deadline_t=t + deadline_h * H, lon=108.2, lat=16.05)
    ledger.append("request.status", t, str(rid), status="received", actor="citizen",
                  published=linked_to is not None, duplicate_of=linked_to)


def step(ledger: Ledger, t: float, rid: int, status: str, *, published: bool = False,
         duplicate_of: int | None = None) -> None:
    ledger.append("request.status", t, str(rid), status=status, actor="op", published=published,
                  duplicate_of=duplicate_of)


def problem(ledger: Ledger, t: float, pid: str, category: str, *, severity: int = 2, link: str = "L0",
            node: str = "n00") -> None:
    ledger.append("problem.start", t, pid, cause="kind", category=category, severity=severity, link=link, node=node,
                  lon=108.2, lat=16.05)


def day_ledger() -> Ledger:
    """One day from 06:00. Five problems, six reports on four original requests and two duplicates:

    req 1 (app, road-damage, pb1): acknowledged after 0.5 h, closed after 2.5 h with a public note; on time.
    req 2 (hotline, pb1): not linked on arrival, marked a duplicate of 1 by an operator.
    req 3 (web, streetlight, pb2, 2 h deadline): acknowledged after 1 h, closed after 4 h with no note: late.
    req 4 (app, flooding, pb4, 6 h deadline): never acknowledged, open at the end past its deadline: late.
    req 5 (app, waste, pb5, 24 h deadline): acknowledged, open at the end within its deadline: not judged.
    req 6 (hotline, pb5): linked to 5 on arrival and not triaged yet; follows 5, which has no result yet.
    pb3 (waste) is never reported.
    """
    led = Ledger()
    problem(led, 0.0, "pb1", "road-damage")
    problem(led, 1 * H, "pb2", "streetlight", link="", node="n11")
    problem(led, 2 * H, "pb3", "waste", severity=1)
    problem(led, 40000.0, "pb4", "flooding", severity=3)
    problem(led, 79000.0, "pb5", "waste")

    submit(led, 1 * H, "r1", 1, channel="app", category="road-damage", problem="pb1", deadline_h=72)
    step(led, 1.5 * H, 1, "acknowledged", published=True)
    step(led, 1.5 * H, 1, "assigned", published=True)
    submit(led, 2 * H, "r2", 2, channel="hotline", category="road-damage", problem="pb1", deadline_h=72)
    step(led, 2 * H + 100, 2, "closed", published=True, duplicate_of=1)
    step(led, 2.5 * H, 1, "in_progress")
    submit(led, 3 * H, "r3", 3, channel="web", category="streetlight", problem="pb2", deadline_h=2)
    step(led, 3.3 * H, 1, "resolved")
    step(led, 3.5 * H, 1, "closed", published=True)
    step(led, 4 * H, 3, "acknowledged", published=True)
    led.append("problem.fixed", 3.2 * H, "pb1", crew="road-damage-1", request_id=1)
    step(led, 7 * H, 3, "resolved", published=True)
    step(led, 7 * H, 3, "closed")  # the closing step carried no note: result not published
    led.append("problem.fixed", 6.9 * H, "pb2", crew="streetlight-1", request_id=3)
    submit(led, 50000.0, "r4", 4, channel="app", category="flooding", problem="pb4", deadline_h=6)
    submit(led, 80000.0, "r5", 5, channel="app", category="waste", problem="pb5", deadline_h=24)
    step(led, 81000.0, 5, "acknowledged", published=True)
    submit(led, 82000.0, "r6", 6, channel="hotline", category="waste", problem="pb5", deadline_h=24, linked_to=5)

    led.append("report.feedback", 5 * H, "r1", satisfaction=4.6, published=True, request_id=1, duration_s=9000.0)
    led.append("report.feedback", 6 * H, "r2", satisfaction=3.4, published=True, request_id=1, duration_s=14000.0)
    led.append("report.feedback", 9 * H, "r3", satisfaction=2.2, published=False, request_id=3, duration_s=14400.0)
    led.append("report.given_up", 86000.0, "r4", request_id=4, duration_s=36000.0)

    led.append("call.answered", 2 * H - 200, "r2", wait_s=20.0, actor="op-1")
    led.append("call.answered", 82000.0 - 200, "r6", wait_s=45.0, actor="op-2")
    led.append("call.abandoned", 30000.0, "", wait_s=60.0, problem="pb4", resident=9)
    led.append("call.abandoned", 31000.0, "", wait_s=100.0, problem="pb4", resident=10)

    led.append("crew.travel", 2.6 * H, "road-damage-1", crew="road-damage-1", request_id=1, travel_time_s=600.0)
    led.append("crew.travel", 5 * H, "streetlight-1", crew="streetlight-1", request_id=3, travel_time_s=900.0)
    return led


@pytest.fixture(scope="module")
def day():
    return field_reporting_kpis(day_ledger().table(), start_s=6 * H, duration_s=DAY)


def values(result: dict) -> dict:
    return {k: v["value"] for k, v in result["kpis"].items()}


def test_volumes_and_duplicates(day):
    v = values(day)
    assert v["reports"] == 6
    assert v["reports_per_day"] == 6.0
    assert (v["reports_per_day_app"], v["reports_per_day_hotline"], v["reports_per_day_web"]) == (3.0, 2.0, 1.0)
    assert v["duplicate_ratio"] == pytest.approx(100 * 2 / 6, abs=0.01)  # one marked, one linked on arrival
    assert v["repeat_report_ratio"] == pytest.approx(100 * 2 / 6, abs=0.01)  # r2 (pb1) and r6 (pb5)


def test_times_are_kaplan_meier_over_originals(day):
    v = values(day)
    # acknowledge: 0.5 h, 1 h, 1000 s observed; req 4 censored at 36,400 s → F reaches only 75 %
    assert v["time_to_acknowledge_p50"] == 0.5
    assert v["time_to_acknowledge_p90"] is None and v["time_to_acknowledge_p99"] is None
    # close: req 5 censored at 6,400 s, req 1 at 2.3 h (resolved), req 3 at 4 h, req 4 censored:
    # S = 2/3 after 2.3 h, 1/3 after 4 h → the median is 4 h (dropping the open ones would give 2.3 h)
    assert v["time_to_close_p50"] == 4.0
    assert v["time_to_close_p90"] is None


def test_deadline_published_and_backlog(day):
    v = values(day)
    # judged: 1 (on time), 3 (late), 4 (open past its deadline, late); 5 open within its deadline is left out
    assert v["closed_within_deadline"] == pytest.approx(100 / 3, abs=0.01)
    # with a result: r1 (published), r2 via its original 1 (published), r3 (closing step had no note)
    assert v[PUBLISHED_KPI] == pytest.approx(200 / 3, abs=0.01)
    assert day["kpis"][PUBLISHED_KPI]["target"] == 100.0
    assert v["backlog_end"] == 2 and v["backlog_peak"] == 2
    backlog = day["series"]["backlog"]
    at = dict(zip(backlog["x"], backlog["values"]))
    assert at[0.0] == 0 and at[1 * H] == 1 and at[3 * H] == 2 and at[3.5 * H] == 1 and at[7 * H] == 0
    assert at[50400.0] == 1 and backlog["x"][-1] == DAY and backlog["values"][-1] == 2


def test_problems_reporters_hotline_crews(day):
    v = values(day)
    assert v["problems"] == 5
    assert v["problems_reported"] == 80.0
    # first reports after 1000 s, 1 h, 2 h, 10,000 s; pb3 censored at 22 h: F = .2 .4 .6 .8
    assert v["time_to_first_report_p50"] == 2.0
    assert v["time_to_first_report_p90"] is None
    assert v["problems_fixed"] == 40.0
    assert v["feedback"] == 3
    assert v["satisfaction_mean"] == pytest.approx(3.4)
    assert v["satisfied_share"] == pytest.approx(100 / 3, abs=0.01)
    assert v["satisfaction_mean_published"] == pytest.approx(4.0)
    assert v["satisfaction_mean_unpublished"] == pytest.approx(2.2)
    assert v["gave_up"] == 1
    assert day["series"]["satisfaction"]["values"] == [0, 1, 1, 0, 1]
    assert v["calls"] == 4 and v["calls_abandoned"] == 50.0
    assert v["call_asa"] == 32.5 and v["calls_answered_30s"] == 25.0
    assert v["crew_trips"] == 2 and v["crew_travel_mean"] == 12.5 and v["crew_travel_p90"] == 15.0


def test_tables(day):
    cats = {r["category"]: r for r in day["tables"]["by_category"]}
    assert list(cats) == ["flooding", "road-damage", "streetlight", "waste"]
    road = cats["road-damage"]
    assert (road["reports"], road["duplicates"], road["open_end"], road["deadline_h"]) == (2, 1, 0, 72.0)
    assert (road["within_deadline"], road["judged"], road["ack_p50_h"], road["close_p50_h"]) == (100.0, 1, 0.5, 2.3)
    assert road["satisfaction_mean"] == pytest.approx(4.0) and road["problems_reported"] == 100.0
    assert cats["flooding"]["within_deadline"] == 0.0 and cats["flooding"]["close_p50_h"] is None
    waste = cats["waste"]
    assert waste["within_deadline"] is None and waste["judged"] == 0  # still within its deadline
    assert (waste["problems"], waste["problems_reported"]) == (2, 50.0)
    chans = {r["channel"]: r for r in day["tables"]["by_channel"]}
    assert list(chans) == ["app", "hotline", "web"]
    assert chans["app"]["published"] == 100.0  # r1 only: r4 and r5 have no result yet
    assert chans["hotline"]["published"] == 100.0 and chans["hotline"]["duplicates"] == 100.0
    assert chans["web"]["published"] == 0.0
    assert chans["app"]["share"] == 50.0


def test_reports_binned_by_clock_hour():
    led = day_ledger()
    result = field_reporting_kpis(led.table(), start_s=6.5 * H, duration_s=DAY)  # starts at 06:30
    by = result["series"]["reports_by_channel"]
    assert by["bin_s"] == H and by["unit"] == "reports/h"
    assert by["x"][:3] == [0.0, 0.5 * H, 1.5 * H]  # the first bin is the half hour to 07:00
    assert list(by["values"]) == ["app", "hotline", "web"]
    assert all(len(v) == len(by["x"]) for v in by["values"].values())
    assert sum(by["values"]["app"]) == 3 and by["values"]["app"][1] == 1  # r1 at 07:30 falls in 07:00-08:00
    assert by["values"]["web"][3] == 1  # r3 at 09:30


def test_result_is_plain_json():
    result = field_reporting_kpis(day_ledger().table(), start_s=0.0, duration_s=DAY)
    assert json.loads(json.dumps(result)) == result


def test_no_reports_no_problems_is_none():
    assert field_reporting_kpis(Ledger().table(), start_s=0.0, duration_s=DAY) is None
    led = Ledger()
    led.append("incident.start", 10.0, "L1", cause="crash", capacity_factor=0.3, duration_s=60.0)
    assert field_reporting_kpis(led.table(), start_s=0.0, duration_s=DAY) is None


def test_problems_nobody_reported():
    led = Ledger()
    problem(led, 0.0, "pb1", "waste")
    problem(led, 2 * H, "pb2", "waste")
    v = values(field_reporting_kpis(led.table(), start_s=0.0, duration_s=DAY))
    assert (v["reports"], v["reports_per_day"], v["duplicate_ratio"]) == (0, 0.0, None)
    assert v["problems"] == 2 and v["problems_reported"] == 0.0
    assert v["time_to_first_report_p50"] is None and v["time_to_close_p50"] is None
    assert v["closed_within_deadline"] is None and v[PUBLISHED_KPI] is None
    assert v["backlog_end"] == 0 and v["backlog_peak"] == 0
    assert v["calls"] == 0 and v["calls_abandoned"] is None and v["call_asa"] is None
    assert v["satisfaction_mean"] is None and v["crew_travel_mean"] is None


def test_open_request_before_and_after_its_deadline():
    """The same open request judged late once the run outlasts its deadline, and not judged before."""
    led = Ledger()
    submit(led, 0.0, "r1", 1, channel="web", category="waste", problem="pb1", deadline_h=10)
    short = values(field_reporting_kpis(led.table(), start_s=0.0, duration_s=10 * H))  # deadline == end
    assert short["closed_within_deadline"] is None and short["backlog_end"] == 1
    long = values(field_reporting_kpis(led.table(), start_s=0.0, duration_s=10 * H + 1))
    assert long["closed_within_deadline"] == 0.0
    step(led, 10 * H, 1, "closed", published=True)  # closed exactly at its deadline: on time
    closed = values(field_reporting_kpis(led.table(), start_s=0.0, duration_s=DAY))
    assert closed["closed_within_deadline"] == 100.0 and closed["time_to_close_p99"] == 10.0


def test_duplicates_follow_their_original():
    led = Ledger()
    submit(led, 0.0, "r1", 1, channel="app", category="waste", problem="pb1", deadline_h=24)
    submit(led, 100.0, "r2", 2, channel="app", category="waste", problem="pb1", deadline_h=24, linked_to=1)
    submit(led, 200.0, "r3", 3, channel="web", category="waste", problem="pb1", deadline_h=24, linked_to=1)
    step(led, 300.0, 2, "closed", published=True, duplicate_of=1)  # folded: its own note is no result
    v = values(field_reporting_kpis(led.table(), start_s=0.0, duration_s=DAY))
    assert v[PUBLISHED_KPI] is None  # the original is open, so nobody has a result yet
    assert v["duplicate_ratio"] == pytest.approx(200 / 3, abs=0.01)
    assert v["backlog_end"] == 1 and v["backlog_peak"] == 1  # duplicates are not backlog
    step(led, 400.0, 1, "acknowledged", published=True)
    step(led, 500.0, 1, "closed")  # closed with no public note
    v = values(field_reporting_kpis(led.table(), start_s=0.0, duration_s=DAY))
    assert v[PUBLISHED_KPI] == 0.0 and v["backlog_end"] == 0
    led.append("request.status", 500.0, "1", status="closed", actor="op", published=True)  # a note after all
    v = values(field_reporting_kpis(led.table(), start_s=0.0, duration_s=DAY))
    assert v[PUBLISHED_KPI] == 100.0  # the last closing step counts, for all three reports
    assert v["time_to_close_p50"] == pytest.approx(500 / H, abs=1e-4)  # originals only


def test_retry_counts_once_and_reopened_request_is_backlog_again():
    led = Ledger()
    submit(led, 0.0, "r1", 1, channel="app", category="waste", problem="pb1", deadline_h=24)
    led.append("report.submitted", 5.0, "r1", channel="app", category="waste", problem="pb1", resident=1,
               request_id=1, deadline_t=24 * H, lon=108.2, lat=16.05)  # a retry the IOC answered with request 1
    step(led, H, 1, "resolved", published=True)
    step(led, 2 * H, 1, "in_progress", published=True)  # the fix did not hold
    step(led, 3 * H, 1, "resolved", published=True)
    result = field_reporting_kpis(led.table(), start_s=0.0, duration_s=4 * H)
    v = values(result)
    assert v["reports"] == 1 and v["time_to_close_p50"] == 1.0  # first closing, as the IOC's closed_at
    at = dict(zip(result["series"]["backlog"]["x"], result["series"]["backlog"]["values"]))
    assert (at[0.0], at[H], at[1.5 * H], at[2 * H], at[3 * H]) == (1, 0, 0, 1, 0)


def test_hotline_abandons_only():
    led = Ledger()
    problem(led, 0.0, "pb1", "waste")
    for i, wait in enumerate((10.0, 50.0, 200.0)):
        led.append("call.abandoned", 100.0 * i, "", wait_s=wait, problem="pb1", resident=i)
    v = values(field_reporting_kpis(led.table(), start_s=0.0, duration_s=DAY))
    assert v["calls"] == 3 and v["calls_abandoned"] == 100.0
    assert v["call_asa"] is None and v["calls_answered_30s"] == 0.0
    assert v["reports"] == 0 and v["problems_reported"] == 0.0


def test_km_quantiles():
    d = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    everything = np.ones(5, bool)
    assert km_quantiles(d, everything, (20, 50, 90)) == [
        float(np.percentile(d, q, method="inverted_cdf")) for q in (20, 50, 90)]
    # F = 1/6 after 1, 2/6 after 2; a censored 2.5 leaves 3, 4, 5 at risk, each taking a third of the
    # remaining 4/6: F = 5/9 after 3, 7/9 after 4, 1 after 5
    observed = np.array([True, True, True, True, True, False])
    d6 = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 2.5])
    assert km_quantiles(d6, observed, (30, 40, 60, 100)) == [2.0, 3.0, 4.0, 5.0]
    # a tie: the censored one is still at risk at its own time
    assert km_quantiles([1.0, 1.0, 2.0], [True, False, True], (50,)) == [2.0]
    assert km_quantiles([], [], (50,)) == [None]
    assert km_quantiles([3.0], [False], (50,)) == [None]


def test_problem_outcomes():
    problems = problem_outcomes(day_ledger().table())
    assert problems["problem"].tolist() == ["pb1", "pb2", "pb3", "pb4", "pb5"]
    assert problems["reported"].tolist() == [True, True, False, True, True]
    assert problems["fixed"].tolist() == [True, True, False, False, False]
    assert problems["first_report_t"].iloc[0] == H and problems["link"].iloc[1] == ""
