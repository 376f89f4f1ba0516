"""`python -m bench [NAME ...] [OPTIONS]`: runs the named benchmarks (all when none is named),
passing OPTIONS to each. Each benchmark module has `main(argv)` returning an exit status
(None counts as 0). `python -m bench append --help` shows one benchmark's options."""

from __future__ import annotations

import importlib
import sys

# name -> module, in the order `python -m bench` runs them. Imported only when run, so one
# benchmark's missing extra never stops another.
BENCHES = {
    "append": "bench.append",
    "read_path": "bench.read_path",
    "compare_eventsourcing": "bench.compare_eventsourcing",
    "compare_langchain": "bench.compare_langchain",
    "http": "bench.http",
    "e2e": "bench.e2e",
    "replay": "bench.replay",
    "brokers": "bench.brokers",
}


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help") and len(args) == 1:
        print(__doc__)
        print("benchmarks:", ", ".join(BENCHES))
        return 0
    names: list[str] = []
    while args and not args[0].startswith("-"):
        name = args.pop(0)
        if name not in BENCHES:
            print(f"unknown benchmark {name!r}; known: {', '.join(BENCHES)}", file=sys.stderr)
            return 2
        names.append(name)
    status = 0
    for name in names or list(BENCHES):
        status |= int(importlib.import_module(BENCHES[name]).main(args) or 0)
    return status


if __name__ == "__main__":
    sys.exit(main())
