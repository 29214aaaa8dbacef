"""k6-style thresholds: the grammar (property-tested both ways) and what each statistic means."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from citytwin.twin.drive.stats import Stats
from citytwin.twin.drive.thresholds import (OPERATORS, STATS, TIME_STATS, UNITS, Threshold, evaluate,
                                            format_number, parse, stat_kind)

# -- the grammar ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("expr, expected", [
    ("open311.post.p99<300ms", ("open311.post", "p99", "<", 300.0, "ms")),
    ("errors<1%", (None, "errors", "<", 1.0, "%")),
    ("e2e.alert.p95<5s", ("e2e.alert", "p95", "<", 5.0, "s")),
    ("mqtt.publish.rate>100/s", ("mqtt.publish", "rate", ">", 100.0, "/s")),
    ("ngsild.count>=10", ("ngsild", "count", ">=", 10.0, "")),
    ("ngsild.upsert.p99.9 <= 1.5 s", ("ngsild.upsert", "p99.9", "<=", 1.5, "s")),
    ("p99.9<250us", (None, "p99.9", "<", 250.0, "us")),
    ("avg == 20", (None, "avg", "==", 20.0, "ms")),      # k6: a time with no unit is in ms
    ("open311.errors<0.5", ("open311", "errors", "<", 0.5, "%")),
    ("rate>.5", (None, "rate", ">", 0.5, "/s")),
    ("lag.max<40µs", ("lag", "max", "<", 40.0, "µs")),
])
def test_examples_parse(expr, expected):
    threshold = parse(expr)
    assert (threshold.prefix, threshold.stat, threshold.op, threshold.value, threshold.unit) == expected
    assert threshold.expr == expr.strip()
    assert parse(threshold.format()) == threshold


segment = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,8}", fullmatch=True)
prefix = st.one_of(st.none(), st.lists(segment, min_size=1, max_size=4).map(".".join))
value = st.one_of(st.integers(min_value=0, max_value=10**9).map(float),
                  st.floats(min_value=0, max_value=1e9, allow_nan=False, allow_infinity=False),
                  st.decimals(min_value=0, max_value=10**6, places=3).map(float))


@st.composite
def thresholds(draw) -> Threshold:
    stat = draw(st.sampled_from(STATS))
    unit = draw(st.sampled_from(UNITS[stat_kind(stat)]))
    return Threshold(prefix=draw(prefix), stat=stat, op=draw(st.sampled_from(list(OPERATORS))),
                     value=draw(value), unit=unit)


@given(thresholds())
def test_every_expression_of_the_grammar_parses_and_formats_back(threshold):
    text = threshold.format()
    parsed = parse(text)
    assert parsed == threshold
    assert parsed.format() == text
    assert " " not in text


@given(thresholds(), st.sampled_from(["", " ", "  "]), st.sampled_from(["", " ", "\t"]))
def test_spaces_around_the_comparison_and_before_the_unit_are_allowed(threshold, around, before_unit):
    text = (f"{around}{threshold.metric}{around}{threshold.op}{around}"
            f"{format_number(threshold.value)}{before_unit}{threshold.unit}{around}")
    assert parse(text) == threshold


@settings(max_examples=300)
@given(st.text(max_size=40))
def test_garbage_raises_value_error_or_parses_to_something_that_formats_back(text):
    try:
        threshold = parse(text)
    except ValueError as error:
        assert str(error)
    else:
        assert parse(threshold.format()) == threshold


@given(thresholds(), st.sampled_from(["", "!", "=", "=>", "<<", "=<"]))
def test_a_wrong_or_missing_comparison_says_which_ones_exist(threshold, op):
    text = f"{threshold.metric}{op}{format_number(threshold.value)}{threshold.unit}"
    with pytest.raises(ValueError, match="<=") as raised:
        parse(text)
    assert text in str(raised.value)


@given(thresholds(), st.sampled_from(["p42", "median", "p99.99", "P99", "errs", "rps"]))
def test_an_unknown_statistic_lists_the_known_ones(threshold, stat):
    text = f"{threshold.prefix + '.' if threshold.prefix else ''}{stat}<1"
    with pytest.raises(ValueError, match=r"unknown statistic .*p50, p90, p95, p99, p99\.9"):
        parse(text)


@given(st.sampled_from(STATS), st.sampled_from(["ms", "s", "us", "%", "/s", "x", "min", "MS"]))
def test_a_unit_that_does_not_fit_the_statistic_is_refused_with_the_ones_that_do(stat, unit):
    text = f"{stat}<5{unit}"
    if unit in UNITS[stat_kind(stat)]:
        assert parse(text).unit == unit
        return
    with pytest.raises(ValueError) as raised:
        parse(text)
    message = str(raised.value)
    expected = [u for u in UNITS[stat_kind(stat)] if u] or ["no unit"]
    assert all(u in message for u in expected), message


@pytest.mark.parametrize("text, needle", [
    ("", "empty threshold"),
    ("   ", "empty threshold"),
    ("<300ms", "no metric"),
    ("p99<", "expected a non-negative number"),
    ("p99<-5ms", "expected a non-negative number"),
    ("p99<abc", "expected a non-negative number"),
    ("p99<1e3ms", "not 'e3ms'"),
    ("p99<300ms<400ms", "2 comparisons"),
    ("open311..post.p99<1s", "key prefix 'open311..post'"),
    ("open 311.p99<1s", "key prefix 'open 311'"),
    ("p99=300ms", "write == for equality"),
])
def test_bad_expressions_say_what_was_expected(text, needle):
    with pytest.raises(ValueError, match="expected|not|empty|comparison|prefix|==") as raised:
        parse(text)
    assert needle in str(raised.value)


def test_format_number_is_positional_and_short():
    assert [format_number(v) for v in (300.0, 0.5, 1e-05, 1e16, 12.25)] == \
           ["300", "0.5", "0.00001", "10000000000000000", "12.25"]


# -- evaluation ----------------------------------------------------------------------------------------


def _stats() -> Stats:
    stats = Stats(start=0.0, start_unix=0.0)
    for i in range(100):  # open311.post: 100 requests, 300 ms each, 2 failed
        stats.record("open311.post", i * 0.1, i * 0.1 + 0.3, error="http_5xx" if i < 2 else None)
    for i in range(50):  # open311.token: 50 at 10 ms
        stats.record("open311.token", i * 0.1, i * 0.1 + 0.01, started=i * 0.1 + 0.004)
    for i in range(10):  # mqtt.publish: 10 at 1 ms, all failed
        stats.record("mqtt.publish", i, i + 0.001, error="timeout")
    stats.record("open311x.post", 1.0, 1.1)
    for i in range(20):  # end to end: 20 at 2 s
        stats.record_latency("e2e.alert", 2.0, at=i + 2.0)
    return stats


def _check(exprs: list[str], duration_s: float = 10.0):
    return {r.expr: (r.ok, r.actual, r.unit) for r in evaluate([parse(e) for e in exprs], _stats(), duration_s)}


def test_errors_are_the_share_of_failed_requests_over_the_selected_keys():
    results = _check(["errors<10%", "open311.errors<=2%", "open311.post.errors==2%", "mqtt.errors>99%",
                      "open311.token.errors==0"])
    assert results["errors<10%"] == (True, pytest.approx(100 * 12 / 161), "%")  # e2e left out
    assert results["open311.errors<=2%"] == (True, pytest.approx(100 * 2 / 150), "%")  # not open311x
    assert results["open311.post.errors==2%"] == (True, 2.0, "%")
    assert results["mqtt.errors>99%"][:2] == (True, 100.0)
    assert results["open311.token.errors==0"][:2] == (True, 0.0)


def test_rate_is_requests_per_second_over_the_run_and_count_is_a_count():
    results = _check(["open311.rate>=15/s", "rate>16/s", "e2e.rate==2/s", "ngsild.count>=10",
                      "open311.post.count==100"], duration_s=10.0)
    assert results["open311.rate>=15/s"] == (True, 15.0, "/s")
    assert results["rate>16/s"] == (True, 16.1, "/s")
    assert results["e2e.rate==2/s"][:2] == (True, 2.0)
    assert results["ngsild.count>=10"] == (False, None, "")  # no data fails, as in k6
    assert results["open311.post.count==100"][:2] == (True, 100.0)
    assert _check(["rate>1"], duration_s=0.0)["rate>1"] == (False, None, "/s")


def test_latencies_are_read_in_the_unit_written():
    results = _check(["open311.post.max==300ms", "open311.post.max<300ms", "open311.post.max<=0.3s",
                      "open311.post.min>=300000us", "open311.token.avg==10ms", "open311.token.p50<=10.01ms",
                      "open311.p99<310ms", "e2e.alert.p95<5s", "e2e.alert.p95<2s", "p99.9<1s",
                      "lag.max==4ms"])
    assert results["open311.post.max==300ms"] == (True, 300.0, "ms")
    assert results["open311.post.max<300ms"] == (False, 300.0, "ms")
    assert results["open311.post.max<=0.3s"] == (True, 0.3, "s")
    assert results["open311.post.min>=300000us"] == (True, 300000.0, "us")
    assert results["open311.token.avg==10ms"][:2] == (True, 10.0)
    assert results["open311.token.p50<=10.01ms"][0] is True
    assert results["open311.p99<310ms"][1] == pytest.approx(300.0, rel=1e-3)
    assert results["e2e.alert.p95<5s"][:2] == (True, pytest.approx(2.0, rel=1e-3))
    assert results["e2e.alert.p95<2s"][0] is False  # HDR reports the top of the 2 s bucket
    assert results["p99.9<1s"][0] is True  # e2e's 2 s are not in the unprefixed aggregate
    assert results["lag.max==4ms"] == (True, 4.0, "ms")


def test_results_keep_the_text_as_written_and_read_well():
    [result] = evaluate([parse(" open311.post.p99 < 300 ms ")], _stats(), 10.0)
    assert result.expr == "open311.post.p99 < 300 ms" and result.ok is False
    assert str(result).startswith("FAIL open311.post.p99 < 300 ms  (actual 300.")
    [missing] = evaluate([parse("nothing.p99<1s")], _stats(), 10.0)
    assert str(missing) == "FAIL nothing.p99<1s  (actual no data)"
    [made] = evaluate([Threshold(prefix=None, stat="count", op=">", value=1, unit="")], _stats(), 10.0)
    assert made.expr == "count>1" and made.ok
    assert set(TIME_STATS) < set(STATS)
