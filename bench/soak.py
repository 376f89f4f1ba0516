"""Soak: simulated users of mixed traffic against the whole system (`chatctl serve all`).

Each user registers, then loops: chat (JSON 202, or the streamed reply read to its end),
list sessions (and the next page), page a session's messages, rename, now and then delete a
session. Afterwards every surviving session is read back and compared with what its user
sent: no message lost, none doubled, in order; each user message has at most one reply;
deleted sessions answer 404. Throughout, the resident memory of each process is sampled.

    python -m bench.soak --users 50 --seconds 600     # make soak
    python -m bench.soak --users 10 --seconds 30      # the short form the tests run

The CLI starts the system on a throwaway database of the PostgreSQL named by
SOAK_DATABASE_URL (default: the local server) and the Redis of SOAK_REDIS_URL, and writes
bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
THINK_SECONDS = (0.02, 0.2)
ACTIONS = (  # (name, weight)
    ("chat_json", 30), ("chat_stream", 10), ("list", 25), ("page", 20), ("rename", 8),
    ("delete", 2), ("new_session", 5),
)


@dataclass
class _UserState:
    user_id: str
    sent: dict[str, list[str]] = field(default_factory=dict)  # session → texts, in order
    deleted: list[str] = field(default_factory=list)
    position: int = 0


@dataclass
class SoakReport:
    users: int
    seconds: float
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    actions: Counter[str] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    client_errors: list[str] = field(default_factory=list)  # timeouts, resets
    lost: int = 0
    duplicated: int = 0
    misordered: int = 0
    double_replies: int = 0
    deleted_visible: int = 0
    messages_sent: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, list[float]] = field(default_factory=dict)  # process → samples
    sample_seconds: float = 0.0

    def rss_growth_mb(self, warmup_fraction: float = 0.25) -> dict[str, float]:
        """Per process: the last sample minus the one at the end of the warm-up."""
        out = {}
        for name, samples in self.rss_mb.items():
            if len(samples) >= 2:
                start = samples[min(len(samples) - 1, int(len(samples) * warmup_fraction))]
                out[name] = round(samples[-1] - start, 1)
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "users": self.users, "seconds": round(self.seconds), "requests": self.requests,
            "requests_per_second": round(self.requests / max(self.seconds, 1e-9), 1),
            "statuses": dict(sorted(self.statuses.items())), "actions": dict(self.actions),
            "server_errors": len(self.server_errors), "client_errors": len(self.client_errors),
            "messages_sent": self.messages_sent, "lost": self.lost,
            "duplicated": self.duplicated, "misordered": self.misordered,
            "double_replies": self.double_replies, "deleted_visible": self.deleted_visible,
            "latency_ms": self.latency_ms,
            "rss_mb_first_warm_last": {
                name: [s[0], s[min(len(s) - 1, len(s) // 4)], s[-1]]
                for name, s in self.rss_mb.items() if s},
            "rss_growth_after_warmup_mb": self.rss_growth_mb(),
            "rss_sample_seconds": self.sample_seconds,
        }


class _Soak:
    def __init__(self, base: str, users: int, seconds: float, seed: int) -> None:
        self.base, self.users, self.seconds = base, users, seconds
        self.report = SoakReport(users=users, seconds=seconds)
        self.lock = threading.Lock()
        self.latencies: dict[str, list[float]] = {}
        self.states: list[_UserState] = []
        self.seed = seed

    def _record(self, action: str, response: httpx.Response | None, took: float,
                error: str | None = None) -> None:
        with self.lock:
            self.report.requests += 1
            self.report.actions[action] += 1
            if response is not None:
                self.report.statuses[response.status_code] += 1
                if response.status_code >= 500:
                    self.report.server_errors.append(
                        f"{action} {response.status_code} {response.text[:200]}")
            if error is not None:
                self.report.client_errors.append(f"{action}: {error}")
            self.latencies.setdefault(action, []).append(took * 1000)

    def _call(self, c: httpx.Client, action: str, method: str, path: str,
              **kw: Any) -> httpx.Response | None:
        started = time.monotonic()
        try:
            r = c.request(method, path, **kw)
        except httpx.HTTPError as exc:
            self._record(action, None, time.monotonic() - started, repr(exc))
            return None
        self._record(action, r, time.monotonic() - started)
        return r

    def _chat_stream(self, c: httpx.Client, state: _UserState, session: str | None,
                     text: str) -> str | None:
        started = time.monotonic()
        body = {"text": text, "session_id": session}
        try:
            with c.stream("POST", "/api/v1/chat", json=body, timeout=60) as r:
                if r.status_code != 200:
                    r.read()
                    self._record("chat_stream", r, time.monotonic() - started)
                    return None
                sid, kind = None, ""
                for line in r.iter_lines():
                    if line.startswith("event:"):
                        kind = line.split(":", 1)[1].strip()
                    elif line.startswith("data:") and kind == "session":
                        data = json.loads(line.split(":", 1)[1])
                        sid = data["session_id"]
                        self._sent(state, sid, text, data["position"])
                    elif line.startswith("data:") and kind in ("done", "error"):
                        break
                self._record("chat_stream", r, time.monotonic() - started)
                return sid
        except httpx.HTTPError as exc:
            self._record("chat_stream", None, time.monotonic() - started, repr(exc))
            return None

    def _sent(self, state: _UserState, session: str, text: str, position: int) -> None:
        state.sent.setdefault(session, []).append(text)
        state.position = max(state.position, position)
        with self.lock:
            self.report.messages_sent += 1

    def _user(self, index: int, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        names, weights = zip(*ACTIONS, strict=True)
        with httpx.Client(base_url=self.base, timeout=30) as c:
            r = self._call(c, "register", "POST", "/api/v1/users",
                           json={"display_name": f"soak {index}"})
            if r is None or r.status_code != 201:
                return
            state = _UserState(r.json()["user_id"])
            with self.lock:
                self.states.append(state)
            c.headers["X-User-ID"] = state.user_id
            n = 0
            while time.monotonic() < deadline:
                n += 1
                sessions = list(state.sent)
                session = rng.choice(sessions) if sessions else None
                action = rng.choices(names, weights)[0] if session else "new_session"
                text = f"soak {index}.{n}: what happens in chapter {n}? {uuid.uuid4().hex[:6]}"
                if action in ("chat_json", "new_session"):
                    target = None if action == "new_session" else session
                    r = self._call(c, action, "POST", "/api/v1/chat",
                                   json={"text": text, "session_id": target},
                                   headers={"Accept": "application/json"})
                    if r is not None and r.status_code == 202:
                        data = r.json()
                        self._sent(state, data["session_id"], text, data["position"])
                elif action == "chat_stream":
                    self._chat_stream(c, state, session, text)
                elif action == "list":
                    r = self._call(c, "list", "GET", "/api/v1/sessions",
                                   params={"limit": 5})
                    if r is not None and r.status_code == 200 and r.json()["next_cursor"]:
                        self._call(c, "list", "GET", "/api/v1/sessions",
                                   params={"limit": 5, "before": r.json()["next_cursor"]})
                elif action == "page":
                    self._call(c, "page", "GET", f"/api/v1/sessions/{session}/messages",
                               params={"limit": 20, "offset": rng.randint(0, 5)})
                elif action == "rename":
                    self._call(c, "rename", "PUT", f"/api/v1/sessions/{session}/title",
                               json={"title": f"Renamed {n}"})
                elif action == "delete" and session is not None:
                    r = self._call(c, "delete", "DELETE", f"/api/v1/sessions/{session}")
                    if r is not None and r.status_code == 204:
                        state.sent.pop(session)
                        state.deleted.append(session)
                time.sleep(rng.uniform(*THINK_SECONDS))

    def _verify(self, state: _UserState) -> None:
        headers = {"X-User-ID": state.user_id, "X-Min-Position": str(state.position)}
        with httpx.Client(base_url=self.base, timeout=30, headers=headers) as c:
            for session, texts in state.sent.items():
                messages: list[dict[str, Any]] = []
                after = 0
                while True:
                    r = c.get(f"/api/v1/sessions/{session}/messages",
                              params={"limit": 200, "after": after})
                    if r.status_code != 200:
                        self.report.server_errors.append(f"verify {r.status_code} {r.text}")
                        return
                    page = r.json()["messages"]
                    messages += page
                    if len(page) < 200:
                        break
                    after = page[-1]["seq"]
                got = [m["content"] for m in messages if m["role"] == "user"]
                self.report.lost += len(set(texts) - set(got))
                self.report.duplicated += len(got) - len(set(got))
                kept = [t for t in got if t in set(texts)]
                if kept != [t for t in texts if t in set(got)]:
                    self.report.misordered += 1
                # an assistant message shares its question's turn id: one reply per turn
                replies = Counter(m["turn_id"] for m in messages if m["role"] == "assistant")
                self.report.double_replies += sum(1 for v in replies.values() if v > 1)
            for session in state.deleted:
                if c.get(f"/api/v1/sessions/{session}/messages").status_code != 404:
                    self.report.deleted_visible += 1

    def run(self, processes: dict[str, int], sample_every: float) -> SoakReport:
        deadline = time.monotonic() + self.seconds
        threads = [threading.Thread(target=self._user, args=(i, deadline), daemon=True)
                   for i in range(self.users)]
        started = time.monotonic()
        for t in threads:
            t.start()
        self.report.sample_seconds = sample_every
        procs = {name: psutil.Process(pid) for name, pid in processes.items()}
        while any(t.is_alive() for t in threads):
            for name, proc in procs.items():
                try:
                    rss = proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                self.report.rss_mb.setdefault(name, []).append(round(rss, 1))
            time.sleep(min(sample_every, max(0.1, deadline - time.monotonic() + 0.5)))
        for t in threads:
            t.join()
        self.report.seconds = time.monotonic() - started
        time.sleep(1)  # the last replies land; verification waits on positions anyway
        for state in self.states:
            self._verify(state)
        self.report.latency_ms = {
            action: round(statistics.quantiles(values, n=100)[98], 1) if len(values) > 1
            else round(values[0], 1)
            for action, values in self.latencies.items()}
        return self.report


def run_soak(base_url: str, users: int, seconds: float, processes: dict[str, int],
             *, sample_every: float = 5.0, seed: int = 1) -> SoakReport:
    """Runs the soak against a running system; `processes` names the pids to watch."""
    return _Soak(base_url, users, seconds, seed).run(processes, sample_every)


def system_processes(root_pid: int) -> dict[str, int]:
    """The children of `chatctl serve all`, by role."""
    out: dict[str, int] = {}
    for child in psutil.Process(root_pid).children(recursive=True):
        try:
            cmd = child.cmdline()
        except psutil.Error:
            continue
        if "services.cli" in cmd:
            role = cmd[cmd.index("services.cli") + 1:]
            out[" ".join(role[:2]) if role[0] == "serve" else role[0]] = child.pid
    return out


def main() -> int:
    import os

    import psycopg
    import redis
    from psycopg import sql

    from tests.e2e.system import running_system

    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=600)
    parser.add_argument("--sample-every", type=float, default=10)
    args = parser.parse_args()
    server = os.environ.get("SOAK_DATABASE_URL",
                            "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("SOAK_REDIS_URL", "redis://127.0.0.1:6379/0")
    name = f"chat_soak_{uuid.uuid4().hex[:10]}"
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    prefix = f"chat-soak-{uuid.uuid4().hex[:8]}:"
    try:
        with tempfile.TemporaryDirectory() as tmp, running_system(
            url, redis_url, prefix, Path(tmp)
        ) as system:
            processes = system_processes(system.process.pid)
            print(f"soak: {args.users} users for {args.seconds:.0f} s against {system.url}"
                  f" (processes {processes})", flush=True)
            report = run_soak(system.url, args.users, args.seconds, processes,
                              sample_every=args.sample_every)
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
        leftover = redis.Redis.from_url(redis_url)  # the run's keys go with its database
        for key in leftover.scan_iter(match=f"{prefix}*", count=1000):
            leftover.delete(key)
        leftover.close()
    summary = report.summary()
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    bad = (summary["server_errors"] or summary["lost"] or summary["duplicated"]
           or summary["double_replies"] or summary["deleted_visible"])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
