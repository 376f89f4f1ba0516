"""What Litestar does not derive from our request Structs, added to a service's generated
OpenAPI components so the document says exactly what the handlers accept: a closed object
where the Struct forbids unknown fields, and the string rules a handler checks itself (so
that it answers with its own error code, e.g. `empty_text`, not the decoder's).

A refinement maps a component name to attributes of its litestar `Schema`, and
`properties` to the same per property: {"PostChat": {"additional_properties": False,
"properties": {"text": {"min_length": 1}}}}.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from litestar import Litestar
from litestar.openapi.spec import Schema

# Text a handler stores: not blank once trimmed (Python's whitespace, as str.strip() and the
# `re` module agree), and no NUL, which PostgreSQL text cannot hold.
STORABLE_TEXT_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"

Refinements = Mapping[str, Mapping[str, Any]]


def refine_components(app: Litestar, refinements: Refinements) -> None:
    """Applies refinements to the app's (cached) document; call before it is served."""
    schemas = app.openapi_schema.components.schemas or {}
    for name, changes in refinements.items():
        schema = schemas[name]
        assert isinstance(schema, Schema), name
        for attribute, value in changes.items():
            if attribute == "properties":
                for prop, prop_changes in value.items():
                    target = (schema.properties or {})[prop]
                    assert isinstance(target, Schema), (name, prop)
                    for key, setting in prop_changes.items():
                        setattr(target, key, setting)
            else:
                setattr(schema, attribute, value)
