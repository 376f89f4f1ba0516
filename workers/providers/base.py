"""What every provider is: the small, synchronous streaming interface (workers/providers/).

Sync because the assistant runs in Dramatiq worker threads. A provider turns a conversation
into an iterator of Chunks: text deltas as they arrive, then (from providers that know them)
the finish reason and token counts. Errors of any kind surface as ProviderError, so the
assistant has exactly one failure path to turn into an `error` event and an
AssistantReplyFailed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal, Protocol, TypedDict

import msgspec


class ChatMessage(TypedDict):
    role: Literal["system", "user", "assistant"]
    content: str


class Chunk(msgspec.Struct, frozen=True, kw_only=True):
    """One piece of a streamed reply. Every field is optional: a chunk may carry only text,
    only the finish reason, or only the usage (OpenAI sends usage in a last, choice-less one)."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ProviderError(Exception):
    """The provider failed: `code` is stable and machine-readable (it reaches clients)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class Provider(Protocol):
    name: str
    model: str
    # Merged into the stored message's metadata (the offline one says it is a stand-in).
    extra_metadata: Mapping[str, Any]

    def stream(self, messages: Sequence[ChatMessage]) -> Iterator[Chunk]:
        """Yields the reply as it is produced. Closing the iterator early (a stop) must
        release whatever the provider holds (an HTTP response, ...)."""
        ...
