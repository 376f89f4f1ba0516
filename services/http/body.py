"""Why a request body was refused, in our words.

Litestar decodes a JSON body with msgspec and passes on msgspec's messages, whose wording
and even exception types change between versions (0.19 raised UnicodeDecodeError for bad
UTF-8, 0.23 raises DecodeError("Invalid UTF-8 encoded string")). Our answers must not move
with them, so when decoding or validation fails we look at the body ourselves and say what
is wrong with it: the library's exception only tells us *that* it failed.
"""

from __future__ import annotations

import types
import typing
import uuid
from typing import Any

import msgspec
from litestar import Request

# scope["state"] key of the decoded JSON body, for explaining a validation failure later.
JSON_BODY_KEY = "json_body"
# Deeper than this is "nested too deeply" (msgspec overflows Python's stack near 1000).
MAX_DEPTH = 500

NOT_UTF8 = "the body is not valid UTF-8"
NOT_JSON = "the body is not valid JSON"
TOO_DEEP = "the JSON body is nested too deeply"
NO_BODY = "a JSON object is required"
NOT_AN_OBJECT = "the body must be a JSON object"


class BodyError(Exception):
    """The body could not be decoded at all; `detail` says why."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class ApiRequest(Request[Any, Any, Any]):
    """Litestar's Request whose JSON decoding failures are BodyErrors with our detail, and
    which keeps the decoded body for explaining a validation failure."""

    async def json(self) -> Any:
        try:
            value = await super().json()
        except Exception as exc:  # any decoder, any version: we judge the bytes ourselves
            raise BodyError(explain_undecodable(await self.body(), exc)) from exc
        self.scope.setdefault("state", {})[JSON_BODY_KEY] = value  # type: ignore[typeddict-item]
        return value


def explain_undecodable(body: bytes, exc: BaseException) -> str:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return NOT_UTF8
    if isinstance(exc, RecursionError) or _depth(body) > MAX_DEPTH:
        return TOO_DEEP
    return NOT_JSON


def _depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects, strings skipped (only run on bad bodies)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def explain_invalid_body(request: Request[Any, Any, Any]) -> str:
    """What is wrong with a decoded body the route's Struct refused (a field missing, unknown
    or of the wrong type), found by checking it against the Struct's fields ourselves."""
    state = request.scope.get("state", {})
    if JSON_BODY_KEY not in state:
        return NO_BODY
    target = _body_type(request)
    if target is None:
        return "the body is not valid"
    return explain_value(state[JSON_BODY_KEY], target)


def explain_value(value: Any, target: type[msgspec.Struct]) -> str:
    if not isinstance(value, dict):
        return NOT_AN_OBJECT
    fields = {field.encode_name: field for field in msgspec.structs.fields(target)}
    problems = []
    if target.__struct_config__.forbid_unknown_fields:
        problems += [f"{name}: unknown field" for name in value if name not in fields]
    for name, field in fields.items():
        if name not in value:
            if field.required:
                problems.append(f"{name}: is required")
        elif (problem := _field_problem(value[name], field.type)) is not None:
            problems.append(f"{name}: {problem}")
    return "; ".join(problems) or "the body is not valid"


def _field_problem(value: Any, annotation: Any) -> str | None:
    try:
        msgspec.convert(value, annotation, strict=False)
        return None
    except msgspec.ValidationError:
        pass
    base, meta = _unwrap(annotation)
    try:
        msgspec.convert(value, base, strict=False)
    except msgspec.ValidationError:
        return f"must be {describe(annotation)}"
    if meta is not None and meta.max_length is not None and len(value) > meta.max_length:
        return f"is longer than {meta.max_length} characters"
    return "is not in the expected format"


def _unwrap(annotation: Any) -> tuple[Any, msgspec.Meta | None]:
    """The annotation without its constraints (in an Optional too), and the constraints."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *extras = typing.get_args(annotation)
        return base, next((e for e in extras if isinstance(e, msgspec.Meta)), None)
    if _is_union(annotation):
        parts = [_unwrap(arg) for arg in typing.get_args(annotation)]
        meta = next((m for _, m in parts if m is not None), None)
        bases = tuple(base for base, _ in parts)
        return typing.Union[bases], meta  # noqa: UP007 (built from a tuple)
    return annotation, None


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


_NAMES: dict[Any, str] = {str: "a string", int: "an integer", float: "a number",
                          bool: "true or false", uuid.UUID: "a UUID", type(None): "null"}


def describe(annotation: Any) -> str:
    """A type in words ("a UUID or null")."""
    if typing.get_origin(annotation) is typing.Annotated:
        return describe(typing.get_args(annotation)[0])
    if _is_union(annotation):
        return " or ".join(describe(arg) for arg in typing.get_args(annotation))
    return _NAMES.get(annotation, "a valid value")


def _body_type(request: Request[Any, Any, Any]) -> type[msgspec.Struct] | None:
    handler = request.scope.get("route_handler")
    parameter = handler.parsed_fn_signature.parameters.get("data") if handler else None
    annotation = getattr(parameter, "annotation", None)
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    return None
