"""chatctl: the operator's tool."""

from __future__ import annotations

import argparse
import sys

import msgspec

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


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from workers.replay import PROJECTIONS, ReplayBusy, replay

    names = list(PROJECTIONS) if args.projection == "all" else [args.projection]
    try:
        done = replay(settings.database_url, names, batch_size=settings.replay_batch_size)
    except ReplayBusy as exc:
        print(f"chatctl replay: {exc}", file=sys.stderr)
        return 1
    for name, count in done.items():
        print(f"{name}: rebuilt from {count} events and swapped in")
    return 0


def _import_legacy(settings: Settings, _args: argparse.Namespace) -> int:
    import redis

    from services.core.legacy_import import import_legacy
    from services.core.wakeup import wake_followers_sync

    print(import_legacy(settings.database_url))
    with redis.Redis.from_url(settings.redis_url, socket_timeout=2) as client:
        wake_followers_sync(client, settings)  # the projector applies the import now
    return 0


def _events_tail(settings: Settings, args: argparse.Namespace) -> int:
    import psycopg

    from services.core.redisconn import sync_redis
    from workers.publisher import start_id, stream_key, tail

    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        start = start_id(conn, args.from_position)
    client = sync_redis(settings)
    try:
        tail(client, stream_key(settings), start, group=args.group, consumer=args.consumer,
             follow=args.follow, limit=args.limit)
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0


def _bench(bench_args: list[str]) -> int:
    from bench.__main__ import main as run_benchmarks  # the checkout's bench/, as `make bench`

    return run_benchmarks(bench_args)


def _add_operations(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from workers.replay import PROJECTIONS

    replay = commands.add_parser(
        "replay", help="rebuild projections from the event store aside, then swap them in")
    replay.add_argument("projection", nargs="?", default="all",
                        choices=["all", *PROJECTIONS])
    replay.set_defaults(run=_replay)
    commands.add_parser(
        "import-legacy", help="turn legacy dossier/turns rows into events (idempotent)"
    ).set_defaults(run=_import_legacy)
    events = commands.add_parser("events", help="the analytics event stream")
    events_commands = events.add_subparsers(dest="events_command", required=True)
    tail = events_commands.add_parser(
        "tail", help="print the stream, one line per event (as a consumer group with --group)")
    tail.add_argument("--from", dest="from_position", type=int, default=None,
                      metavar="POSITION", help="start at this event position")
    tail.add_argument("--group", default=None, help="read as this consumer group (XACKs)")
    tail.add_argument("--consumer", default="chatctl", help="consumer name within the group")
    tail.add_argument("-f", "--follow", action="store_true", help="keep waiting for more")
    tail.add_argument("-n", "--limit", type=int, default=None, help="stop after N events")
    tail.set_defaults(run=_events_tail)
    # Names and options go to `python -m bench` untouched (`chatctl bench --help` lists them).
    commands.add_parser(
        "bench", add_help=False, usage="chatctl bench [NAME ...] [OPTIONS]",
        help="run the benchmarks, as `make bench` (needs the bench extra)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="chatctl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply pending database migrations").set_defaults(
        run=_migrate)
    worker = commands.add_parser("worker", help="run the Dramatiq workers and the sweep")
    # assistant threads: a reply mostly waits on the provider, so threads are cheap
    worker.add_argument("--threads", type=int, default=16,
                        help="threads writing assistant replies (default 16)")
    worker.set_defaults(run=_worker)
    serve = commands.add_parser("serve", help="run a service (or all of them)")
    serve.add_argument("what", choices=["command", "query", "gateway", "all"])
    serve.set_defaults(run=_serve)
    _add_operations(commands)

    args, extra = parser.parse_known_args(argv)
    if args.command == "bench":  # the benchmarks read their own settings and set up logging
        return _bench(extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        settings = Settings.from_env()
    except msgspec.ValidationError as exc:  # e.g. PORT=abc: say which, no traceback
        print(f"chatctl: invalid setting: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_level, settings.log_json)
    return int(args.run(settings, args))


if __name__ == "__main__":
    sys.exit(main())
