"""The abuse suite: each attack of issue 15 sent to the running system (`chatctl serve all`
in a subprocess: gateway, both services and the worker, on loopback) and its defence
asserted. Limits are set low here so that each attack is short; every client names its own
address with X-Forwarded-For, which the services believe from the gateway on loopback
(TRUSTED_PROXIES), so the clients are apart per IP as they would be in production.
"""

from __future__ import annotations

import http.client
import itertools
import json
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from httpx_sse import EventSource, connect_sse

from services.core import reply_slots
from services.core.settings import Settings
from services.http.stream_leases import streams_key
from tests.e2e.system import RunningSystem, running_system

TIMEOUT = 30.0
PER_IP = 200  # per minute
PER_USER = 120  # per minute
SIGNUPS_PER_IP = 3  # per minute
CHATS_PER_USER = 12  # per minute
PENDING_PER_USER = 3
TOKEN_BUDGET = 100_000
STREAMS_PER_IP = 4
METRICS_TOKEN = "scrape-" + uuid.uuid4().hex
LEGACY_PROJECTS_PER_IP = 2
STREAM_SECONDS = 3
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
                        REPLY_SLOTS_ENABLED="true",
                        METRICS_TOKEN=METRICS_TOKEN,
                        RATE_LIMIT_LEGACY_NEW_PROJECT_PER_IP=f"{LEGACY_PROJECTS_PER_IP}/hour",
                        MAX_STREAMS_PER_IP=str(STREAMS_PER_IP),
                        MAX_STREAM_SECONDS=str(STREAM_SECONDS),
                        SSE_HEARTBEAT_SECONDS="1",
                        MAX_PENDING_REPLIES_PER_USER=str(PENDING_PER_USER),
                        DAILY_TOKEN_BUDGET=str(TOKEN_BUDGET),
                        # a reply takes ~0.3 s: long enough to post while it is pending
                        LLM_OFFLINE_DELAY_SECONDS="0.02") as running:
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
    # one after the other, each reply awaited: only the chat rate limit can refuse
    results = [_chat_and_wait_for_done(system.url, user, ip, f"chat {n}")[0]
               for n in range(CHATS_PER_USER)]
    assert results == [200] * CHATS_PER_USER
    refused = post_chat(system.url, user, ip, "one too many")
    assert_limited(refused)
    other, other_ip = new_user(system.url)
    assert post_chat(system.url, other, other_ip, "my turn").status_code == 202
    # the same user from another address is still the same user
    assert_limited(post_chat(system.url, user, new_ip(), "from elsewhere"))


def test_a_user_waits_on_few_replies_at_once_json_form_included(system: RunningSystem) -> None:
    user, ip = new_user(system.url)
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda n: post_chat(system.url, user, ip, f"at once {n}"),
                                range(6)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(202) <= PENDING_PER_USER, codes
    refused = [a for a in answers if a.status_code != 202]
    assert refused and all(a.status_code == 429 for a in refused), codes
    for answer in refused:
        assert answer.json()["error"] == "too_many_pending_replies"
        assert int(answer.headers["retry-after"]) >= 1
    # the slots come back when the replies end
    wait_for(lambda: post_chat(system.url, user, ip, "later").status_code == 202)


def test_one_reply_in_flight_per_session(system: RunningSystem) -> None:
    user, ip = new_user(system.url)
    first = post_chat(system.url, user, ip, "first")
    assert first.status_code == 202
    session = first.json()["session_id"]
    second = httpx.post(f"{system.url}/api/v1/chat", json={"text": "second",
                                                          "session_id": session},
                        headers=headers(user, ip, Accept="application/json"), timeout=TIMEOUT)
    assert second.status_code == 409, second.text
    assert second.json()["error"] == "reply_in_progress"
    assert int(second.headers["retry-after"]) >= 1

    def posted_after_the_reply() -> bool:
        again = httpx.post(f"{system.url}/api/v1/chat", json={"text": "second",
                                                             "session_id": session},
                           headers=headers(user, ip, Accept="application/json"),
                           timeout=TIMEOUT)
        return again.status_code == 202

    wait_for(posted_after_the_reply)


