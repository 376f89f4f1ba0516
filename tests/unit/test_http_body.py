"""Why a body was refused is judged from its bytes and its shape, never from what the JSON
library raised or said: the same answer with msgspec 0.19's UnicodeDecodeError, 0.23's
DecodeError, or whatever a later version raises."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from services.http.body import explain_undecodable, explain_value


@pytest.mark.parametrize("error", [
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),  # msgspec 0.19
    msgspec.DecodeError("Invalid UTF-8 encoded string"),  # msgspec 0.23
    RecursionError("maximum recursion depth exceeded"),
    ValueError("something a later version says"),
])
def test_an_undecodable_body_is_explained_from_its_bytes(error: Exception) -> None:
    assert explain_undecodable(b'{"a": "\xff"}', error) == "the body is not valid UTF-8"
    assert explain_undecodable(b"[" * 600 + b"]" * 600, error) == \
        "the JSON body is nested too deeply"
    if not isinstance(error, RecursionError):
        assert explain_undecodable(b'{"a": ', error) == "the body is not valid JSON"
        assert explain_undecodable(b'{"a": "[[[[[["', error) == "the body is not valid JSON"


class Shape(msgspec.Struct, forbid_unknown_fields=True):
    b: int
    c: uuid.UUID | None = None


class Lenient(msgspec.Struct):
    b: int


def test_a_body_of_the_wrong_shape_is_explained_field_by_field() -> None:
    assert explain_value({"a": 1}, Shape) == "a: unknown field; b: is required"
    assert explain_value({"b": "x", "c": 3}, Shape) == \
        "b: must be an integer; c: must be a UUID or null"
    assert explain_value([1], Shape) == "the body must be a JSON object"
    assert explain_value({"a": 1}, Lenient) == "b: is required"  # unknown fields allowed
