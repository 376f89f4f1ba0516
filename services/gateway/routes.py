"""Which methods each public path has: a known path asked with a method it lacks is a 405
with `Allow` (RFC 9110 §15.5.6), decided here rather than by whichever service the method
would be sent to (the query service knows nothing of the command side's paths).

The table is read from the two services' own OpenAPI documents, the same ones the gateway
merges for clients, so the document and the routing cannot disagree.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

HTTP_METHODS = ("get", "head", "post", "put", "patch", "delete", "options", "trace")
_PARAMETER = re.compile(r"\\\{[^/]+?\\\}")  # an escaped `{name}` segment


class RouteTable:
    def __init__(self, paths: Iterable[tuple[str, Iterable[str]]]) -> None:
        """paths: (OpenAPI path template, its methods); templates met twice merge."""
        methods: dict[str, set[str]] = {}
        for template, verbs in paths:
            methods.setdefault(template, set()).update(v.upper() for v in verbs)
        self._methods = methods
        self._routes = [
            (re.compile(_PARAMETER.sub("[^/]+", re.escape(template)) + r"\Z"),
             frozenset(verbs))
            for template, verbs in methods.items()
        ]

    @classmethod
    def from_documents(cls, documents: Iterable[Mapping[str, Any]]) -> RouteTable:
        return cls(
            (template, [m for m in item if m in HTTP_METHODS])
            for document in documents
            for template, item in document.get("paths", {}).items()
        )

    def paths(self) -> list[tuple[str, frozenset[str]]]:
        return [(template, frozenset(verbs)) for template, verbs in self._methods.items()]

    def allowed(self, path: str) -> frozenset[str] | None:
        """The methods `path` has, or None for a path no route knows."""
        found: set[str] = set()
        known = False
        for pattern, verbs in self._routes:
            if pattern.match(path):
                known = True
                found |= verbs
        return frozenset(found) if known else None


def service_routes(settings: Any) -> RouteTable:
    """Both services' routes, from their apps (built, not started: nothing connects)."""
    from services.command.app import create_app as command_app
    from services.query.app import create_app as query_app

    return RouteTable.from_documents(
        app(settings).openapi_schema.to_schema() for app in (command_app, query_app)
    )


def allow_header(methods: frozenset[str]) -> str:
    return ", ".join(sorted(methods))
