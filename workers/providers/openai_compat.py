"""An OpenAI-compatible chat/completions provider (OpenAI, vLLM, Ollama, llama.cpp server).

Speaks the streaming wire format directly over httpx: `POST {base}/chat/completions` with
`stream: true`, then Server-Sent Events lines `data: {chunk}` ending with `data: [DONE]`.
We parse the lines ourselves (they are that simple) rather than add a runtime dependency.
Anything that is not a clean, complete stream becomes a ProviderError: HTTP errors, an
error object inside the stream, malformed JSON, a connection that drops before [DONE] and
timeouts (settings.llm_timeout_seconds, applied to connect and to each read, so a server
that stalls mid-reply cannot hang the assistant).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx
import msgspec

from services.core.settings import Settings
from workers.providers.base import ChatMessage, Chunk, ProviderError

_MAX_ERROR_BODY = 500  # characters of an error response kept for the logs and the event


class OpenAICompatProvider:
    name = "openai"
    extra_metadata: Mapping[str, Any] = {}

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str = "",
        timeout_seconds: float = 60.0,
        client: httpx.Client | None = None,
        max_tokens: int = 1024,
    ) -> None:
        if not base_url:
            raise ValueError("LLM_BASE_URL is required for LLM_PROVIDER=openai")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.max_tokens = max_tokens  # sent on every call: a reply's cost has a ceiling
        # One client per provider: connection reuse across replies in a worker.
        self._client = client or httpx.Client(timeout=httpx.Timeout(timeout_seconds))

    @classmethod
    def from_settings(cls, settings: Settings) -> OpenAICompatProvider:
        return cls(
            base_url=settings.llm_base_url,
            model=settings.llm_model,
            api_key=settings.llm_api_key,
            timeout_seconds=settings.llm_timeout_seconds,
            max_tokens=settings.llm_max_tokens,
        )

    def close(self) -> None:
        self._client.close()

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _body(self, messages: Sequence[ChatMessage]) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": list(messages),
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": self.max_tokens,
        }

    def stream(self, messages: Sequence[ChatMessage]) -> Iterator[Chunk]:
        url = f"{self.base_url}/chat/completions"
        try:
            with self._client.stream(
                "POST", url, json=self._body(messages), headers=self._headers()
            ) as response:
                if response.status_code >= 400:
                    body = response.read().decode(errors="replace")[:_MAX_ERROR_BODY]
                    raise ProviderError(f"http_{response.status_code}", f"{url} answered {body!r}")
                yield from _parse_lines(response.iter_lines())
        except httpx.TimeoutException as exc:
            raise ProviderError("timeout", f"{type(exc).__name__}: {exc}") from exc
        except httpx.HTTPError as exc:  # connect errors, a connection dropped mid-body, ...
            raise ProviderError("connection", f"{type(exc).__name__}: {exc}") from exc


def _parse_lines(lines: Iterator[str]) -> Iterator[Chunk]:
    """SSE `data:` lines → Chunks. Comments, `event:`/`id:` fields and blank lines are
    ignored; a stream that ends without [DONE] was cut off."""
    for line in lines:
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        yield from _chunks(_decode(payload))
    raise ProviderError("incomplete", "the stream ended before data: [DONE]")


def _decode(payload: str) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProviderError("malformed_chunk", f"not JSON: {payload[:100]!r}") from exc
    if not isinstance(data, dict):
        raise ProviderError("malformed_chunk", f"not an object: {payload[:100]!r}")
    if "error" in data:  # vLLM, Ollama and OpenAI report mid-stream failures this way
        raise ProviderError("provider_error", str(data["error"])[:_MAX_ERROR_BODY])
    return data


def _chunks(data: dict[str, Any]) -> Iterator[Chunk]:
    try:
        for choice in data.get("choices") or ():
            text = (choice.get("delta") or {}).get("content") or ""
            finish = choice.get("finish_reason")
            if text or finish:
                yield Chunk(text=text, finish_reason=finish)
        usage = data.get("usage")
        if usage:
            yield Chunk(
                prompt_tokens=usage.get("prompt_tokens"),
                completion_tokens=usage.get("completion_tokens"),
            )
    except (AttributeError, TypeError) as exc:  # right JSON, wrong shape
        raise ProviderError("malformed_chunk", f"unexpected chunk shape: {exc}") from exc
