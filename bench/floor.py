"""The PostgreSQL floor: what the database server itself does for a workload, measured in the
same run and on the same server as the benchmark that compares against it.

- `single_row_commits`: one INSERT of one ~300-byte JSON row per transaction (autocommit),
  from N client processes, each with its own connection: the least a one-event append can
  cost. Measured with pgbench (C, prepared statements) when it is installed, and always with
  a minimal psycopg client (the same language and process layout as our writers).
- `copy_batches`: one COPY of B such rows per transaction, the least a B-event append costs.

The rows go to a table of their own (`floor_rows`: an identity and a jsonb column) in the
benchmark's throwaway database. Every figure is rows committed per second.
"""

from __future__ import annotations

import multiprocessing
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

TABLE = "floor_rows"
CREATE_TABLE = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    data jsonb NOT NULL
)
"""
ROW = (
    '{"type": "MessagePosted", "session_id": "5f0c1a52-3b0e-4c7e-9b8e-2f4d6a1c9e01", '
    '"content": "' + "I want to write a horror story. " * 6 + '"}'
)
INSERT_ROW = f"INSERT INTO {TABLE} (data) VALUES (%s::jsonb)"
COPY_ROWS = f"COPY {TABLE} (data) FROM STDIN"


def prepare(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(CREATE_TABLE)


def _client(url: str, batch: int, start_at: float, seconds: float) -> tuple[int, float]:
    """One client process: commits from start_at for `seconds`; returns (rows, elapsed)."""
    rows = 0
    with psycopg.connect(url, autocommit=True) as conn:
        time.sleep(max(0.0, start_at - time.time()))
        stop_at = start_at + seconds
        while time.time() < stop_at:
            if batch == 1:
                conn.execute(INSERT_ROW, (ROW,))
            else:
                with conn.transaction(), conn.cursor().copy(COPY_ROWS) as copy:
                    for _ in range(batch):
                        copy.write_row((ROW,))
            rows += batch
        return rows, time.time() - start_at


def psycopg_rows_per_s(pool: Any, url: str, clients: int, batch: int, seconds: float) -> float:
    """Rows/s of `clients` processes (from `pool`, a multiprocessing pool) committing `batch`
    rows per transaction: INSERT for one row, COPY for more."""
    start_at = time.time() + 1.0  # every client connected and waiting by then
    results = pool.starmap(_client, [(url, batch, start_at, seconds)] * clients)
    return sum(rows for rows, _ in results) / max(elapsed for _, elapsed in results)


def pgbench_available() -> bool:
    return shutil.which("pgbench") is not None


def pgbench_rows_per_s(url: str, clients: int, seconds: float) -> float:
    """pgbench's transactions/s with one single-row INSERT per transaction (NaN without
    pgbench)."""
    if not pgbench_available():
        return float("nan")
    info = psycopg.conninfo.conninfo_to_dict(url)
    literal = ROW.replace("'", "''")
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "insert.sql"
        script.write_text(f"INSERT INTO {TABLE} (data) VALUES ('{literal}'::jsonb);\n")
        argv = [
            "pgbench", "-n", "-M", "prepared", "-f", str(script),
            "-c", str(clients), "-j", str(clients), "-T", str(max(1, round(seconds))),
            "-h", str(info.get("host", "127.0.0.1")), "-p", str(info.get("port", 5432)),
            "-U", str(info.get("user", "postgres")), str(info["dbname"]),
        ]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    match = re.search(r"tps = ([\d.]+)", out)
    if not match:
        raise RuntimeError(f"pgbench printed no tps:\n{out}")
    return float(match.group(1))


def single_row_commits(pool: Any, url: str, clients: int, seconds: float) -> dict[str, float]:
    """Both measures of the one-row-per-commit floor, back to back."""
    prepare(url)
    return {
        "pgbench": pgbench_rows_per_s(url, clients, seconds),
        "psycopg": psycopg_rows_per_s(pool, url, clients, 1, seconds),
    }


def copy_batches(pool: Any, url: str, clients: int, batch: int, seconds: float) -> float:
    prepare(url)
    return psycopg_rows_per_s(pool, url, clients, batch, seconds)


def spawn_pool(processes: int) -> Any:
    return multiprocessing.get_context("spawn").Pool(processes)
