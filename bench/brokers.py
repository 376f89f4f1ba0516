"""`python -m bench brokers`: Dramatiq on Redis vs RabbitMQ, as make_broker() builds them
(RabbitMQ with publisher confirms): how fast one thread enqueues, how fast a 4-thread worker
drains a backlog, and the round trip of one message (enqueue → a worker thread runs it).

BENCH_REDIS_URL (default the local Redis) and BENCH_RABBITMQ_URL (default guest on the local
RabbitMQ's `/` vhost); each run uses its own queue and deletes it. A broker that does not
answer is skipped with the reason printed.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
import uuid
from typing import Any

import dramatiq
import redis

from bench.common import REDIS_URL, finish, print_table, summary
from services.core.settings import Settings
from workers.broker import make_broker

RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")


def _measure(broker: dramatiq.Broker, queue: str, messages: int, round_trips: int
             ) -> dict[str, Any]:
    done: dict[str, threading.Event] = {}
    count = [0]
    lock = threading.Lock()

    def bench_noop(key: str) -> None:
        with lock:
            count[0] += 1
        if key in done:
            done[key].set()

    actor = dramatiq.Actor(bench_noop, broker=broker, actor_name=f"bench_noop_{queue}",
                           queue_name=queue, priority=0, options={"max_retries": 0})
    started = time.perf_counter()
    for i in range(messages):
        actor.send(str(i))
    enqueue_s = time.perf_counter() - started

    worker = dramatiq.Worker(broker, queues={queue}, worker_threads=4, worker_timeout=100)
    started = time.perf_counter()
    worker.start()
    try:
        deadline = time.monotonic() + 300
        while count[0] < messages and time.monotonic() < deadline:
            time.sleep(0.005)
        drain_s = time.perf_counter() - started
        latencies = []
        for i in range(round_trips):
            key = f"rt-{i}"
            done[key] = threading.Event()
            t0 = time.perf_counter()
            actor.send(key)
            if done[key].wait(30):
                latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        worker.stop()
    return {"messages": messages, "enqueue_per_s": round(messages / enqueue_s),
            "drain_per_s": round(count[0] / drain_s), "round_trip_ms": summary(latencies)}


def _run(kind: str, url: str, messages: int, round_trips: int) -> dict[str, Any] | str:
    tag = uuid.uuid4().hex[:8]
    prefix = f"bench-brokers-{tag}:"
    queue = f"bench-brokers-{tag}"
    settings = Settings.from_env({}, redis_url=REDIS_URL, redis_prefix=prefix,
                                 broker_url=url if kind == "rabbitmq" else "")
    try:
        broker = make_broker(settings)
        result = _measure(broker, queue, messages, round_trips)
    except Exception as exc:  # an absent broker: say so, measure the other
        return f"skipped: {exc!r}"
    finally:
        if kind == "rabbitmq":
            try:
                for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
                    broker.channel.queue_delete(name)
            except Exception:
                pass
        else:
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"{prefix}*", count=1000):
                client.delete(key)
            client.close()
        broker.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench brokers", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a small run (500 messages)")
    args, _ = parser.parse_known_args(argv)
    messages, round_trips = (500, 50) if args.quick else (5_000, 300)
    results = {kind: _run(kind, url, messages, round_trips)
               for kind, url in (("redis", REDIS_URL), ("rabbitmq", RABBITMQ_URL))}
    rows = []
    for kind, r in results.items():
        if isinstance(r, str):
            print(f"{kind}: {r}")
            continue
        rt = r["round_trip_ms"]
        rows.append([kind, r["enqueue_per_s"], r["drain_per_s"], rt["median"], rt["p99"]])
    print_table(f"Dramatiq brokers ({messages} messages, 4 worker threads)",
                ["broker", "enqueue/s (1 thread)", "drain/s", "round trip p50 ms", "p99 ms"],
                rows)
    finish("brokers", args.quick, {"results": results})
    return 0
