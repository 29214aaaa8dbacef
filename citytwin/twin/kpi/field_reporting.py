"""Field-reporting KPIs ("phản ánh hiện trường"): pure functions of the ledger.

The unit is the request: every `report.submitted` row opens one (a client retry that returns the same
request id is counted once). A request is a *duplicate* when the IOC linked it to an earlier one, on arrival
or when an operator marked it; every other request is an *original*. Workflow times (acknowledge, close,
deadline, backlog) are about originals, because a duplicate is closed by folding it into its original and
its own "closing" says nothing about the service. What a reporter gets back is about every report: a
duplicate's result is its original's.

Times still running at the end of the run (a request not closed yet, a problem nobody has reported yet)
are right-censored, not dropped: percentiles are Kaplan–Meier estimates, so a request open for ten hours at
the end counts as "more than ten hours" rather than vanishing from the sample (which would flatter the IOC)
or counting as "forever" (which would not). A percentile the run is too short to reach is None.

A request is closed when it is resolved or closed (Open311's "closed"; what the reporter sees). A request
closed by its deadline is on time; one still open at the end is late once its deadline has passed and is
left out while it can still make it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from ..ledger import events
from .traffic import kpi

CLOSED = ("resolved", "closed")
CHANNELS = ("app", "hotline", "web")  # scenario.schema.CHANNELS: listed even when a run has none of them
PUBLISHED_KPI = "L1.N1.PN2.01"  # Bắc Giang KPI table: "Việc công khai kết quả phản ánh của người dân"
PUBLISHED_TARGET = 100.0  # % (the table's target for every year)
ANSWER_WITHIN_S = 30.0  # hotline service level threshold
SATISFIED = 4.0  # a score at or above this counts as satisfied
QUANTILES = (50, 90, 99)
STARS = (1, 2, 3, 4, 5)


def field_reporting_kpis(table: pa.Table, *, start_s: float, duration_s: float) -> dict | None:
    """KPIs, series and tables of the field-reporting service; None when the run has no problems or reports.

    `start_s` (clock seconds of virtual t = 0) aligns the report bins with clock hours or days;
    `duration_s` is the end of the run, when whatever is still open is censored.
    """
    reports = _reports(table)
    problems = problem_outcomes(table)
    if reports.empty and problems.empty:
        return None
    end = float(duration_s)
    status = events(table, "request.status")
    req = _requests(reports, status, end)
    orig = req[~req["duplicate"]]
    feedback = events(table, "report.feedback")
    answered, abandoned = events(table, "call.answered"), events(table, "call.abandoned")
    backlog_t, backlog_n = _backlog_steps(req, status)

    out: dict = {}
    out.update(_volume_kpis(req, end))
    out.update(_time_kpis("time_to_acknowledge", "Time to acknowledge", orig, "ack_t", end))
    out.update(_time_kpis("time_to_close", "Time to close", orig, "close_t", end))
    on_time, judged = _deadline_counts(orig, end)
    out["closed_within_deadline"] = kpi(_pct(on_time, judged), "%",
                                        "Requests closed within their deadline (originals)")
    published, with_result = _published_counts(req)
    out[PUBLISHED_KPI] = {**kpi(_pct(published, with_result), "%",
                                "L1.N1.PN2.01 Reports whose result was published to the reporter"),
                          "target": PUBLISHED_TARGET, "indicator": PUBLISHED_KPI}
    out["backlog_end"] = kpi(int(orig["open_end"].sum()), "requests", "Open requests at the end (originals)")
    out["backlog_peak"] = kpi(int(backlog_n.max()) if len(backlog_n) else 0, "requests",
                              "Most requests open at once (originals)")
    out.update(_problem_kpis(problems, end))
    out.update(_satisfaction_kpis(feedback, events(table, "report.given_up")))
    out.update(_hotline_kpis(answered, abandoned))
    out.update(_crew_kpis(events(table, "crew.travel")))

    series = {
        "reports_by_channel": _reports_by_channel(req, start_s, end),
        "backlog": _backlog_series(backlog_t, backlog_n, end),
        "satisfaction": {"unit": "reports", "label": "Satisfaction scores (rounded to whole stars)",
                         "x": list(STARS), "values": _star_counts(feedback["satisfaction"])},
    }
    tables = {
        "by_category": _category_table(req, problems, feedback, end),
        "by_channel": _channel_table(req, feedback, end),
    }
    return {"kpis": out, "series": series, "tables": tables}


# -- the requests ----------------------------------------------------------------------------------------

def _reports(table: pa.Table) -> pd.DataFrame:
    """One row per request, from its first report.submitted row."""
    reports = events(table, "report.submitted")
    reports = reports[reports["request_id"].notna()]
    return reports.drop_duplicates("request_id", keep="first").reset_index(drop=True)


def _requests(reports: pd.DataFrame, status: pd.DataFrame, end: float) -> pd.DataFrame:
    """Each request with its workflow times: received `t`, `ack_t` (first step past received), `close_t`
    (first resolved or closed), whether it is open at the end, whether its last closing step published a
    note, and the original it folds into (`root`, itself for originals)."""
    req = reports.assign(request_id=reports["request_id"].astype("int64"))
    req.index = req["request_id"].to_numpy()
    status = _status_of(status, req.index)
    by_req = status.groupby("request_id")
    closing = status[status["status"].isin(CLOSED)]

    req["ack_t"] = status[status["status"] != "received"].groupby("request_id")["t"].min()
    req["close_t"] = closing.groupby("request_id")["t"].min()
    last = by_req["status"].last()
    req["open_end"] = ~last.reindex(req.index).isin(CLOSED)  # no status row yet: still received, open
    published = closing.groupby("request_id")["published"].last().reindex(req.index)
    req["published"] = _flag(published) & ~req["open_end"].to_numpy(dtype=bool)
    marked = status.dropna(subset=["duplicate_of"]).groupby("request_id")["duplicate_of"].last()
    dup_of = marked.reindex(req.index).fillna(req["duplicate_of"])
    req["duplicate"] = dup_of.notna()
    req["root"] = _roots(req.index.to_numpy(), dup_of.to_numpy())
    return req


def _status_of(status: pd.DataFrame, ids) -> pd.DataFrame:
    """The request.status rows of the requests `ids`, in time order (ledger order within a time)."""
    rid = pd.to_numeric(status["subject"], errors="coerce")
    status = status.assign(request_id=rid.fillna(-1).astype("int64"))
    return status[rid.notna().to_numpy() & status["request_id"].isin(ids).to_numpy()].sort_values(
        "t", kind="stable")


def _roots(ids: np.ndarray, dup_of: np.ndarray) -> np.ndarray:
    """The original each request folds into. The IOC links to roots already; the hops are a safeguard
    against an IOC that links a duplicate to a duplicate. A root outside the ledger stays as given."""
    parent = dict(zip(ids.tolist(), [None if pd.isna(d) else int(d) for d in dup_of]))
    roots = []
    for rid in ids.tolist():
        node, seen = rid, {rid}
        while parent.get(node) is not None and parent[node] not in seen:
            node = parent[node]
            seen.add(node)
        roots.append(node)
    return np.asarray(roots, dtype=np.int64)


def _published_counts(req: pd.DataFrame, reports: pd.DataFrame | None = None) -> tuple[int, int]:
    """(reports whose result was published, reports with a result), of `reports` (default: all): a report
    has a result once the request it folds into is closed; published when that request's last closing
    step carried a note. A root outside the ledger has no result."""
    root = req.reindex((req if reports is None else reports)["root"].to_numpy())
    has_result = ~_flag(root["open_end"], default=True)
    published = _flag(root["published"]) & has_result
    return int(published.sum()), int(has_result.sum())


def _deadline_counts(orig: pd.DataFrame, end: float) -> tuple[int, int]:
    """(closed on time, judged): an open request is judged (as late) only once its deadline has passed."""
    deadline = orig["deadline_t"]
    closed = orig["close_t"].notna()
    on_time = closed & (orig["close_t"] <= deadline)
    judged = deadline.notna() & (closed | (deadline < end))
    return int((on_time & judged).sum()), int(judged.sum())


def _durations(frame: pd.DataFrame, done_col: str, end: float) -> tuple[np.ndarray, np.ndarray]:
    """Time from received to `done_col`, censored at the end where it has not happened."""
    done = frame[done_col].to_numpy(dtype=float)
    observed = np.isfinite(done)
    d = np.where(observed, done, end) - frame["t"].to_numpy(dtype=float)
    return np.maximum(d, 0.0), observed


def km_quantiles(durations, observed, qs=QUANTILES) -> list[float | None]:
    """Kaplan–Meier percentiles of right-censored durations: the smallest observed duration t with
    1 - S(t) >= q. Without censoring this is the plain empirical percentile (numpy's "inverted_cdf")."""
    d = np.asarray(durations, dtype=float)
    e = np.asarray(observed, dtype=bool)
    if not e.any():
        return [None] * len(qs)
    order = np.lexsort((~e, d))  # by duration; at a tie the events first, the censored still at risk
    d, e = d[order], e[order]
    at_risk = len(d) - np.arange(len(d))
    cdf = 1.0 - np.cumprod(np.where(e, 1.0 - 1.0 / at_risk, 1.0))
    out = []
    for q in qs:
        hit = np.flatnonzero(e & (cdf >= q / 100.0 - 1e-9))
        out.append(float(d[hit[0]]) if len(hit) else None)
    return out


def _flag(values: pd.Series, default: bool = False) -> np.ndarray:
    """A nullable boolean column as a NumPy bool array, nulls as `default`."""
    return values.astype("boolean").fillna(default).to_numpy(dtype=bool)


def _channels(req: pd.DataFrame, always=CHANNELS) -> list[str]:
    """`always` and then the channels the reports used, the usual three in their usual order."""
    seen = set(req["channel"].dropna())
    return [c for c in CHANNELS if c in always or c in seen] + sorted(seen - set(CHANNELS))


def _hours(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds / 3600.0, 4)


def _pct(part: float, whole: float) -> float | None:
    return round(100.0 * part / whole, 2) if whole else None


def _per_day(n: float, end: float) -> float | None:
    return round(n * 86400.0 / end, 3) if end > 0 else None


def _time_kpis(key: str, label: str, orig: pd.DataFrame, done_col: str, end: float) -> dict:
    d, observed = _durations(orig, done_col, end)
    values = km_quantiles(d, observed)
    return {f"{key}_p{q}": kpi(_hours(v), "h", f"{label}, p{q} (originals, from received)")
            for q, v in zip(QUANTILES, values)}


def _volume_kpis(req: pd.DataFrame, end: float) -> dict:
    n = len(req)
    channels = _channels(req)
    out = {
        "reports": kpi(n, "reports", "Field reports"),
        "reports_per_day": kpi(_per_day(n, end), "reports/day", "Field reports per day"),
    }
    for ch in channels:
        out[f"reports_per_day_{ch}"] = kpi(_per_day(int((req["channel"] == ch).sum()), end), "reports/day",
                                           f"Field reports per day via {ch}")
    out["duplicate_ratio"] = kpi(_pct(int(req["duplicate"].sum()), n), "%",
                                 "Reports linked as duplicates of an earlier request")
    about = req[req["problem"].fillna("") != ""].sort_values("t", kind="stable")
    out["repeat_report_ratio"] = kpi(_pct(int(about["problem"].duplicated().sum()), len(about)), "%",
                                     "Reports about a problem already reported (ground truth)")
    return out


# -- problems (ground truth) -----------------------------------------------------------------------------

def problem_outcomes(table: pa.Table) -> pd.DataFrame:
    """Each problem that started, with where it is, when it was first reported (NaN: never) and fixed."""
    problems = events(table, "problem.start").drop_duplicates("subject", keep="first")
    problems = problems.rename(columns={"subject": "problem", "t": "start_t", "cause": "kind"})
    reports = events(table, "report.submitted", ["problem"])
    first = reports[reports["problem"].fillna("") != ""].groupby("problem")["t"].min()
    fixed = events(table, "problem.fixed", []).groupby("subject")["t"].min()
    problems["first_report_t"] = problems["problem"].map(first).astype(float)
    problems["fixed_t"] = problems["problem"].map(fixed).astype(float)
    problems["reported"] = problems["first_report_t"].notna()
    problems["fixed"] = problems["fixed_t"].notna()
    return problems.reset_index(drop=True)


def _problem_kpis(problems: pd.DataFrame, end: float) -> dict:
    n = len(problems)
    first = problems["first_report_t"].to_numpy(dtype=float)
    observed = np.isfinite(first)
    d = np.maximum(np.where(observed, first, end) - problems["start_t"].to_numpy(dtype=float), 0.0)
    p50, p90 = km_quantiles(d, observed, (50, 90))
    return {
        "problems": kpi(n, "problems", "Urban problems that arose (ground truth)"),
        "problems_reported": kpi(_pct(int(observed.sum()), n), "%", "Problems reported at least once"),
        "time_to_first_report_p50": kpi(_hours(p50), "h", "Time from a problem's start to its first report, p50"),
        "time_to_first_report_p90": kpi(_hours(p90), "h", "Time from a problem's start to its first report, p90"),
        "problems_fixed": kpi(_pct(int(problems["fixed"].sum()), n), "%", "Problems fixed by the end"),
    }


# -- reporters, hotline, crews ---------------------------------------------------------------------------

def _mean(values: pd.Series, digits: int = 3) -> float | None:
    values = values.dropna()
    return round(float(values.mean()), digits) if len(values) else None


def _satisfaction_kpis(feedback: pd.DataFrame, given_up: pd.DataFrame) -> dict:
    s = feedback["satisfaction"].dropna()
    published = _flag(feedback["published"])
    return {
        "feedback": kpi(int(len(s)), "reports", "Reporters who rated the outcome"),
        "satisfaction_mean": kpi(_mean(s), "1–5", "Reporter satisfaction, mean"),
        "satisfied_share": kpi(_pct(int((s >= SATISFIED).sum()), len(s)), "%",
                               f"Reporters satisfied ({SATISFIED:g} or more of 5)"),
        "satisfaction_mean_published": kpi(_mean(feedback.loc[published, "satisfaction"]), "1–5",
                                           "Satisfaction when the result was published"),
        "satisfaction_mean_unpublished": kpi(_mean(feedback.loc[~published, "satisfaction"]), "1–5",
                                             "Satisfaction when the result was not published"),
        "gave_up": kpi(int(len(given_up)), "reports", "Reporters who stopped following an open report"),
    }


def _star_counts(satisfaction: pd.Series) -> list[int]:
    stars = np.clip(np.floor(satisfaction.dropna().to_numpy(dtype=float) + 0.5), 1, 5).astype(int)
    return [int((stars == k).sum()) for k in STARS]


def _hotline_kpis(answered: pd.DataFrame, abandoned: pd.DataFrame) -> dict:
    calls = len(answered) + len(abandoned)
    wait = answered["wait_s"].dropna()
    return {
        "calls": kpi(calls, "calls", "Hotline 1022 calls"),
        "calls_abandoned": kpi(_pct(len(abandoned), calls), "%", "Hotline calls abandoned before an answer"),
        "call_asa": kpi(_mean(wait, 1), "s", "Hotline average speed of answer (answered calls)"),
        "calls_answered_30s": kpi(_pct(int((wait <= ANSWER_WITHIN_S).sum()), calls), "%",
                                  f"Hotline calls answered within {ANSWER_WITHIN_S:g} s (of all calls)"),
    }


def _crew_kpis(travel: pd.DataFrame) -> dict:
    minutes = travel["travel_time_s"].dropna().to_numpy(dtype=float) / 60.0
    p90 = km_quantiles(minutes, np.ones(len(minutes), bool), (90,))[0] if len(minutes) else None
    return {
        "crew_trips": kpi(int(len(minutes)), "trips", "Crew trips to a problem"),
        "crew_travel_mean": kpi(round(float(minutes.mean()), 3) if len(minutes) else None, "min",
                                "Crew travel time, mean"),
        "crew_travel_p90": kpi(None if p90 is None else round(p90, 3), "min", "Crew travel time, p90"),
    }


# -- series and tables -----------------------------------------------------------------------------------

def _reports_by_channel(req: pd.DataFrame, start_s: float, end: float) -> dict:
    """Report counts per clock hour (runs up to three days) or clock day, by channel. `x` is where each bin
    starts in run time (the first may start at 0 in mid-bin), the last ends at the end of the run."""
    bin_s = 3600.0 if end <= 3 * 86400 else 86400.0
    first = -(start_s % bin_s)
    n_bins = max(int(np.ceil((end - first) / bin_s)), 1) if end > 0 else 0
    edges = first + bin_s * np.arange(n_bins)
    channels = _channels(req, always=())
    k = np.clip(np.floor((req["t"].to_numpy(dtype=float) - first) / bin_s).astype(int), 0, max(n_bins - 1, 0))
    values = {ch: np.bincount(k[(req["channel"] == ch).to_numpy()], minlength=n_bins)[:n_bins].tolist()
              for ch in channels}
    unit = "reports/h" if bin_s == 3600.0 else "reports/day"
    return {"unit": unit, "label": "Field reports by channel", "bin_s": bin_s,
            "x": [float(max(e, 0.0)) for e in edges], "values": values}


def _backlog_steps(req: pd.DataFrame, status: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Open originals after each change: a request is open from its report to its (first or any later)
    closing, and open again if it is reopened."""
    orig = req.index[~req["duplicate"].to_numpy(dtype=bool)]
    status = _status_of(status, orig)
    opened = req.loc[orig, ["t", "request_id"]].assign(open=1, first=True)
    rows = pd.concat([opened, status.assign(open=(~status["status"].isin(CLOSED)).astype(int), first=False)
                      [["t", "request_id", "open", "first"]]], ignore_index=True)
    rows = rows.sort_values(["t", "first"], ascending=[True, False], kind="stable")  # the report first
    prev = rows.groupby("request_id")["open"].shift(fill_value=0)
    delta = rows["open"].to_numpy() - prev.to_numpy()
    t = rows["t"].to_numpy(dtype=float)
    n = np.cumsum(delta)
    keep = np.append(t[1:] != t[:-1], True) if len(t) else np.zeros(0, bool)  # the count once all at t apply
    return t[keep], n[keep]


def _backlog_series(t: np.ndarray, n: np.ndarray, end: float) -> dict:
    step = 900.0 if end <= 3 * 86400 else 3600.0
    x = np.append(np.arange(0.0, end, step), max(end, 0.0))
    i = np.searchsorted(t, x, side="right") - 1
    values = np.where(i >= 0, n[np.maximum(i, 0)] if len(n) else 0, 0)
    return {"unit": "requests", "label": "Open requests (originals)", "x": x.tolist(),
            "values": [int(v) for v in values]}


def _close_quantiles(frame: pd.DataFrame, end: float) -> list[float | None]:
    d, observed = _durations(frame, "close_t", end)
    return [_hours(v) for v in km_quantiles(d, observed, (50, 90))]


def _category_table(req: pd.DataFrame, problems: pd.DataFrame, feedback: pd.DataFrame, end: float) -> list[dict]:
    sat = _scores(feedback)
    categories = sorted(set(req["category"].dropna()) | set(problems["category"].dropna()))
    rows = []
    for cat in categories:
        r = req[req["category"] == cat]
        o = r[~r["duplicate"]]
        on_time, judged = _deadline_counts(o, end)
        d_ack, ack_obs = _durations(o, "ack_t", end)
        close_p50, close_p90 = _close_quantiles(o, end)
        p = problems[problems["category"] == cat]
        allowed = (o["deadline_t"] - o["t"]).dropna()
        rows.append({
            "category": cat,
            "reports": int(len(r)),
            "duplicates": int(r["duplicate"].sum()),
            "open_end": int(o["open_end"].sum()),
            "deadline_h": _hours(float(allowed.median())) if len(allowed) else None,
            "within_deadline": _pct(on_time, judged),
            "judged": judged,
            "ack_p50_h": _hours(km_quantiles(d_ack, ack_obs, (50,))[0]),
            "close_p50_h": close_p50,
            "close_p90_h": close_p90,
            "satisfaction_mean": _mean(sat.reindex(r["subject"])),
            "problems": int(len(p)),
            "problems_reported": _pct(int(p["reported"].sum()), len(p)),
        })
    return rows


def _channel_table(req: pd.DataFrame, feedback: pd.DataFrame, end: float) -> list[dict]:
    sat = _scores(feedback)
    rows = []
    for ch in _channels(req, always=()):
        r = req[req["channel"] == ch]
        published, with_result = _published_counts(req, r)
        rows.append({
            "channel": ch,
            "reports": int(len(r)),
            "share": _pct(len(r), len(req)),
            "duplicates": _pct(int(r["duplicate"].sum()), len(r)),
            "close_p50_h": _close_quantiles(r[~r["duplicate"]], end)[0],
            "published": _pct(published, with_result),
            "satisfaction_mean": _mean(sat.reindex(r["subject"])),
        })
    return rows


def _scores(feedback: pd.DataFrame) -> pd.Series:
    """Satisfaction by report key (a report rated twice counts with its last score)."""
    return feedback.drop_duplicates("subject", keep="last").set_index("subject")["satisfaction"]
