"""One OpenAPI document for the one origin: the command and query services' documents merged.

Paths never collide by method (the gateway routes reads to one service and writes to the
other), so path items merge operation by operation. Components may share a name: identical
ones are kept once; a name that means different things in the two services is renamed with
the service's name in front, and that service's `$ref`s are rewritten to match.
"""

from __future__ import annotations

import copy
from typing import Any

from services.http.layer import api_description

REF_PREFIX = "#/components/"
# Each service has its own health endpoints; behind the gateway these paths are the
# gateway's own (readiness of the whole system), documented below instead.
GATEWAY_PATHS: dict[str, Any] = {
    "/healthz": {"get": {
        "operationId": "healthz", "tags": ["health"], "summary": "The gateway is alive.",
        "responses": {"200": {"description": "Alive."}},
    }},
    "/readyz": {"get": {
        "operationId": "readyz", "tags": ["health"],
        "summary": "Ready: both services, the database and Redis answer.",
        "responses": {"200": {"description": "Ready."},
                      "503": {"description": "Something is not answering; `checks` says what."}},
    }},
}


class OpenAPIMergeError(ValueError):
    pass


def merge_openapi(documents: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """documents: service name → its OpenAPI document (not modified)."""
    merged: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Chat sessions API",
            "version": "1.0.0",
            "description": api_description(
                "The whole public API behind one origin: reads are answered by the query "
                "service, writes by the command service. Every endpoint but signup takes "
                "`X-User-ID`."),
        },
        "paths": copy.deepcopy(GATEWAY_PATHS),
        "components": {},
        "tags": [{"name": "health"}],
    }
    for service, original in documents.items():
        document = copy.deepcopy(original)
        merged["openapi"] = document.get("openapi", merged["openapi"])
        _merge_components(merged["components"], document, service)
        for path, item in document.get("paths", {}).items():
            if path in GATEWAY_PATHS:
                continue
            target = merged["paths"].setdefault(path, {})
            for key, value in item.items():
                if key in target and target[key] != value:
                    raise OpenAPIMergeError(f"{key.upper()} {path} is in more than one service")
                target[key] = value
        known = {tag["name"] for tag in merged["tags"]}
        merged["tags"] += [t for t in document.get("tags", []) if t.get("name") not in known]
    return merged


def _merge_components(target: dict[str, Any], document: dict[str, Any], service: str) -> None:
    renames: dict[str, str] = {}
    for kind, entries in document.get("components", {}).items():
        existing = target.setdefault(kind, {})
        for name, value in entries.items():
            if name in existing and existing[name] != value:
                renames[f"{REF_PREFIX}{kind}/{name}"] = (
                    f"{REF_PREFIX}{kind}/{service.capitalize()}{name}")
    if renames:
        _rewrite_refs(document, renames)
        for old, new in renames.items():
            kind, name = old[len(REF_PREFIX):].split("/", 1)
            entries = document["components"][kind]
            entries[new.rsplit("/", 1)[1]] = entries.pop(name)
    for kind, entries in document.get("components", {}).items():
        target.setdefault(kind, {}).update(entries)


def _rewrite_refs(node: Any, renames: dict[str, str]) -> None:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref in renames:
            node["$ref"] = renames[ref]
        for value in node.values():
            _rewrite_refs(value, renames)
    elif isinstance(node, list):
        for value in node:
            _rewrite_refs(value, renames)
