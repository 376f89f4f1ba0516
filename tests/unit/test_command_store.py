"""The command side's retry on concurrent appends, without a database."""

from __future__ import annotations

import asyncio

import pytest

from services.command.store import retry_on_conflict
from services.core.eventstore import ConcurrencyError
from services.http.errors import ApiError


def test_a_conflicting_write_is_redone_until_it_succeeds() -> None:
    calls = 0

    async def attempt() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConcurrencyError("session-x", calls)
        return "written"

    assert asyncio.run(retry_on_conflict(attempt)) == "written"
    assert calls == 3


def test_retries_are_bounded_and_end_in_a_409() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise ConcurrencyError("session-x", 1)

    with pytest.raises(ApiError) as refused:
        asyncio.run(retry_on_conflict(attempt, attempts=5))
    assert calls == 5
    assert (refused.value.status_code, refused.value.code) == (409, "concurrent_update")


def test_other_errors_are_not_retried() -> None:
    calls = 0

    async def attempt() -> None:
        nonlocal calls
        calls += 1
        raise ValueError("boom")

    with pytest.raises(ValueError):
        asyncio.run(retry_on_conflict(attempt))
    assert calls == 1
