"""`citytwin ioc …`: serve the reference IOC, manage its API keys, migrate its database.

Only argparse at import time: the server's dependencies load when a verb runs, so `citytwin --help`
stays quick. Bad input raises UserInputError (one line, exit 2), as everywhere in the CLI.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from urllib.parse import urlsplit

from citytwin.twin.errors import UserInputError

DEFAULT_DB = "sqlite:///ioc.sqlite3"
ROLES = ("citizen", "device", "operator", "admin")

EPILOG = """\
examples:
  citytwin ioc serve                                      # SQLite file ioc.sqlite3 here, port 8311
  citytwin ioc serve --db postgresql://postgres@127.0.0.1/test --mqtt mqtt://127.0.0.1:1883
  citytwin ioc keys add --role citizen --label "citizen app"
  citytwin ioc keys add --role device --device pm25-001 --entity-type AirQualityObserved
  citytwin ioc keys list
  citytwin ioc migrate --db postgresql://postgres@127.0.0.1/test
"""


def add_ioc_parser(verbs: argparse._SubParsersAction) -> None:
    """Add the `ioc` verb and its sub-verbs to the main parser's verbs."""
    ioc = verbs.add_parser(
        "ioc", help="run the reference IOC server, manage its keys", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The reference Intelligent Operations Center: Open311 GeoReport v2, an NGSI-LD subset, "
                    "MQTT ingestion (FIWARE IoT Agent JSON), an operator API and a live dashboard.")
    ioc.set_defaults(handler=lambda args: _help(ioc))
    sub = ioc.add_subparsers(dest="ioc_verb", metavar="VERB")

    serve = sub.add_parser("serve", help="run the server (Ctrl-C stops it)",
                           description="Run the IOC server on uvicorn. Open311 at /requests, NGSI-LD at "
                                       "/ngsi-ld/v1, operator API at /operator/v1, dashboard at /dashboard, "
                                       "OpenAPI at /docs.")
    _db_option(serve)
    serve.add_argument("--mqtt", default=None, metavar="URL",
                       help="MQTT broker to ingest device telemetry from and publish alerts to "
                            "(citytwin/alerts/{category}), e.g. mqtt://127.0.0.1:1883 (default: no MQTT)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8311, help="port to listen on (default: 8311)")
    serve.add_argument("--scenario", type=Path, default=None, metavar="FILE",
                       help="scenario whose road network the dashboard shows (default: the synthetic district)")
    serve.add_argument("--no-notify", action="store_true", help="do not send NGSI-LD notifications")
    serve.set_defaults(handler=_serve)

    keys = sub.add_parser("keys", help="API keys: add, list", description="Manage API keys.")
    keys.set_defaults(handler=lambda args: _help(keys))
    keys_sub = keys.add_subparsers(dest="keys_verb", metavar="VERB")
    add = keys_sub.add_parser("add", help="make a key and print it (once)",
                              description="Make an API key. The key is printed on stdout, once: only its "
                                          "SHA-256 digest is stored.")
    add.add_argument("--role", required=True, help=f"one of {', '.join(ROLES)}")
    add.add_argument("--label", default="", help="who the key is for (shown as the actor in request history)")
    add.add_argument("--device", default=None, metavar="ID", help="device id (required for a device key)")
    add.add_argument("--entity-type", default=None, metavar="TYPE",
                     help="a device's entity type, a Smart Data Models name (default: Device)")
    add.add_argument("--rate", type=float, default=None, metavar="N",
                     help="requests per second allowed (default: the role's)")
    _db_option(add)
    add.set_defaults(handler=_keys_add)
    listing = keys_sub.add_parser("list", help="list keys (digests only)", description="List API keys.")
    _db_option(listing)
    listing.set_defaults(handler=_keys_list)

    migrate = sub.add_parser("migrate", help="bring the database schema up to date",
                             description="Create or upgrade the IOC's tables (serve does this too).")
    _db_option(migrate)
    migrate.set_defaults(handler=_migrate)


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", default=DEFAULT_DB, metavar="URL",
                        help=f"sqlite:///PATH or postgresql://USER@HOST[:PORT]/DB (default: {DEFAULT_DB})")


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


# -- checks: every bad input is one clear line --------------------------------------------------------------
def check_db_url(url: str) -> str:
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme == "sqlite":
        path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
        if not path:
            raise UserInputError(f"--db: expected sqlite:///PATH (three slashes, then the file), got {url!r}")
        parent = Path(path.split("?", 1)[0]).expanduser().parent
        if not parent.is_dir():
            raise UserInputError(f"--db: directory {parent} does not exist")
        return url
    if scheme in ("postgresql", "postgres", "postgresql+psycopg"):
        if not urlsplit(url).hostname and "host=" not in url:
            raise UserInputError("--db: a PostgreSQL URL needs a host, e.g. postgresql://postgres@127.0.0.1/test")
        return url
    shown = f"a {scheme}:// URL" if scheme else repr(url)
    raise UserInputError(f"--db: expected sqlite:///PATH or postgresql://USER@HOST/DB, got {shown}")


