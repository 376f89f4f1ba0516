"""Pure rules of posting a message and naming a session."""

from __future__ import annotations

import pytest

from services.command.chat import clean_text, title_from
from services.command.errors import BadRequest, TooLarge
from services.command.sessions import clean_title


def test_text_is_trimmed_and_bounded() -> None:
    assert clean_text("  hi \n", 10) == "hi"
    assert clean_text("x" * 10, 10) == "x" * 10
    with pytest.raises(TooLarge):
        clean_text("x" * 11, 10)
    with pytest.raises(BadRequest):
        clean_text(" \n ", 10)


def test_a_title_is_the_first_line_cut_to_60_characters() -> None:
    assert title_from("A horror story\nwith ghosts") == "A horror story"
    assert title_from("y" * 100) == "y" * 60


def test_a_new_title_is_1_to_200_characters_after_trimming() -> None:
    assert clean_title("  Ghosts ") == "Ghosts"
    assert clean_title(" " + "t" * 200 + " ") == "t" * 200
    for bad in ("", "  ", "t" * 201, "a\x00b"):
        with pytest.raises(BadRequest):
            clean_title(bad)
