"""chatctl: the operator's tool."""

from __future__ import annotations

import argparse
import sys

from services.core.logging import configure_logging
from services.core.settings import Settings


def _migrate(settings: Settings, _args: argparse.Namespace) -> int:
    from services.core.migrate import migrate

    applied = migrate(settings.database_url, echo=print)
    print(f"{len(applied)} migration(s) applied" if applied else "database is up to date")
    return 0


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers.main import run_worker

    run_worker(settings, threads=args.threads)
    return 0


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from services.runner import serve

    return serve(settings, args.what)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatctl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply pending database migrations").set_defaults(
        run=_migrate)
    worker = commands.add_parser("worker", help="run the Dramatiq workers and the sweep")
    worker.add_argument("--threads", type=int, default=4)
    worker.set_defaults(run=_worker)
    serve = commands.add_parser("serve", help="run a service (or all of them)")
    serve.add_argument("what", choices=["command", "query", "gateway", "all"])
    serve.set_defaults(run=_serve)

    args = parser.parse_args(argv)
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    return int(args.run(settings, args))


if __name__ == "__main__":
    sys.exit(main())
