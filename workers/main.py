"""The worker process: Dramatiq worker threads, the projector's periodic sweep and the
analytics publisher."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import dramatiq
import structlog

from services.core.metrics import refresh_projection_lag_sync, start_metrics_server
from services.core.settings import Settings
from workers.actors import declare_actors, project_pending
from workers.broker import ASSISTANT_QUEUE, PROJECTOR_QUEUE
from workers.projector import PROJECTION
from workers.publisher import run_publisher
from workers.recovery import ReplyRecovery
from workers.runtime import WorkerRuntime

log = structlog.get_logger("worker")
LAG_INTERVAL_SECONDS = 2.0  # how often the sweep measures projection lag for /metrics


def _sweep(runtime: WorkerRuntime, stop: threading.Event) -> None:
    """Covers a nudge lost between commit and enqueue: the projector runs at least this often."""
    recovery = ReplyRecovery(runtime)  # replies a dead worker left, requests that got lost
    lag_due = 0.0
    while not stop.wait(runtime.settings.projector_sweep_seconds):
        try:
            project_pending(runtime)
        except Exception:  # keep sweeping: the database may be back next time
            log.exception("sweep_failed")
        try:
            recovery.maybe_run()
        except Exception:  # Redis or the database may be back next time
            log.exception("reply_recovery_failed")
        if time.monotonic() >= lag_due:  # never raises: a failed measurement is logged
            lag_due = time.monotonic() + LAG_INTERVAL_SECONDS
            refresh_projection_lag_sync(runtime.pool, PROJECTION)


@contextmanager
def running_worker(settings: Settings, threads: int = 4) -> Iterator[WorkerRuntime]:
    """Starts the worker threads and the sweep; stops both on exit."""
    runtime = WorkerRuntime.open(settings)
    declare_actors(runtime)
    # Two pools of threads: projection nudges must never queue behind assistant replies
    # (a reply holds its thread for seconds).
    projecting = dramatiq.Worker(runtime.broker, queues={PROJECTOR_QUEUE}, worker_threads=2,
                                 worker_timeout=100)
    answering = dramatiq.Worker(runtime.broker, queues={ASSISTANT_QUEUE},
                                worker_threads=threads, worker_timeout=100)
    stop = threading.Event()
    sweeper = threading.Thread(target=_sweep, args=(runtime, stop), name="sweep", daemon=True)
    # the analytics stream: one thread polling the store (one publisher runs at a time
    # across processes: its checkpoint row is taken SKIP LOCKED)
    publishing = threading.Thread(
        target=run_publisher, args=(settings, runtime.pool, runtime.redis, stop),
        name="publisher", daemon=True)
    projecting.start()
    answering.start()
    sweeper.start()
    publishing.start()
    stop_metrics = start_metrics_server(settings.worker_metrics_port, settings.host)
    log.info("worker_started", threads=threads)
    try:
        yield runtime
    finally:
        stop.set()
        projecting.stop()
        answering.stop()
        sweeper.join(timeout=10)
        publishing.join(timeout=10)
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
