"""A Redis Cluster of our own on loopback: N primaries, each with replicas, started from the
machine's redis-server and joined with `redis-cli --cluster create`. Never the machine's
shared Redis."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
import redis.cluster

from tests.integration.conftest import free_port

NODE_TIMEOUT_MS = 1000  # how long a silent primary takes to be failed over (plus a vote)


def binaries() -> tuple[str, str] | None:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    return (server, cli) if server and cli else None


class Node:
    def __init__(self, server: str, tmp: Path) -> None:
        self.port, bus = free_port(), free_port()
        folder = tmp / f"node-{self.port}"
        folder.mkdir(parents=True)
        self.argv = [server, "--port", str(self.port), "--cluster-port", str(bus),
                     "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-config-file", "nodes.conf",
                     "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                     "--save", "", "--appendonly", "no", "--dir", str(folder)]
        self.log = folder / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=2, decode_responses=True)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class LocalCluster:
    def __init__(self, tmp: Path, primaries: int = 3, replicas: int = 1) -> None:
        found = binaries()
        assert found is not None
        self.server, self.cli = found
        self.replicas = replicas
        self.nodes = [Node(self.server, tmp) for _ in range(primaries * (1 + replicas))]

    @property
    def urls(self) -> str:
        """REDIS_CLUSTER_URLS: every node as a startup node."""
        return ",".join(f"redis://127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            _wait(lambda n=node: n.client().ping(), f"node {node.port} did not start")
        subprocess.run(
            [self.cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60)
        self.wait_healthy()

    def wait_healthy(self, timeout: float = 60) -> None:
        """Every live node sees all slots served, and every replica is in sync."""

        def healthy() -> bool:
            for node in self.nodes:
                if not node.alive:
                    continue
                c = node.client()
                info = c.cluster("info")
                if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
                    return False
                replication = c.info("replication")
                if replication["role"] == "slave" and (
                        replication["master_link_status"] != "up"):
                    return False
            return True

        _wait(healthy, "the cluster did not become healthy", timeout)

    def primary_for(self, key: str) -> Node:
        slot = redis.cluster.key_slot(key.encode())
        for node in self.nodes:
            if not node.alive:
                continue
            for start, end, (_, port, *_rest), *_ in node.client().cluster("slots"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


def _wait(predicate: object, message: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():  # type: ignore[operator]
                return
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(0.1)


@contextmanager
def local_cluster(tmp: Path) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
