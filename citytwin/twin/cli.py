"""`citytwin <verb>`: the command line. Exit codes: 0 ok, 1 failure, 2 bad input."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import UserInputError

EPILOG = """\
verbs:
  validate   check scenario files against the schema (exit 0, or 2 with one line per problem)
  run        simulate a scenario and write ledger.parquet, kpis.json and report.html
  drive      drive a live IOC with the scenario's citizens, operators, crews and devices in wall-clock
             time and measure it (open model)
  ioc        run the reference IOC server (Open311, NGSI-LD, MQTT, dashboard), manage its keys

examples:
  citytwin validate scenarios/*.yaml
  citytwin run scenarios/quickstart.yaml --out results/quickstart
  citytwin run scenarios/danang_haichau.yaml --out results/danang --seed 7
  citytwin run scenarios/danang_pilot.yaml      # field reporting: citizens, 1022, crews, KPIs
  citytwin run scenarios/typhoon_flood.yaml     # devices: cameras, gauges, sensors, bus GPS, alerts
  citytwin run scenarios/camera_budget.yaml     # four camera placements compared on the same day
  citytwin ioc serve --db sqlite:///ioc.sqlite3 --port 8311 --mqtt mqtt://127.0.0.1:1883
  citytwin drive scenarios/typhoon_flood.yaml --target http://127.0.0.1:8311 --mqtt mqtt://127.0.0.1:1883 \
      --speedup 60 --from 08:30 --duration 2m --threshold "mqtt.publish.p99<300ms" --threshold "errors<1%"
  citytwin drive scenarios/danang_pilot.yaml --speedup 120 --shape ramp:5m:0.5-10 \
      --threshold "open311.post.p99<300ms" --threshold "e2e.report.p95<60s"
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="citytwin",
        description="An agent-based digital twin of a Vietnamese city and a testbed for its IOC.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    validate = verbs.add_parser(
        "validate", help="check scenario files", description="Check scenario files against the schema. "
        "Prints one line per problem (file: field.path: what was expected) and exits 2 if there is any.")
    validate.add_argument("files", nargs="+", type=Path, metavar="FILE", help="scenario YAML files")
    validate.set_defaults(handler=_validate)

    run = verbs.add_parser(
        "run", help="simulate a scenario", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Simulate a scenario in virtual time and write, into --out:\n"
        "  ledger.parquet  every event with its virtual time (the record KPIs are computed from)\n"
        "  kpis.json       each KPI with its value and unit, and the series behind the plots\n"
        "  report.html     a self-contained report: congestion map at the peak, time series, incidents,\n"
        "                  and with field_reporting: reports, deadlines, backlog, satisfaction;\n"
        "                  with devices: camera and sensor coverage, real-time information, data\n"
        "                  completeness under faults, incident detection, flood-warning lead time\n"
        "The same scenario and seed give the same ledger, byte for byte.")
    run.add_argument("scenario", type=Path, help="scenario YAML file")
    run.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="results directory (default: results/<scenario name>)")
    run.add_argument("--seed", type=int, default=None, metavar="N", help="override the scenario's seed")
    run.add_argument("--no-report", action="store_true", help="skip report.html (ledger and KPIs only)")
    run.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    run.set_defaults(handler=_run)

    drive = verbs.add_parser(
        "drive", help="drive a live IOC with the scenario's people and devices",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the scenario in wall-clock time (one virtual second every 1/SPEEDUP s) and send every\n"
        "interaction to the IOC at --target at its intended time, whatever the IOC does: an open model,\n"
        "latency measured from the intended send time (no coordinated omission), in HDR histograms.\n"
        "  devices    NGSI-LD batch upserts over HTTP, or IoT Agent JSON over MQTT with --mqtt\n"
        "  citizens   Open311: POST /requests, then GET /tokens and /requests as they check on it\n"
        "  operators  the operator API: refresh the queue of new requests, open, acknowledge, assign, mark\n"
        "             duplicates (a request someone else filed at the IOC is routed and fixed too)\n"
        "  crews      the operator API: assign, start, resolve, close (driving at the twin's speeds)\n"
        "Closed loop: the ids the IOC answers are what reporters poll and operators and crews act on.\n"
        "Keys, device keys and an NGSI-LD subscription are provisioned with the admin key; a listener takes\n"
        "the IOC's notifications and its alerts on MQTT (citytwin/alerts/#) for end-to-end times.\n\n"
        "load shapes (--shape, multipliers of --speedup over the drive's wall time; the scenario's own day,\n"
        "its peaks and a typhoon's surge, rides on top):\n"
        "  ramp:2m:0.1-4   from 0.1x to 4x over 2 minutes, then hold   step:1m:1,2,4   1x, 2x, 4x a minute each\n"
        "  spike:1m:30s:10 10x for 30 s after a minute                  soak:2h         1x for two hours\n"
        "  stages:30s:1,1m:5,30s:0   k6-style stages from 1x\n\n"
        "Writes into --out: summary.json,\n"
        "Locust-compatible stats.csv, stats_history.csv and failures.csv, report.html, ledger.parquet.\n"
        "Exit codes: 0 all thresholds held, 99 a threshold failed, 2 bad input, 1 the IOC could not be\n"
        "reached, 130 interrupted (results are still written).\n\n"
        "thresholds (k6 style, repeatable): [key.]stat OP value[unit]\n"
        "  keys: mqtt.publish, ngsild.upsert, open311.post|token|get, operator.queue|get|acknowledge|assign|\n"
        "        start|resolve|close|duplicate, e2e.entity, e2e.alert, e2e.report (a prefix selects all under it)\n"
        "  stats: p50 p90 p95 p99 p99.9 max min avg (us, ms, s), errors (%), rate (/s), count\n"
        "  e.g.  --threshold 'mqtt.publish.p99<300ms' --threshold 'errors<1%' --threshold 'e2e.alert.p95<5s'")
    drive.add_argument("scenario", type=Path, help="scenario YAML file (with devices: or field_reporting:)")
    drive.add_argument("--target", default="http://127.0.0.1:8311", metavar="URL",
                       help="the IOC's base URL (default: http://127.0.0.1:8311, the reference IOC on loopback)")
    drive.add_argument("--mqtt", default=None, metavar="URL",
                       help="send telemetry over this MQTT broker (mqtt://host:port) instead of NGSI-LD HTTP")
    drive.add_argument("--speedup", type=float, default=60.0, metavar="X",
                       help="virtual seconds per wall second (default 60: a day in 24 minutes)")
    drive.add_argument("--duration", default=None, metavar="D",
                       help="wall time to run, e.g. 2m or 90s (default: the shape's length, or the rest of the "
                            "scenario at this pace)")
    drive.add_argument("--shape", default="constant", metavar="SHAPE",
                       help="load shape: the speedup's multiplier over time (see above; default constant)")
    drive.add_argument("--from", dest="start_at", default=None, metavar="HH:MM",
                       help="start sending at this time of the scenario's day (or an offset such as 6h); the world "
                            "before it is simulated as fast as it goes and nothing of it is sent")
    drive.add_argument("--out", type=Path, default=None, metavar="DIR",
                       help="results directory (default: results/<scenario name>-drive)")
    drive.add_argument("--threshold", action="append", default=[], metavar="EXPR",
                       help="a k6-style threshold; repeat for more (see above)")
    drive.add_argument("--admin-key", default=None, metavar="KEY",
                       help="the IOC's admin API key (default: $CITYTWIN_ADMIN_KEY)")
    drive.add_argument("--qos", type=int, choices=(0, 1), default=1, help="MQTT QoS (default 1)")
    drive.add_argument("--workers", type=int, default=1, metavar="N",
                       help="shard the devices and the reports over N Ray actors, each running the same seeded "
                            "world and sending its share; histograms merge exactly (default 1: this process)")
    drive.add_argument("--ray-address", default=None, metavar="ADDR",
                       help="a Ray cluster to run the workers on (default: a local Ray on this machine)")
    drive.add_argument("--quiet", action="store_true", help="no live table")
    drive.set_defaults(handler=_drive)

    from citytwin.ioc.cli import add_ioc_parser  # argparse only: the server loads when `ioc` runs

    add_ioc_parser(verbs)
    return parser


def _validate(args: argparse.Namespace) -> int:
    from .scenario import load_scenario

    problems: list[str] = []
    for path in args.files:
        try:
            load_scenario(path)
            print(f"{path}: ok")
        except UserInputError as err:
            problems += err.problems
    if problems:
        raise UserInputError(problems)
    return 0


def _run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from .run import run_scenario
    from .scenario import load_scenario

    scenario = load_scenario(args.scenario)
    out = args.out or Path("results") / scenario.name
    console = Console(stderr=True)
    progress = None if args.quiet else Progress(
        TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}% of virtual time"),
        TimeElapsedColumn(), console=console)
    result = run_scenario(scenario, out, seed=args.seed, progress=progress, write_report=not args.no_report,
                          source=str(args.scenario))
    if not args.quiet:
        _print_summary(result.kpis, Console())
    print(f"kpis:   {result.out_dir / 'kpis.json'}")
    print(f"ledger: {result.ledger_path}")
    if not args.no_report:
        print(f"report: {result.report_path}")
    return 0


def _drive(args: argparse.Namespace) -> int:
    from rich.console import Console

    from .drive.driver import DriveOptions, admin_key_from, drive
    from .scenario import load_scenario
    from .scenario.units import parse_duration

    scenario = load_scenario(args.scenario)
    duration = None
    if args.duration is not None:
        try:
            duration = parse_duration(args.duration)
        except ValueError as err:
            raise UserInputError(f"--duration: {err}") from None
    options = DriveOptions(target=args.target, mqtt=args.mqtt, speedup=args.speedup, duration_s=duration,
                           out=args.out or Path("results") / f"{scenario.name}-drive", thresholds=args.threshold,
                           admin_key=admin_key_from(args.admin_key), qos=args.qos, workers=args.workers,
                           ray_address=args.ray_address, quiet=args.quiet, shape=args.shape,
                           start_at=args.start_at)
    try:
        # Into a log the table keeps its columns whole (a terminal's own width is used on a terminal).
        console = Console() if sys.stdout.isatty() else Console(width=150)
        result = drive(scenario, options, source=str(args.scenario), console=console)
    except ConnectionError as err:
        print(f"citytwin drive: {err}", file=sys.stderr)
        return 1
    for r in result.results:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.expr}  (actual: {r.actual if r.actual is not None else 'no data'})")
    print(f"summary: {result.out_dir / 'summary.json'}")
    print(f"report:  {result.out_dir / 'report.html'}")
    return result.exit_code


def _print_summary(kpis: dict, console) -> None:
    from rich.table import Table

    city = kpis["city"]
    sections = [(f"{kpis['scenario']} — {city['name']} ({city['links']} links, {city['road_km']} km), "
                 f"seed {kpis['seed']}", kpis["kpis"])]
    if kpis.get("field_reporting"):
        sections.append(("Field reporting (phản ánh hiện trường)", kpis["field_reporting"]["kpis"]))
    if kpis.get("devices"):
        sections.append(("Devices (cameras, detectors, sensors, bus GPS)", kpis["devices"]["kpis"]))
    for title, items in sections:
        table = Table(title=title)
        table.add_column("KPI")
        table.add_column("value", justify="right")
        table.add_column("unit")
        for item in items.values():
            value = item["value"]
            text = "—" if value is None else f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"
            table.add_row(item["label"], text, item["unit"])
        console.print(table)
    fleets = (kpis.get("devices") or {}).get("tables", {}).get("camera_fleets") or []
    if len(fleets) > 1:  # placements compared in one run (scenarios/camera_budget.yaml)
        table = Table(title="Camera fleets compared")
        columns = (("fleet", "fleet"), ("cameras", "cameras"), ("road_coverage", "road in view %"),
                   ("incident_coverage", "incidents in view %"), ("incidents_detected", "recognised %"),
                   ("detection_p50_min", "detection p50 min"))
        for _, title in columns:
            table.add_column(title, justify="left" if title == "fleet" else "right")
        for row in fleets:
            table.add_row(*("—" if row.get(key) is None else str(row[key]) for key, _ in columns))
        console.print(table)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args)
    except UserInputError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
