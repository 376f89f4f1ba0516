"""The worker process: the followers of the event store (projector, analytics publisher,
reply dispatcher), the thread that wakes them, the assistant's Dramatiq threads, and a
sweep for replies whose worker died (and jobs a restarted Redis lost)."""

from __future__ import annotations

import signal
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import dramatiq
import structlog

from services.core.metrics import refresh_projection_lag_sync, start_metrics_server
from services.core.settings import Settings
from workers.actors import declare_actors
from workers.assistant import record_interrupted
from workers.broker import ASSISTANT_QUEUE
from workers.dispatcher import dispatcher_follower, recover_lost_jobs
from workers.follower import FollowerThread, listen_for_wakeups
from workers.projector import PROJECTION, read_model_follower
from workers.publisher import publisher_follower, stream_key
from workers.reply_lease import WORKER_LOST, abandoned_replies
from workers.runtime import WorkerRuntime

log = structlog.get_logger("worker")
LAG_INTERVAL_SECONDS = 2.0  # how often the sweep measures projection lag for /metrics


def fail_abandoned(runtime: WorkerRuntime) -> list[str]:
    """Records every reply whose worker stopped renewing its lease as failed."""
    failed: list[str] = []
    for message_id, session_id in abandoned_replies(runtime):
        if record_interrupted(runtime, uuid.UUID(session_id), uuid.UUID(message_id),
                              WORKER_LOST, "the worker writing the reply stopped"):
            failed.append(message_id)
    if failed:
        log.info("replies_recovered", failed=failed)
    return failed


def _sweep(runtime: WorkerRuntime, stop: threading.Event) -> None:
    """Replies a dead worker left half-written, jobs a restarted Redis lost, and the
    projection lag for /metrics."""
    lag_due = 0.0
    while not stop.wait(runtime.settings.reply_recovery_sweep_seconds):
        try:
            fail_abandoned(runtime)
            recover_lost_jobs(runtime)
        except Exception:  # Redis or the database may be back next time
            log.exception("reply_recovery_failed")
        if time.monotonic() >= lag_due:  # never raises: a failed measurement is logged
            lag_due = time.monotonic() + LAG_INTERVAL_SECONDS
            refresh_projection_lag_sync(runtime.pool, PROJECTION)


@contextmanager
def running_worker(settings: Settings, threads: int = 4) -> Iterator[WorkerRuntime]:
    """Starts the followers, the wake-up listener, the assistant's threads and the sweep;
    stops them on exit."""
    runtime = WorkerRuntime.open(settings)
    declare_actors(runtime)
    # The Redis broker polls an idle queue with a back-off capped at worker_timeout (ms): a
    # job waits for half to all of it. 50 ms keeps a reply's start prompt for 20 cheap
    # fetches a second while idle.
    answering = dramatiq.Worker(runtime.broker, queues={ASSISTANT_QUEUE},
                                worker_threads=threads, worker_timeout=50)
    stop = threading.Event()
    s = settings
    followers = [
        FollowerThread(runtime.pool, read_model_follower(
            batch_size=s.projector_batch_size, max_attempts=s.projector_max_attempts),
            s.projector_sweep_seconds, stop),
        FollowerThread(runtime.pool, dispatcher_follower(runtime.broker),
                       s.projector_sweep_seconds, stop),
        FollowerThread(runtime.pool, publisher_follower(
            runtime.redis, stream_key(s), batch_size=s.publisher_batch_size,
            maxlen=s.events_stream_maxlen), s.publisher_poll_seconds, stop),
    ]
    background = [
        *followers,
        threading.Thread(target=listen_for_wakeups, args=(runtime.wake_redis, s, followers, stop),
                         name="wakeups", daemon=True),
        threading.Thread(target=_sweep, args=(runtime, stop), name="sweep", daemon=True),
    ]
    answering.start()
    for thread in background:
        thread.start()
    stop_metrics = start_metrics_server(settings.worker_metrics_port, settings.host)
    log.info("worker_started", threads=threads)
    try:
        yield runtime
    finally:
        stop.set()
        for f in followers:
            f.news.set()
        answering.stop()
        for thread in background:
            thread.join(timeout=10)
        runtime.close()
        stop_metrics()
        log.info("worker_stopped")


def run_worker(settings: Settings, threads: int = 4) -> None:
    """Blocks until SIGINT or SIGTERM."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with running_worker(settings, threads):
        stop.wait()
