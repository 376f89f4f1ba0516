"""The offline provider: a deterministic, network-free stand-in that streams like a model."""

from __future__ import annotations

import pytest

from services.core.settings import Settings
from workers.providers import ChatMessage, make_provider
from workers.providers.offline import OFFLINE_MODEL, OfflineProvider, compose_reply

HORROR: list[ChatMessage] = [{"role": "user", "content": "I want to write a horror story"}]


def test_the_same_conversation_gets_the_same_reply() -> None:
    provider = OfflineProvider(delay_seconds=0)
    assert list(provider.stream(HORROR)) == list(provider.stream(HORROR))


def test_a_different_conversation_gets_a_different_reply() -> None:
    other: list[ChatMessage] = [{"role": "user", "content": "Help me with a sci-fi novel"}]
    assert compose_reply(HORROR) != compose_reply(other)


def test_the_reply_streams_in_several_deltas_then_finishes_with_usage() -> None:
    chunks = list(OfflineProvider(delay_seconds=0).stream(HORROR))
    deltas = [c.text for c in chunks if c.text]
    assert len(deltas) > 5
    assert "".join(deltas) == compose_reply(HORROR)
    last = chunks[-1]
    assert last.finish_reason == "stop"
    assert last.prompt_tokens and last.completion_tokens


def test_the_reply_is_several_sentences_echoing_the_users_topic() -> None:
    reply = compose_reply(HORROR)
    assert "a horror story" in reply
    assert reply.count(".") + reply.count("?") >= 4


def test_it_says_it_is_a_deterministic_stand_in() -> None:
    provider = make_provider(Settings.from_env({}))
    assert provider.name == "offline"
    assert provider.model == OFFLINE_MODEL
    assert provider.extra_metadata["stand_in"] is True
    assert "deterministic" in provider.extra_metadata["note"]


def test_an_unknown_provider_name_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="LLM_PROVIDER"):
        make_provider(Settings.from_env({}, llm_provider="nope"))