def check_mqtt_url(url: str | None) -> str | None:
    if url is None:
        return None
    from citytwin.ioc.server.mqtt_ingest import parse_address

    try:
        parse_address(url)
    except ValueError as err:
        raise UserInputError(f"--mqtt: {err}") from None
    return url


def check_port_free(host: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise UserInputError(f"--port: expected 1 to 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UserInputError(f"--host: cannot resolve {host!r} ({err.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # uvicorn sets SO_REUSEADDR too: a port in TIME_WAIT is free for it, a listening one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise UserInputError(f"--port: cannot listen on {host}:{port} ({err.strerror}; "
                                 f"is another server running there?)") from None


def _role(text: str):
    from citytwin.ioc.core.model import Role

    if text not in ROLES:
        raise UserInputError(f"--role: expected one of {', '.join(ROLES)}, got {text!r}")
    return Role(text)


def _open_store(url: str):
    from citytwin.ioc.storage import open_store

    check_db_url(url)
    try:
        return open_store(url)
    except Exception as err:  # the driver's own words say best what is wrong (refused, no such database…)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(f"--db: cannot open the database: {reason}") from None


# -- verbs ----------------------------------------------------------------------------------------------------
def _network(scenario: Path | None) -> dict:
    from citytwin.twin.city import build_city
    from citytwin.twin.city.geojson import city_geojson
    from citytwin.twin.city.synthetic import SyntheticParams, generate

    if scenario is None:
        return city_geojson(generate(SyntheticParams()))
    from citytwin.twin.scenario import load_scenario

    return city_geojson(build_city(load_scenario(scenario).city))


def _serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from citytwin.ioc.server import Settings, create_app

    mqtt = check_mqtt_url(args.mqtt)
    check_port_free(args.host, args.port)
    _open_store(args.db).close()  # migrate, and fail here with one line rather than in the server's startup
    settings = Settings(db_url=args.db, mqtt_url=mqtt, network=_network(args.scenario), notify=not args.no_notify)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"IOC on http://{args.host}:{args.port} (db: {settings.db_kind()}, mqtt: {'on' if mqtt else 'off'}); "
          f"dashboard /dashboard, OpenAPI /docs", file=sys.stderr)
    # uvicorn's own access log would print query strings, api_key included: the app logs requests itself.
    uvicorn.run(create_app(settings), host=args.host, port=args.port, access_log=False)
    return 0


def _keys_add(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from citytwin.ioc.core import IOC
    from citytwin.ioc.core.model import Role

    role = _role(args.role)
    if role is Role.DEVICE and not args.device:
        raise UserInputError("--device: required for a device key (the device id its entities are named by)")
    if role is not Role.DEVICE and (args.device or args.entity_type):
        raise UserInputError("--device/--entity-type: only a device key has them")
    if args.rate is not None and not args.rate > 0:
        raise UserInputError(f"--rate: expected a positive number of requests per second, got {args.rate:g}")
    store = _open_store(args.db)
    try:
        plain, key = IOC(store).create_key(role, datetime.now(UTC), label=args.label, device_id=args.device,
                                           entity_type=args.entity_type, rate_per_s=args.rate)
    finally:
        store.close()
    print(f"{role.value} key {key.digest[:12]}… made; it is printed once, below", file=sys.stderr)
    print(plain)
    return 0


def _keys_list(args: argparse.Namespace) -> int:
    from citytwin.ioc.core import IOC

    store = _open_store(args.db)
    try:
        keys = IOC(store).keys()
    finally:
        store.close()
    print("digest\trole\tlabel\tdevice\tentity_type\trate_per_s\tcreated\trevoked")
    for key in keys:
        created = key.created_at.isoformat(timespec="seconds") if key.created_at else ""
        rate = "" if key.rate_per_s is None else f"{key.rate_per_s:g}"
        print(f"{key.digest[:12]}\t{key.role.value}\t{key.label}\t{key.device_id or ''}\t{key.entity_type or ''}"
              f"\t{rate}\t{created}\t{'yes' if key.revoked else 'no'}")
    return 0


def _migrate(args: argparse.Namespace) -> int:
    from citytwin.ioc.storage import migrate

    check_db_url(args.db)
    try:
        revision = migrate(args.db)
    except Exception as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserInputError(f"--db: cannot migrate the database: {reason}") from None
    print(f"schema at revision {revision}")
    return 0
