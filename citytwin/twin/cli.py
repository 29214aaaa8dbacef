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
  ioc        run the reference IOC server (Open311, NGSI-LD, MQTT, dashboard), manage its keys

examples:
  citytwin validate scenarios/*.yaml
  citytwin run scenarios/quickstart.yaml --out results/quickstart
  citytwin run scenarios/danang_haichau.yaml --out results/danang --seed 7
  citytwin run scenarios/danang_pilot.yaml      # field reporting: citizens, 1022, crews, KPIs
  citytwin ioc serve --db sqlite:///ioc.sqlite3 --port 8311
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
        "                  and with field_reporting: reports, deadlines, backlog, satisfaction\n"
        "The same scenario and seed give the same ledger, byte for byte.")
    run.add_argument("scenario", type=Path, help="scenario YAML file")
    run.add_argument("--out", type=Path, default=None, metavar="DIR",
                     help="results directory (default: results/<scenario name>)")
    run.add_argument("--seed", type=int, default=None, metavar="N", help="override the scenario's seed")
    run.add_argument("--no-report", action="store_true", help="skip report.html (ledger and KPIs only)")
    run.add_argument("--quiet", action="store_true", help="no progress bar and no summary table")
    run.set_defaults(handler=_run)

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
    result = run_scenario(scenario, out, seed=args.seed, progress=progress, write_report=not args.no_report)
    if not args.quiet:
        _print_summary(result.kpis, Console())
    print(f"kpis:   {result.out_dir / 'kpis.json'}")
    print(f"ledger: {result.ledger_path}")
    if not args.no_report:
        print(f"report: {result.report_path}")
    return 0


def _print_summary(kpis: dict, console) -> None:
    from rich.table import Table

    city = kpis["city"]
    sections = [(f"{kpis['scenario']} — {city['name']} ({city['links']} links, {city['road_km']} km), "
                 f"seed {kpis['seed']}", kpis["kpis"])]
    if kpis.get("field_reporting"):
        sections.append(("Field reporting (phản ánh hiện trường)", kpis["field_reporting"]["kpis"]))
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
