"""The abuse suite: each attack of issue 15 sent to the running system (`chatctl serve all`
in a subprocess: gateway, both services and the worker, on loopback) and its defence
asserted. Limits are set low here so that each attack is short; every client names its own
address with X-Forwarded-For, which the services believe from the gateway on loopback
(TRUSTED_PROXIES), so the clients are apart per IP as they would be in production.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from tests.e2e.system import RunningSystem, running_system

TIMEOUT = 30.0
PER_IP = 200  # per minute
PER_USER = 120  # per minute
SIGNUPS_PER_IP = 3  # per minute
CHATS_PER_USER = 12  # per minute
_addresses = (f"198.51.100.{n}" for n in itertools.count(1))


def new_ip() -> str:
    return next(_addresses)


@pytest.fixture(scope="module")
def system(make_database: Callable[[], str], redis_url: str, redis_prefix: str,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningSystem]:
    with running_system(make_database(), redis_url, f"{redis_prefix}abuse-",
                        Path(tmp_path_factory.mktemp("abuse")),
                        RATE_LIMIT_ENABLED="true",
                        RATE_LIMIT_PER_IP=f"{PER_IP}/minute",
                        RATE_LIMIT_PER_USER=f"20/second;{PER_USER}/minute",
                        RATE_LIMIT_CHAT_PER_USER=f"{CHATS_PER_USER}/minute",
                        RATE_LIMIT_SIGNUP_PER_IP=f"{SIGNUPS_PER_IP}/minute",
                        LLM_OFFLINE_DELAY_SECONDS="0.002") as running:
        yield running


def signup(base: str, ip: str) -> httpx.Response:
    return httpx.post(f"{base}/api/v1/users", json={"display_name": "abuse tester"},
                      headers={"X-Forwarded-For": ip}, timeout=TIMEOUT)


def new_user(base: str) -> tuple[str, str]:
    """(user id, the IP it calls from)."""
    ip = new_ip()
    response = signup(base, ip)
    assert response.status_code == 201, response.text
    return str(response.json()["user_id"]), ip


def headers(user: str, ip: str, **more: str) -> dict[str, str]:
    return {"X-User-ID": user, "X-Forwarded-For": ip, **more}


def post_chat(base: str, user: str, ip: str, text: str) -> httpx.Response:
    return httpx.post(f"{base}/api/v1/chat", json={"text": text},
                      headers=headers(user, ip, Accept="application/json"), timeout=TIMEOUT)


def assert_limited(response: httpx.Response) -> None:
    """Our contract for a refusal: 429 rate_limited, a whole number of seconds to wait, and
    the RateLimit-* headers."""
    assert response.status_code == 429, response.text
    assert response.json()["error"] == "rate_limited"
    assert int(response.headers["retry-after"]) >= 1
    assert int(response.headers["ratelimit-limit"]) >= 1
    assert response.headers["ratelimit-remaining"] == "0"
    assert int(response.headers["ratelimit-reset"]) >= 1


def test_signup_is_limited_per_ip(system: RunningSystem) -> None:
    ip = new_ip()
    answers = [signup(system.url, ip) for _ in range(SIGNUPS_PER_IP + 2)]
    assert [a.status_code for a in answers[:SIGNUPS_PER_IP]] == [201] * SIGNUPS_PER_IP
    for refused in answers[SIGNUPS_PER_IP:]:
        assert_limited(refused)
    assert answers[0].headers["ratelimit-limit"] == str(SIGNUPS_PER_IP)
    assert signup(system.url, new_ip()).status_code == 201  # another address is not held up


def test_chats_are_limited_per_user_and_others_still_chat(system: RunningSystem) -> None:
    user, ip = new_user(system.url)
    answers = [post_chat(system.url, user, ip, f"flood {n}") for n in range(CHATS_PER_USER + 3)]
    codes = [a.status_code for a in answers]
    assert codes.count(202) == CHATS_PER_USER, codes
    for refused in answers[CHATS_PER_USER:]:
        assert_limited(refused)
    other, other_ip = new_user(system.url)
    assert post_chat(system.url, other, other_ip, "my turn").status_code == 202
    # the same user from another address is still the same user
    assert_limited(post_chat(system.url, user, new_ip(), "from elsewhere"))


def test_every_request_of_a_user_counts_in_both_services(system: RunningSystem) -> None:
    user, ip = new_user(system.url)
    read = f"{system.url}/api/v1/sessions"
    codes = []
    for _ in range(PER_USER + 10):
        response = httpx.get(read, headers=headers(user, ip), timeout=TIMEOUT)
        codes.append(response.status_code)
        if response.status_code == 429:
            assert_limited(response)
            break
        time.sleep(0.06)  # under 20/second: the minute's budget is what runs out
    assert codes[-1] == 429 and codes.count(200) <= PER_USER, codes
    # the query service's reads spent the command service's budget too (one count in Redis)
    assert_limited(post_chat(system.url, user, ip, "a write"))


def test_requests_are_limited_per_ip_whoever_they_claim_to_be(system: RunningSystem) -> None:
    ip = new_ip()
    answers = [httpx.get(f"{system.url}/api/v1/sessions",
                         headers={"X-User-ID": str(uuid.uuid4()), "X-Forwarded-For": ip},
                         timeout=TIMEOUT) for _ in range(PER_IP + 5)]
    codes = [a.status_code for a in answers]
    assert 429 in codes and codes.index(429) <= PER_IP, codes
    assert_limited(answers[-1])
    assert httpx.get(f"{system.url}/healthz", headers={"X-Forwarded-For": ip},
                     timeout=TIMEOUT).status_code == 200  # probes are never limited


def _chat_and_wait_for_done(base: str, user: str, ip: str, text: str) -> tuple[int, float]:
    """(status, seconds until the reply's `done`) for the streamed POST /api/v1/chat."""
    started = time.monotonic()
    with httpx.Client(timeout=TIMEOUT) as client, connect_sse(
            client, "POST", f"{base}/api/v1/chat", json={"text": text},
            headers=headers(user, ip)) as source:
        if source.response.status_code != 200:
            return source.response.status_code, time.monotonic() - started
        for event in source.iter_sse():
            if event.event in ("done", "error"):
                return (200 if event.event == "done" else 599), time.monotonic() - started
    return 598, time.monotonic() - started


def test_noisy_neighbour_gets_429s_while_others_chat(system: RunningSystem) -> None:
    """One user floods chats at ~50 requests/s for 10 s while three others chat normally:
    the flooder gets 429 + Retry-After, the others get every reply, nobody sees a 5xx."""
    flooder, flooder_ip = new_user(system.url)
    others = [new_user(system.url) for _ in range(3)]
    flood_seconds, rate = 10.0, 50.0
    flood: list[httpx.Response] = []

    def flood_loop() -> None:
        with httpx.Client(timeout=TIMEOUT) as client:
            start = time.monotonic()
            for n in itertools.count():
                due = start + n / rate
                if due > start + flood_seconds:
                    return
                time.sleep(max(0.0, due - time.monotonic()))
                flood.append(client.post(f"{system.url}/api/v1/chat", json={"text": f"x{n}"},
                                         headers=headers(flooder, flooder_ip,
                                                         Accept="application/json")))

    def chat_normally(who: tuple[str, str]) -> list[tuple[int, float]]:
        results = []
        for turn in range(3):
            results.append(_chat_and_wait_for_done(system.url, *who, f"hello {turn}"))
            time.sleep(1.0)
        return results

    with ThreadPoolExecutor(max_workers=4) as pool:
        flooding = pool.submit(flood_loop)
        chats = [pool.submit(chat_normally, who) for who in others]
        flooding.result(timeout=120)
        results: list[Any] = [r for c in chats for r in c.result(timeout=120)]
    flood_codes = [r.status_code for r in flood]
    assert len(flood) >= 100, "the flood did not run"
    assert 429 in flood_codes
    assert all(code in (202, 429) for code in flood_codes), set(flood_codes)
    assert all("retry-after" in r.headers for r in flood if r.status_code == 429)
    assert flood_codes.count(202) <= CHATS_PER_USER
    assert [status for status, _ in results] == [200] * len(results), results
