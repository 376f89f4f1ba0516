"""The assistant's language-model providers behind one small, synchronous streaming interface.

Sync because the assistant runs in Dramatiq worker threads. A provider turns a conversation
into an iterator of Chunks: text deltas as they arrive, then (from providers that know them)
the finish reason and token counts. Errors of any kind surface as ProviderError, so the
assistant has exactly one failure path to turn into an `error` event and an
AssistantReplyFailed.
"""

from __future__ import annotations

from services.core.settings import Settings
from workers.providers.base import ChatMessage, Chunk, Provider, ProviderError

__all__ = ["ChatMessage", "Chunk", "Provider", "ProviderError", "make_provider"]


def make_provider(settings: Settings) -> Provider:
    """The provider settings.llm_provider names; unknown names are a configuration error."""
    if settings.llm_provider == "offline":
        from workers.providers.offline import OfflineProvider

        return OfflineProvider(settings.llm_offline_delay_seconds)
    if settings.llm_provider == "openai":
        from workers.providers.openai_compat import OpenAICompatProvider

        return OpenAICompatProvider.from_settings(settings)
    raise ValueError(f"unknown LLM_PROVIDER {settings.llm_provider!r} (offline, openai)")
