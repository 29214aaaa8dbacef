"""The live terminal table a drive prints every few seconds (rich)."""

from __future__ import annotations

from rich.table import Table

from citytwin.twin.drive.stats import LAG, OpStats, Stats, is_e2e

RATE_WINDOW_S = 5.0
TABLE_PERCENTILES = (50, 95, 99)


def table(stats: Stats, elapsed_s: float, *, in_flight: int | None = None,
          window_s: float = RATE_WINDOW_S) -> Table:
    """Per key (sorted): count, completions per second over the last `window_s` whole seconds, errors by
    kind, p50/p95/p99/max in ms; then all non-e2e keys together. The caption gives the send lag p99 and,
    when given, the requests in flight. `elapsed_s` is wall time since `stats.start`."""
    title = f"citytwin drive · {clock(elapsed_s)} elapsed"
    caption = []
    lag = stats.get(LAG)
    if lag.count:
        caption.append(f"send lag p99 {_ms(lag.percentile(99))} ms (max {_ms(lag.max_s)} ms)")
    if in_flight is not None:
        caption.append(f"in flight {in_flight:,}")
    grid = Table(title=title, caption=" · ".join(caption) or None, title_justify="left",
                 caption_justify="left")
    grid.add_column("key", no_wrap=True, min_width=12)
    for name in ("count", f"req/s ({window_s:g} s)", "errors"):
        grid.add_column(name, justify="right")
    grid.add_column("error kinds")
    for p in TABLE_PERCENTILES:
        grid.add_column(f"p{p} ms", justify="right")
    grid.add_column("max ms", justify="right")

    now = stats.start + elapsed_s
    keys = stats.keys()
    for key in keys:
        grid.add_row(*_cells(key, stats.get(key), stats.rate(key, now=now, window_s=window_s)))
    requests = [key for key in keys if not is_e2e(key)]
    if len(requests) > 1:
        rate = sum(stats.rate(key, now=now, window_s=window_s) for key in requests)
        grid.add_section()
        grid.add_row(*_cells("all (not e2e)", stats.merged(None), rate), style="bold")
    return grid


def _cells(name: str, op: OpStats, rate: float) -> list[str]:
    values = op.percentiles(TABLE_PERCENTILES)
    errors = op.error_count
    share = f" ({100.0 * errors / op.count:.1f} %)" if errors and op.count else ""
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in sorted(op.errors.items(), key=lambda kv: -kv[1]))
    return [name, f"{op.count:,}", f"{rate:,.1f}", f"{errors:,}{share}", kinds,
            *[_ms(values[p]) for p in TABLE_PERCENTILES], _ms(op.max_s)]


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    ms = seconds * 1000.0
    return f"{ms:,.0f}" if ms >= 100 else f"{ms:.1f}" if ms >= 1 else f"{ms:.2f}"


def clock(seconds: float) -> str:
    """Elapsed wall time as h:mm:ss."""
    whole = max(0, int(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"