def test_the_daily_token_budget_counts_reported_tokens_and_refuses_when_spent(
        system: RunningSystem, redis_url: str) -> None:
    user, ip = new_user(system.url)
    assert _chat_and_wait_for_done(system.url, user, ip, "count me")[0] == 200

    def usage() -> dict[str, int]:
        response = httpx.get(f"{system.url}/api/v1/users/me", headers=headers(user, ip),
                             timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        return dict(response.json()["usage"])

    spent = wait_for(lambda: usage()["tokens_today"] > 0 and usage())
    assert spent["daily_token_budget"] == TOKEN_BUDGET
    # the rest of today's budget, as the worker counts it (the offline provider's replies
    # are too small to spend it within a test)
    client = redis.Redis.from_url(redis_url)
    settings = Settings.from_env({}, redis_prefix=system.redis_prefix)
    reply_slots.count_tokens(client, settings, user, TOKEN_BUDGET - spent["tokens_today"])
    client.close()
    refused = post_chat(system.url, user, ip, "over budget")
    assert refused.status_code == 429, refused.text
    assert refused.json()["error"] == "token_budget_spent"
    assert int(refused.headers["retry-after"]) >= 1
    assert usage()["tokens_today"] == TOKEN_BUDGET


def _idle_stream_url(base: str, user: str, ip: str) -> str:
    """A stream of the user's own session that waits for a reply that never comes."""
    response = post_chat(base, user, ip, "a session to listen to")
    assert response.status_code == 202, response.text
    session = response.json()["session_id"]
    return f"{base}/api/v1/sessions/{session}/stream?reply_to={uuid.uuid4()}"


def test_live_streams_are_capped_per_ip(system: RunningSystem) -> None:
    ip = new_ip()
    users = [new_user(system.url)[0] for _ in range(STREAMS_PER_IP + 1)]
    urls = [_idle_stream_url(system.url, user, ip) for user in users]
    with httpx.Client(timeout=TIMEOUT) as client:
        opened = []
        try:
            for user, url in zip(users[:STREAMS_PER_IP], urls, strict=False):
                stream = client.stream("GET", url, headers=headers(user, ip))
                response = stream.__enter__()
                opened.append(stream)
                assert response.status_code == 200
            refused = client.get(urls[-1], headers=headers(users[-1], ip))
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"] == "too_many_streams"
            assert int(refused.headers["retry-after"]) >= 1
            # the same user from another address is not held up by this one
            with client.stream("GET", urls[-1], headers=headers(users[-1], new_ip())) as other:
                assert other.status_code == 200
        finally:
            for stream in opened:
                stream.__exit__(None, None, None)


def test_a_live_stream_ends_after_its_lifetime(system: RunningSystem, redis_url: str) -> None:
    user, ip = new_user(system.url)
    url = _idle_stream_url(system.url, user, ip)
    started = time.monotonic()
    with httpx.Client(timeout=TIMEOUT) as client, client.stream(
            "GET", url, headers=headers(user, ip)) as response:
        assert response.status_code == 200
        body = b"".join(response.iter_raw())  # returns only because the server ends it
    lasted = time.monotonic() - started
    assert lasted >= STREAM_SECONDS * 0.9, lasted
    assert b"heartbeat" in body
    # and its slot was given back
    client = redis.Redis.from_url(redis_url)
    settings = Settings.from_env({}, redis_prefix=system.redis_prefix)
    try:
        wait_for(lambda: client.zcard(streams_key(settings, user)) == 0)
    finally:
        client.close()


def wait_for(predicate: Callable[[], Any], timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


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


@pytest.mark.parametrize("path", ["/schema/../api/v1/chat", "/schema/%2e%2e/api/v1/chat",
                                  "/api/v1%2Fchat", "/api/v1/./chat", "/api//v1/chat"])
def test_path_tricks_are_refused_before_routing(system: RunningSystem, path: str) -> None:
    """`POST /schema/../chat` once passed the `/schema` exemption of the caller check and was
    cleaned into `/chat` on the way: now any such path is 400 at the gateway."""
    user, ip = new_user(system.url)
    # http.client sends the path as written (httpx would remove the dot segments itself)
    url = httpx.URL(system.url)
    conn = http.client.HTTPConnection(url.host, url.port, timeout=TIMEOUT)
    try:
        conn.request("POST", path, body=json.dumps({"text": "sneaky"}),
                     headers={**headers(user, ip), "Content-Type": "application/json",
                              "Accept": "application/json"})
        response = conn.getresponse()
        status, body = response.status, json.loads(response.read())
    finally:
        conn.close()
    assert status == 400, body
    assert body["error"] == "invalid_path"


def test_readiness_is_cached(system: RunningSystem) -> None:
    """A burst of unauthenticated probes opens no database connection each: they all share
    one check per second."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: httpx.get(f"{system.url}/readyz", timeout=TIMEOUT),
                                range(40)))
    assert {a.status_code for a in answers} == {200}


def _legacy(base: str, ip: str, body: dict[str, Any],
            user: str | None = None) -> tuple[int, dict[str, str], list[tuple[str, str]]]:
    """(status, headers, events) of a legacy POST /chat."""
    extra = {"X-Forwarded-For": ip, **({"X-User-ID": user} if user else {})}
    with httpx.Client(timeout=TIMEOUT) as client, client.stream(
            "POST", f"{base}/chat", json=body, headers=extra) as response:
        if response.status_code != 200:
            response.read()
            return response.status_code, dict(response.headers), []
        events = [(e.event, e.data) for e in EventSource(response).iter_sse()]
        return response.status_code, dict(response.headers), events


def test_legacy_chat_cannot_reach_another_users_project(system: RunningSystem) -> None:
    """An anonymous caller who knows a project id of a real user can neither post into its
    conversation nor (through the assistant's context) read it out."""
    owner, ip = new_user(system.url)
    mine = post_chat(system.url, owner, ip, "my private story")
    assert mine.status_code == 202
    project = mine.json()["project_id"]
    status, _, _ = _legacy(system.url, new_ip(), {"text": "tell me", "project_id": project})
    assert status == 404
    stranger, stranger_ip = new_user(system.url)
    status, _, _ = _legacy(system.url, stranger_ip, {"text": "tell me", "project_id": project},
                           user=stranger)
    assert status == 404
    # the owner, with credentials, may use the legacy route on their own project
    status, found, _ = _legacy(system.url, ip, {"text": "legacy me", "project_id": project},
                               user=owner)
    assert status == 200
    assert found["deprecation"] == "true" and "sunset" in found


def test_anonymous_legacy_projects_are_capped_per_ip_and_stay_anonymous(
        system: RunningSystem) -> None:
    ip = new_ip()
    made = []
    for n in range(LEGACY_PROJECTS_PER_IP):
        # (the legacy route is also limited to one post a second per address)
        status, found, events = _post_legacy_slowly(system.url, ip, {"text": f"legacy {n}"})
        assert status == 200, status
        assert found["deprecation"] == "true"
        made.append(json.loads(events[0][1])["project_id"])
    status, found, _ = _post_legacy_slowly(system.url, ip, {"text": "one more"})
    assert status == 429
    assert int(found["retry-after"]) >= 1
    # an anonymous project stays open to anonymous posts (old clients keep working)
    status, _, _ = _post_legacy_slowly(system.url, new_ip(), {"text": "again",
                                                              "project_id": made[0]})
    assert status == 200


def _post_legacy_slowly(base: str, ip: str,
                        body: dict[str, Any]) -> tuple[int, dict[str, str], list[Any]]:
    time.sleep(1.1)
    return _legacy(base, ip, body)


def test_deleting_a_session_removes_its_live_relay(system: RunningSystem, redis_url: str) -> None:
    """The relay holds the whole reply; it used to stay in Redis for an hour after DELETE."""
    from services.core.livewire import latest_key, live_key

    user, ip = new_user(system.url)
    assert _chat_and_wait_for_done(system.url, user, ip, "soon gone")[0] == 200
    listed = wait_for(lambda: httpx.get(f"{system.url}/api/v1/sessions",
                                        headers=headers(user, ip),
                                        timeout=TIMEOUT).json()["sessions"])
    session = listed[0]["session_id"]
    settings = Settings.from_env({}, redis_prefix=system.redis_prefix)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.exists(live_key(settings, session)) == 1
        deleted = httpx.delete(f"{system.url}/api/v1/sessions/{session}",
                               headers=headers(user, ip), timeout=TIMEOUT)
        assert deleted.status_code in (200, 204), deleted.text
        assert client.exists(live_key(settings, session), latest_key(settings, session)) == 0
    finally:
        client.close()


def test_security_headers_on_the_ui_and_the_api(system: RunningSystem) -> None:
    ui = httpx.get(f"{system.url}/", timeout=TIMEOUT)
    assert ui.status_code == 200
    csp = ui.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert ui.headers["referrer-policy"] == "no-referrer"
    assert ui.headers["x-content-type-options"] == "nosniff"
    assert "strict-transport-security" not in ui.headers  # plain HTTP here
    user, ip = new_user(system.url)
    api = httpx.get(f"{system.url}/api/v1/sessions", headers=headers(user, ip),
                    timeout=TIMEOUT)
    assert "default-src 'none'" in api.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in api.headers["content-security-policy"]
    assert api.headers["referrer-policy"] == "no-referrer"
    behind_https = httpx.get(f"{system.url}/", headers={"X-Forwarded-Proto": "https"},
                             timeout=TIMEOUT)
    assert behind_https.headers["strict-transport-security"].startswith("max-age=")


def test_metrics_are_not_public_through_the_gateway(system: RunningSystem) -> None:
    assert httpx.get(f"{system.url}/metrics", timeout=TIMEOUT).status_code == 404
    wrong = httpx.get(f"{system.url}/metrics", headers={"Authorization": "Bearer nope"},
                      timeout=TIMEOUT)
    assert wrong.status_code == 404
    scraped = httpx.get(f"{system.url}/metrics",
                        headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=TIMEOUT)
    assert scraped.status_code == 200 and "gateway" in scraped.text
