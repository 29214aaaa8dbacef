"""Load-generator capacity: the live driver's `Sender.http` beside Locust's FastHttpUser, one core each.

Same run, same server: a raw ASGI app under uvicorn (httptools, uvloop, one worker) answering
`GET /` with 200 and 2 bytes, pinned to core 0; the generator under test pinned to core 1 (this process
for the Sender, the Locust process for Locust). The server's own CPU use is recorded for every run to
show it was not the limit. Each side runs `--repeats` times, taking turns; the table shows medians.

- Sender, open model, as the driver runs it (its default limits; `--connections N` caps its HTTP
  connection pool at N instead): requests at evenly spaced intended
  times (`Sender.http`, handed over from the main thread a few milliseconds ahead, as the driver does),
  a fresh Sender for each `--step-s` step of a ladder: from `--start-rps` up by 50 % a step until one
  fails, then from the last that held up by 5 % a step until one fails again. A step holds when every
  request completes without error, at ≥ 95 % of the rate asked while the schedule runs, and the median
  latency (from the intended time) of the requests intended in its last second is ≤ 50 ms. Past
  capacity the generator falls further behind with every request, the latency of the last second grows
  with the step's length, and the step fails. The highest rate held is the *sustained* rate; the most
  completions per second seen in any step is the *saturated* rate.
- Locust: `FastHttpUser` with no wait time (closed loop at full speed), one process (no --processes),
  headless, for `--locust-s` seconds at each of `--locust-users`; its steady requests/s is read from its
  stats history CSV (the first 2 s, while users spawn, left out). Its best user count is its figure.

Requests/s per core: both sides are pinned to one core, so their requests/s is per core; CPU seconds
per request are recorded too (the Sender's include the main thread feeding the schedule).

    .venv/bin/python benchmarks/drive_capacity.py [--repeats 3] [--step-s 4] [--locust-s 15] [--start-rps 200]
                                                  [--locust-users 10,50] [--connections 0]
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import httpx

from _common import write
from drive_servers import cores, pin, run_locust, running
from citytwin.twin.drive.sender import Sender
from citytwin.twin.drive.stats import LAG, Stats

KEY = "http.get"
MAX_IN_FLIGHT = 2000  # the Sender's default cap
LAST_SECOND_MEDIAN_BOUND_MS = 50.0
FEED_AHEAD_S = 0.010  # how far ahead of its intended time a request is handed to the Sender
MAX_STEPS = 24
TIMEOUT_S = 5.0


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def feed_open(submit, start: float, rate: float, n: int) -> int:
    """Hand `n` requests at intended times start + i/rate to `submit`, each a little before it is due
    (bounded: gives up `TIMEOUT_S` after the last intended time). Returns how many were handed over."""
    i = 0
    deadline = start + n / rate + TIMEOUT_S
    while i < n and time.monotonic() < deadline:
        horizon = time.monotonic() + FEED_AHEAD_S
        while i < n and start + i / rate <= horizon:
            submit(start + i / rate)
            i += 1
        time.sleep(0.002)
    return i


def sender_step(url: str, rate: float, seconds: float, server, connections: int | None) -> dict:
    """One open-model step: `rate` requests/s for `seconds`, a fresh Sender and Stats."""
    n = max(1, int(rate * seconds))
    stats = Stats()
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections) \
        if connections else None
    sender = Sender(stats, timeout_s=TIMEOUT_S, max_in_flight=MAX_IN_FLIGHT, http_limits=limits)
    sender.start()
    done: list[tuple[float, float, str | None]] = []  # (intended, done, error), from the Sender's loop thread

    def submit(intended: float) -> None:
        sender.http(intended, KEY, "GET", url,
                    on_done=lambda result, error: done.append((intended, time.monotonic(), error)))

    try:
        start = time.monotonic() + 0.2
        cpu0, server0 = cpu_s(), server.cpu_s()
        handed = feed_open(submit, start, rate, n)
        deadline = start + seconds + TIMEOUT_S + 2.0
        while len(done) < handed and time.monotonic() < deadline:
            time.sleep(0.01)
        end = time.monotonic()
        cpu, server_cpu = cpu_s() - cpu0, server.cpu_s() - server0
    finally:
        sender.stop(drain_s=2.0)
    window = [t for _, t, error in done if error is None and start + 1.0 <= t <= start + seconds]
    first = _median_latency_ms(done, start, start + 1.0)
    last = _median_latency_ms(done, start + seconds - 1.0, start + seconds)
    op, lag = stats.get(KEY), stats.get(LAG)
    errors = dict(op.errors)
    figures = {
        "rate": round(rate, 1), "scheduled": n, "handed": handed, "done": len(done),
        "ok": sum(1 for _, _, error in done if error is None), "errors": errors,
        "latency_first_ms": first, "latency_last_ms": last,
        # completions per second once the first second has passed, while the schedule still runs
        "completed_per_s": round(len(window) / max(seconds - 1.0, 1e-9), 1),
        "latency_p50_ms": _ms(op.percentile(50)), "latency_p99_ms": _ms(op.percentile(99)),
        "lag_p50_ms": _ms(lag.percentile(50)), "lag_p99_ms": _ms(lag.percentile(99)),
        "lag_max_ms": _ms(lag.max_s),
        "cpu_s": round(cpu, 2), "cpu_us_per_request": round(cpu / max(len(done), 1) * 1e6, 1),
        "server_cpu_share": round(server_cpu / max(end - start, 1e-9), 2),
    }
    # Held: everything done without error, at the rate asked, and no backlog building up (a generator past
    # its capacity falls further behind with every request: the latency of the last second's requests,
    # measured from their intended times, grows with the step). A median, so that a pause of the machine
    # (other processes share it) does not fail a step the generator keeps up with.
    figures["held"] = bool(
        figures["ok"] == n and not errors and figures["completed_per_s"] >= 0.95 * rate
        and last is not None and last <= LAST_SECOND_MEDIAN_BOUND_MS)
    return figures


def _median_latency_ms(done: list[tuple[float, float, str | None]], since: float, until: float) -> float | None:
    latencies = [end - t for t, end, error in done if error is None and since <= t < until]
    return round(statistics.median(latencies) * 1e3, 2) if latencies else None


def sender_ladder(url: str, server, start_rps: float, step_s: float, connections: int | None) -> dict:
    """Climb from `start_rps` by 50 % a step until a step does not hold, then from the last one that held
    by 5 % a step until one does not hold again: the highest rate held is the sustained rate."""
    steps, sustained = [], None
    for factor in (1.5, 1.05):
        rate = sustained["rate"] * factor if sustained else start_rps
        while len(steps) < MAX_STEPS:
            step = sender_step(url, rate, step_s, server, connections)
            steps.append(step)
            print(f"  Sender {rate:>9,.0f}/s: {'held' if step['held'] else 'FAILED':6s} "
                  f"{step['completed_per_s']:>9,.0f} completed/s  latency median first/last second "
                  f"{step['latency_first_ms']}/{step['latency_last_ms']} ms  lag p99 {step['lag_p99_ms']} ms  "
                  f"errors {step['errors']}  server CPU {step['server_cpu_share']:.0%}")
            if not step["held"]:
                break
            sustained = step
            rate *= factor
    return {"steps": steps, "sustained_rps": sustained["rate"] if sustained else 0.0,
            "saturated_rps": max(s["completed_per_s"] for s in steps),
            "cpu_us_per_request": sustained["cpu_us_per_request"] if sustained else None}


def locust_runs(url: str, server, users: list[int], seconds: int, core: int | None) -> dict:
    runs = []
    for count in users:
        server0 = server.cpu_s()
        run = run_locust(url, users=count, seconds=seconds, core=core)
        run["server_cpu_share"] = round((server.cpu_s() - server0) / run["wall_s"], 2)
        run["cpu_us_per_request"] = round(run["cpu_s"] / max(run["requests"], 1) * 1e6, 1)
        runs.append(run)
        print(f"  Locust {count:>4d} users: {run['steady_rps']:>9,.0f} requests/s (steady), "
              f"p99 {run['percentiles_s']['99%']} s, failures {run['failures']}, "
              f"server CPU {run['server_cpu_share']:.0%}")
    best = max(runs, key=lambda run: run["steady_rps"] or 0.0)
    return {"runs": runs, "best_users": best["users"], "rps": best["steady_rps"],
            "cpu_us_per_request": best["cpu_us_per_request"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="turns of each generator")
    parser.add_argument("--step-s", type=float, default=4.0, help="seconds of each Sender ladder step")
    parser.add_argument("--start-rps", type=float, default=200.0, help="the Sender ladder's first rate")
    parser.add_argument("--connections", type=int, default=0,
                        help="the Sender's HTTP connection limit (0: its default, as the driver runs it)")
    parser.add_argument("--locust-s", type=int, default=15, help="seconds of each Locust run")
    parser.add_argument("--locust-users", default="10,50", help="Locust user counts to try (comma-separated)")
    args = parser.parse_args()
    if not (1 <= args.repeats <= 10 and 2.0 <= args.step_s <= 30 and 5 <= args.locust_s <= 120):
        raise SystemExit("--repeats in 1..10, --step-s in 2..30, --locust-s in 5..120")
    users = [int(u) for u in args.locust_users.split(",")]
    server_core, generator_core = cores()
    pin(generator_core)  # this process: the Sender's loop thread and the thread feeding it
    sender_runs, locust = [], []
    with running("trivial", core=server_core) as server:
        print(f"trivial server {server.url} on core {server_core}, generators on core {generator_core}")
        for turn in range(args.repeats):
            print(f"turn {turn + 1}/{args.repeats}")
            sender_runs.append(sender_ladder(server.url, server, args.start_rps, args.step_s,
                                             args.connections or None))
            locust.append(locust_runs(server.url, server, users, args.locust_s, generator_core))
    sender = {"sustained_rps": statistics.median(r["sustained_rps"] for r in sender_runs),
              "saturated_rps": statistics.median(r["saturated_rps"] for r in sender_runs),
              "cpu_us_per_request": _median([r["cpu_us_per_request"] for r in sender_runs])}
    peer = {"rps": statistics.median(r["rps"] or 0.0 for r in locust),
            "cpu_us_per_request": _median([r["cpu_us_per_request"] for r in locust])}
    ratio = sender["sustained_rps"] / peer["rps"] if peer["rps"] else None
    print()
    print(f"{'generator (one core)':34s} {'requests/s':>12s} {'CPU µs/request':>15s}")
    print(f"{'Sender.http, sustained open rate':34s} {sender['sustained_rps']:>12,.0f} "
          f"{_fmt(sender['cpu_us_per_request']):>15s}")
    print(f"{'Sender.http, saturated':34s} {sender['saturated_rps']:>12,.0f} {'':>15s}")
    print(f"{'Locust FastHttpUser, closed':34s} {peer['rps']:>12,.0f} {_fmt(peer['cpu_us_per_request']):>15s}")
    print(f"Sender sustained / Locust: {ratio:.2f}× (target ≥ 1.0)" if ratio else "no Locust figure")
    write("drive_capacity", {
        "server": "raw ASGI under uvicorn (httptools, uvloop, 1 worker), GET / -> 200, 2 bytes",
        "cores": {"server": server_core, "generator": generator_core}, "repeats": args.repeats,
        "sender_connections": args.connections or "Sender default",
        "sender_criteria": {"last_second_median_latency_ms": LAST_SECOND_MEDIAN_BOUND_MS,
                            "completed_share": 0.95, "step_s": args.step_s, "max_in_flight": MAX_IN_FLIGHT},
        "sender": {"median": sender, "runs": sender_runs},
        "locust": {"median": peer, "users": users, "seconds": args.locust_s, "runs": locust},
        "sender_over_locust": round(ratio, 3) if ratio else None,
    })


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1e3, 2)


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f}"


if __name__ == "__main__":
    main()
