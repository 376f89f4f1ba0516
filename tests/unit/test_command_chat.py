"""Pure rules of posting a message and naming a session."""

from __future__ import annotations

import pytest

from services.command.chat import clean_text, title_from
from services.command.sessions import clean_title
from services.http.errors import ApiError


def test_text_is_trimmed_and_bounded() -> None:
    assert clean_text("  hi \n", 10) == "hi"
    assert clean_text("x" * 10, 10) == "x" * 10
    with pytest.raises(ApiError) as too_long:
        clean_text("x" * 11, 10)
    assert (too_long.value.status_code, too_long.value.code) == (413, "message_too_long")
    with pytest.raises(ApiError) as empty:
        clean_text(" \n ", 10)
    assert (empty.value.status_code, empty.value.code) == (400, "empty_text")
    with pytest.raises(ApiError) as sent_too_long:  # the length as sent, as maxLength counts
        clean_text(" " + "x" * 10, 10)
    assert sent_too_long.value.code == "message_too_long"


def test_a_title_is_the_first_line_cut_to_60_characters() -> None:
    assert title_from("A horror story\nwith ghosts") == "A horror story"
    assert title_from("y" * 100) == "y" * 60


def test_a_new_title_is_at_most_200_characters_not_blank_stored_trimmed() -> None:
    assert clean_title("  Ghosts ") == "Ghosts"
    assert clean_title(" " + "t" * 198 + " ") == "t" * 198
    for bad in ("", "  ", "t" * 201, " " + "t" * 200, "a\x00b"):
        with pytest.raises(ApiError) as refused:
            clean_title(bad)
        assert refused.value.status_code == 400
