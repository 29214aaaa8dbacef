"""Measurement honesty: what the live driver's `Sender` reports against a stalling server, beside the
truth and beside Locust's closed model.

The server (`drive_servers.py --kind stall`, pinned to core 0) answers `GET /` at once, except that it
stops answering during the last second of every 10 s counted from an epoch this benchmark chooses;
requests arriving during a stall are answered when it ends. The load (pinned to core 1) is ~50 requests/s
for `--seconds` (60 by default: six stalls).

- Sender (open model): requests at intended times t_i = start + i/50, handed to `Sender.http`; the
  latency it reports is completion − intended, from its HDR histogram.
- True: the latency every request of that intended schedule would see, computed from the stall timeline
  (known exactly: the epoch is this benchmark's) and the observed service time s (the median latency of
  the Sender's requests intended outside stalls): a request intended at t completes at
  max(t, end of the stall covering t) + s. 10 % of the schedule falls in a stall, with latencies spread
  evenly over (s, 1 s + s], so the true p90 is ≈ s, p95 ≈ 0.5 s, p99 ≈ 0.9 s, p99.9 ≈ 1 s.
- Locust (closed model): FastHttpUser with `constant_throughput` sized so that its users send 50
  requests/s in total while the server answers (1 user at 50/s, 5 at 10/s, 50 at 1/s by default).

Why they differ — coordinated omission: a closed-model user waits for each response before it sends the
next request, so while the server stalls it does not send the requests it was meant to send; it records
one slow sample per user per stall instead of one for every request of the stalled second. The samples
it omits are exactly the slow ones a population of independent clients (an open arrival process) would
have suffered, so its percentiles read low:
- 1 user at 50/s: a stall yields one ~1 s sample and 49 requests never sent; ~6 slow samples in ~2,700
  (0.2 %), so p99 reads as the service time and only p99.9 and the maximum see the stall;
- 5 users at 10/s: ~5 slow samples a stall, ~1 % of what it records: p99 sits on the edge, and from
  one run to the next it reads either as the service time or as ~1 s, while p95 reads as the service
  time (the truth: 0.5 s);
- 50 users at 1/s: no send is omitted (each user's next one is due when the stall ends), but users
  spawned in the same second pace in lockstep, so every stall is sampled at one offset only and all its
  slow samples read the same (0.54 to 0.66 s in our runs, by the phase the users happened to start at),
  missing the 1 s worst case.
The Sender measures each request from its intended time whatever the server does, so its percentiles
follow the true ones (up to the few ms it takes to answer the 50 requests released at once when a stall
ends, which the computed truth, with a constant service time, leaves out).

    .venv/bin/python benchmarks/drive_honesty.py [--seconds 60] [--rate 50] [--locust-users 1,5,50]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import write
from drive_capacity import feed_open
from drive_servers import cores, pin, run_locust, running, stall_end
from citytwin.twin.drive.sender import Sender
from citytwin.twin.drive.stats import LAG, Stats

KEY = "http.get"
EVERY_S = 10.0
STALL_S = 1.0
TIMEOUT_S = 5.0  # longer than a stall: no request may time out
PERCENTILES = (50, 90, 95, 99, 99.9, 100)
LOCUST_COLUMNS = {50: "50%", 90: "90%", 95: "95%", 99: "99%", 99.9: "99.9%", 100: "100%"}
SETTLED_S = 0.2  # after a stall ends, the held requests are still being answered


def sender_run(url: str, rate: float, seconds: float, start: float) -> tuple[Stats, list[tuple[float, float, str | None]]]:
    """The open schedule through a Sender: its Stats and (intended, done, error) of every request."""
    n = int(rate * seconds)
    stats = Stats()
    sender = Sender(stats, timeout_s=TIMEOUT_S)
    sender.start()
    done: list[tuple[float, float, str | None]] = []  # appended from the Sender's loop thread

    def submit(intended: float) -> None:
        sender.http(intended, KEY, "GET", url,
                    on_done=lambda result, error: done.append((intended, time.monotonic(), error)))

    try:
        handed = feed_open(submit, start, rate, n)
        deadline = start + seconds + TIMEOUT_S + 2.0
        while len(done) < handed and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        sender.stop(drain_s=2.0)
    return stats, done


def in_stall(t: float, epoch: float) -> bool:
    return stall_end(t, epoch, EVERY_S, STALL_S) is not None


def service_time(done: list[tuple[float, float, str | None]], epoch: float) -> float:
    """The median latency of requests intended outside stalls and outside the catch-up just after one."""
    clear = [end - t for t, end, error in done
             if error is None and not in_stall(t, epoch) and not in_stall(t - SETTLED_S, epoch)]
    return float(np.median(clear))


def true_latencies(intended: np.ndarray, epoch: float, service_s: float) -> np.ndarray:
    """What each request of the intended schedule would see: wait for the stall covering it, then service."""
    start = np.array([stall_end(t, epoch, EVERY_S, STALL_S) or t for t in intended])
    return start - intended + service_s


def percentiles_s(values: np.ndarray) -> dict[str, float]:
    """Percentiles by HdrHistogram's rank rule (the value of the round(p % of n)-th smallest), so that the
    truth and the Sender's HDR figures are read the same way: here p99 falls where the latency steps by
    20 ms (one request interval), and a rank off by one would show as a 20 ms difference."""
    ordered = np.sort(values)
    return {f"p{p:g}": round(float(ordered[max(int(p / 100 * len(ordered) + 0.5), 1) - 1]), 4)
            for p in PERCENTILES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="seconds of each run (a multiple of 10)")
    parser.add_argument("--rate", type=float, default=50.0, help="requests/s (open schedule; Locust's total)")
    parser.add_argument("--locust-users", default="1,5,50", help="Locust user counts (comma-separated)")
    args = parser.parse_args()
    if not (10 <= args.seconds <= 600 and args.seconds % 10 == 0 and 1 <= args.rate <= 1000):
        raise SystemExit("--seconds a multiple of 10 in 10..600, --rate in 1..1000")
    users = [int(u) for u in args.locust_users.split(",")]
    server_core, generator_core = cores()
    pin(generator_core)
    epoch = time.monotonic() + 2.0
    with running("stall", core=server_core, epoch=epoch, every_s=EVERY_S, stall_s=STALL_S) as server:
        # start on a period boundary so the run covers whole periods (its stalls are its last seconds)
        start = epoch + EVERY_S * max(0, int(np.ceil((time.monotonic() + 0.5 - epoch) / EVERY_S)))
        print(f"stall server {server.url} on core {server_core}: stalls {STALL_S:g} s every {EVERY_S:g} s; "
              f"Sender at {args.rate:g}/s for {args.seconds} s")
        stats, done = sender_run(server.url, args.rate, args.seconds, start)
        locust = []
        for count in users:
            print(f"Locust, {count} users at {args.rate / count:g}/s each, {args.seconds} s")
            locust.append(run_locust(server.url, users=count, seconds=args.seconds,
                                     per_user_rps=args.rate / count, core=generator_core))
    op, lag = stats.get(KEY), stats.get(LAG)
    intended = start + np.arange(int(args.rate * args.seconds)) / args.rate
    service = service_time(done, epoch)
    truth = percentiles_s(true_latencies(intended, epoch, service))
    reported = {f"p{p:g}": round(op.percentile(p), 4) for p in PERCENTILES}
    observed = percentiles_s(np.array([end - t for t, end, error in done if error is None]))
    rows = [("true (intended schedule)", len(intended), truth),
            ("Sender (reported, HDR)", op.count, reported)]
    for run in locust:
        rows.append((f"Locust, {run['users']} users × {run['per_user_rps']:g}/s", run["requests"],
                     {f"p{p:g}": run["percentiles_s"][LOCUST_COLUMNS[p]] for p in PERCENTILES}))
    print()
    print(f"{'latency (s)':34s} {'requests':>8s} " + " ".join(f"{f'p{p:g}':>7s}" for p in PERCENTILES))
    for name, count, values in rows:
        print(f"{name:34s} {count:>8,d} " + " ".join(f"{_fmt(values[f'p{p:g}']):>7s}" for p in PERCENTILES))
    print(f"service time {service * 1e3:.2f} ms; Sender errors {op.errors}; send lag p99 "
          f"{lag.percentile(99) * 1e3:.2f} ms")
    write("drive_honesty", {
        "server": f"raw ASGI under uvicorn, GET / -> 200; stalls {STALL_S:g} s every {EVERY_S:g} s",
        "cores": {"server": server_core, "generator": generator_core},
        "rate_per_s": args.rate, "seconds": args.seconds, "service_time_ms": round(service * 1e3, 3),
        "true": {"requests": len(intended), "percentiles_s": truth},
        "sender": {"requests": op.count, "errors": op.errors, "percentiles_s": reported,
                   "per_request_percentiles_s": observed,
                   "lag_p99_ms": round(lag.percentile(99) * 1e3, 3)},
        "locust": locust,
    })


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


if __name__ == "__main__":
    main()
