"""The offline provider: a deterministic stand-in for a language model, needing no network.

It lets the whole system (streaming, stop, storage) run and be tested anywhere. The reply
is assembled from a small built-in set of writing-assistant sentences, chosen by a hash of
the conversation (same conversation in, same reply out) and echoing the user's topic, then
streamed in word groups with a small delay so it behaves like a real stream.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from workers.providers.base import ChatMessage, Chunk

OFFLINE_MODEL = "offline-echo-1"
DEFAULT_DELAY_SECONDS = 0.03  # per delta; tests pass 0 (or more, to stop mid-reply)
WORDS_PER_DELTA = 3

_OPENERS = (
    "What a promising idea: {topic}.",
    "Let's build on {topic} together.",
    "I like where this is going with {topic}.",
    "Good starting point: {topic}.",
)
_BODY = (
    "Start with a character who wants something badly and cannot simply take it.",
    "Give the opening scene one concrete, unsettling detail the reader will remember.",
    "Decide early what your protagonist is most afraid of losing.",
    "A strong setting works like a character: let it push back.",
    "Keep the first paragraph short so the reader is pulled straight in.",
    "Let the stakes rise a little in every scene, never all at once.",
    "Dialogue reveals more when characters avoid saying what they mean.",
    "Try writing the scene from the point of view of the person with the most to hide.",
    "End each chapter on a question rather than an answer.",
    "Cut any sentence that explains what the reader can already feel.",
)
_CLOSERS = (
    "Would you like me to draft an opening paragraph?",
    "Shall we sketch the main character next?",
    "Tell me more about the world, and I will suggest a first scene.",
    "Which of these would you like to explore first?",
)

# "I want to write a horror story" → "a horror story": the phrases a topic usually follows.
_TOPIC_LEAD = re.compile(
    r"\b(?:write|writing|about|on|story of|draft|create)\s+(?P<topic>.+)$", re.IGNORECASE
)
_MAX_TOPIC_WORDS = 8


def _topic(messages: Sequence[ChatMessage]) -> str:
    text = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    text = " ".join(text.split()).strip()
    match = _TOPIC_LEAD.search(text)
    topic = match.group("topic") if match else text
    words = topic.split()[:_MAX_TOPIC_WORDS]
    return " ".join(words).rstrip(".!?,;:") or "your story"


def compose_reply(messages: Sequence[ChatMessage]) -> str:
    """The whole reply for a conversation: a pure function of its messages."""
    digest = hashlib.sha256(json.dumps(list(messages), sort_keys=True).encode()).digest()
    rng = random.Random(int.from_bytes(digest[:8], "big"))
    sentences = [rng.choice(_OPENERS).format(topic=_topic(messages))]
    sentences += rng.sample(_BODY, k=3)
    sentences.append(rng.choice(_CLOSERS))
    return " ".join(sentences)


def _word_groups(text: str, size: int) -> Iterator[str]:
    """Splits keeping the spaces, so the deltas concatenate back to exactly `text`."""
    words = re.findall(r"\S+\s*", text)
    for i in range(0, len(words), size):
        yield "".join(words[i : i + size])


class OfflineProvider:
    name = "offline"
    model = OFFLINE_MODEL
    extra_metadata: Mapping[str, Any] = {
        "stand_in": True,
        "note": "deterministic offline stand-in; no language model was called",
    }

    def __init__(self, delay_seconds: float = DEFAULT_DELAY_SECONDS) -> None:
        self.delay_seconds = delay_seconds

    def stream(self, messages: Sequence[ChatMessage]) -> Iterator[Chunk]:
        reply = compose_reply(messages)
        for group in _word_groups(reply, WORDS_PER_DELTA):
            if self.delay_seconds:
                time.sleep(self.delay_seconds)
            yield Chunk(text=group)
        # Rough token counts (words) so the metadata has the same shape as a real provider's.
        prompt_words = sum(len(m["content"].split()) for m in messages)
        yield Chunk(
            finish_reason="stop",
            prompt_tokens=prompt_words,
            completion_tokens=len(reply.split()),
        )
