"""The OpenAI-compatible provider against a local server speaking the real streaming wire
format: `data: {chunk}` lines over chunked HTTP/1.1, usage in a last choice-less chunk,
`data: [DONE]`. Failures of every kind become ProviderError."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from workers.providers import ChatMessage, Chunk, ProviderError
from workers.providers.openai_compat import OpenAICompatProvider

MESSAGES: list[ChatMessage] = [
    {"role": "system", "content": "You help writers."},
    {"role": "user", "content": "I want to write a horror story"},
]


def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


GOOD_STREAM = [
    _chunk({"role": "assistant", "content": ""}),
    _chunk({"content": "Once upon"}),
    _chunk({"content": " a midnight"}),
    _chunk({"content": " dreary."}),
    _chunk({}, finish="stop"),
    {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "test-model",
        "choices": [],
        "usage": {"prompt_tokens": 17, "completion_tokens": 5, "total_tokens": 22},
    },
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # chunked transfer, like real servers
    requests: list[dict[str, Any]]  # set per server

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def _send_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _event(self, payload: str) -> None:
        self._send_chunk(f"data: {payload}\n\n".encode())

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(  # type: ignore[attr-defined]
            {"path": self.path, "body": body, "auth": self.headers.get("Authorization")}
        )
        scenario = self.path.split("/")[1]
        if scenario == "status500":
            payload = b'{"error": {"message": "overloaded"}}'
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self._start_stream()
        if scenario == "ok":
            self._send_chunk(b": keep-alive comment\n\n")
            for chunk in GOOD_STREAM:
                self._event(json.dumps(chunk))
            self._event("[DONE]")
            self._send_chunk(b"")  # the terminating chunk
        elif scenario == "drop":
            for chunk in GOOD_STREAM[:3]:
                self._event(json.dumps(chunk))
            # No terminating chunk: the connection drops mid-body.
            self.close_connection = True
            self.wfile.flush()
            self.connection.shutdown(2)
        elif scenario == "malformed":
            self._event(json.dumps(GOOD_STREAM[1]))
            self._event("{this is not json")
            self._send_chunk(b"")
        elif scenario == "error_object":
            self._event(json.dumps(GOOD_STREAM[1]))
            self._event(json.dumps({"error": {"message": "model crashed"}}))
            self._send_chunk(b"")
        elif scenario == "no_done":
            self._event(json.dumps(GOOD_STREAM[1]))
            self._send_chunk(b"")
        elif scenario == "stall":
            self._event(json.dumps(GOOD_STREAM[1]))
            time.sleep(2)


@pytest.fixture
def llm_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _provider(server: ThreadingHTTPServer, scenario: str, **kwargs: Any) -> OpenAICompatProvider:
    host, port = server.server_address[:2]
    return OpenAICompatProvider(
        base_url=f"http://{host!s}:{port}/{scenario}/v1",
        model="test-model",
        **{"api_key": "sk-test", "timeout_seconds": 5.0, **kwargs},
    )


def test_a_streamed_completion_yields_deltas_then_finish_and_usage(
    llm_server: ThreadingHTTPServer,
) -> None:
    chunks = list(_provider(llm_server, "ok").stream(MESSAGES))
    assert "".join(c.text for c in chunks) == "Once upon a midnight dreary."
    assert [c.text for c in chunks if c.text] == ["Once upon", " a midnight", " dreary."]
    assert Chunk(finish_reason="stop") in chunks
    assert chunks[-1] == Chunk(prompt_tokens=17, completion_tokens=5)


def test_the_request_is_a_streaming_chat_completion_with_usage(
    llm_server: ThreadingHTTPServer,
) -> None:
    list(_provider(llm_server, "ok").stream(MESSAGES))
    (request,) = llm_server.requests  # type: ignore[attr-defined]
    assert request["path"] == "/ok/v1/chat/completions"
    assert request["auth"] == "Bearer sk-test"
    assert request["body"] == {
        "model": "test-model",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 1024,
    }
    list(_provider(llm_server, "ok", max_tokens=77).stream(MESSAGES))
    assert llm_server.requests[-1]["body"]["max_tokens"] == 77  # type: ignore[attr-defined]


def test_without_an_api_key_no_authorization_is_sent(llm_server: ThreadingHTTPServer) -> None:
    list(_provider(llm_server, "ok", api_key="").stream(MESSAGES))
    assert llm_server.requests[0]["auth"] is None  # type: ignore[attr-defined]


def test_an_http_500_is_a_provider_error(llm_server: ThreadingHTTPServer) -> None:
    with pytest.raises(ProviderError) as caught:
        list(_provider(llm_server, "status500").stream(MESSAGES))
    assert caught.value.code == "http_500"
    assert "overloaded" in caught.value.detail


def test_a_connection_dropped_mid_stream_is_a_provider_error_after_the_deltas_so_far(
    llm_server: ThreadingHTTPServer,
) -> None:
    received: list[Chunk] = []
    with pytest.raises(ProviderError) as caught:
        for chunk in _provider(llm_server, "drop").stream(MESSAGES):
            received.append(chunk)
    assert caught.value.code in {"connection", "incomplete"}
    assert [c.text for c in received] == ["Once upon", " a midnight"]


@pytest.mark.parametrize(
    ("scenario", "code"),
    [
        ("malformed", "malformed_chunk"),
        ("error_object", "provider_error"),
        ("no_done", "incomplete"),
    ],
)
def test_a_bad_stream_is_a_provider_error(
    llm_server: ThreadingHTTPServer, scenario: str, code: str
) -> None:
    with pytest.raises(ProviderError) as caught:
        list(_provider(llm_server, scenario).stream(MESSAGES))
    assert caught.value.code == code


def test_a_stalled_stream_times_out(llm_server: ThreadingHTTPServer) -> None:
    # the server resumes after 2 s: only a provider that gave up first reports a timeout
    with pytest.raises(ProviderError) as caught:
        list(_provider(llm_server, "stall", timeout_seconds=0.3).stream(MESSAGES))
    assert caught.value.code == "timeout"


def test_a_server_that_is_not_there_is_a_provider_error() -> None:
    provider = OpenAICompatProvider(base_url="http://127.0.0.1:9/v1", model="m", timeout_seconds=1)
    with pytest.raises(ProviderError) as caught:
        list(provider.stream(MESSAGES))
    assert caught.value.code in {"connection", "timeout"}
