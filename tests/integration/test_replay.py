"""Replay: the read model rebuilt from the event store equals the live-projected one, the
query side keeps answering through the swap, and an interrupted replay can simply be rerun."""

from __future__ import annotations

import io
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from services.core import events as ev
from services.core.eventstore import (
    MARK_STREAM_DELETED,
    StreamAppend,
    append_sync,
    stream_info_sync,
)
from services.core.legacy_import import import_legacy
from workers import replay, replay_bulk
from workers.fold import Round
from workers.projector import PROJECTION, catch_up

READ_MODEL_TABLES = replay.READ_MODEL.tables

# Describes a table's definition with names as seen from the search_path (set by the caller),
# so that the same definition in two schemas reads the same.
DESCRIBE = """
SELECT 'column', a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
       || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
       || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
  FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
 WHERE a.attrelid = %(t)s::regclass AND a.attnum > 0 AND NOT a.attisdropped
UNION ALL
SELECT 'constraint', conname || ' ' || pg_get_constraintdef(oid, true)
  FROM pg_constraint WHERE conrelid = %(t)s::regclass
UNION ALL
SELECT 'index', pg_get_indexdef(indexrelid, 0, true) FROM pg_index
 WHERE indrelid = %(t)s::regclass
UNION ALL
SELECT 'trigger', pg_get_triggerdef(oid, true) FROM pg_trigger
 WHERE tgrelid = %(t)s::regclass AND NOT tgisinternal
UNION ALL
SELECT 'policy', polname || ' ' || polcmd::text || ' ' || polpermissive || ' '
       || array_to_string(ARRAY(SELECT pg_get_userbyid(r) FROM unnest(polroles) r ORDER BY 1),
                          ',')
       || ' ' || coalesce(pg_get_expr(polqual, polrelid, true), '-')
       || ' ' || coalesce(pg_get_expr(polwithcheck, polrelid, true), '-')
  FROM pg_policy WHERE polrelid = %(t)s::regclass
UNION ALL
SELECT 'table', pg_get_userbyid(relowner) || ' rls=' || relrowsecurity
       || ' force=' || relforcerowsecurity FROM pg_class WHERE oid = %(t)s::regclass
UNION ALL
SELECT 'grant', pg_get_userbyid(a.grantee) || ' ' || a.privilege_type
  FROM pg_class c, aclexplode(c.relacl) a WHERE c.oid = %(t)s::regclass
ORDER BY 1, 2
"""


def describe(conn: psycopg.Connection[Any], schema: str) -> dict[str, list[tuple[str, str]]]:
    with conn.transaction():
        conn.execute(f"SET LOCAL search_path = {schema}, public")
        return {t: conn.execute(DESCRIBE, {"t": f"{schema}.{t}"}).fetchall()
                for t in READ_MODEL_TABLES}


def snapshot(conn: psycopg.Connection[Any],
             schema: str = "public") -> dict[str, list[tuple[Any, ...]]]:
    """Every read-model row, in key order (the first two columns identify a row everywhere)."""
    return {t: conn.execute(f"SELECT * FROM {schema}.{t} ORDER BY 1, 2").fetchall()
            for t in READ_MODEL_TABLES}


class Workload:
    """Random users, projects, sessions, messages, renames, archives and deletes, appended
    the way the command service does (deletes purge the stream's content)."""

    def __init__(self, conn: psycopg.Connection[Any], seed: int) -> None:
        self.conn = conn
        self.rng = random.Random(seed)
        self.users: list[uuid.UUID] = []
        self.projects: dict[uuid.UUID, uuid.UUID] = {}  # project → owner
        self.sessions: dict[uuid.UUID, uuid.UUID] = {}  # live session → owner
        self.open_turns: dict[uuid.UUID, list[uuid.UUID]] = {}

    def _u(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def _append(self, stream: str, events: list[ev.Event], stream_type: str = "",
                owner: uuid.UUID | None = None) -> int:
        info = stream_info_sync(self.conn, stream)
        version = info.version if info else 0
        append_sync(self.conn, [StreamAppend(stream_id=stream, expected_version=version,
                                             events=events, stream_type=stream_type,
                                             owner_id=owner)])
        return version

    def step(self) -> None:
        r = self.rng.random()
        with self.conn.transaction():
            if not self.users or r < 0.05:
                self.register()
            elif r < 0.08:
                user = self.rng.choice(self.users)
                self._append(ev.user_stream(user), [ev.UserProfileUpdated(
                    user_id=user, display_name=f"name {self.rng.random():.4f}")])
            elif r < 0.14 or not self.sessions:
                self.start_session()
            elif r < 0.80:
                self.post()
            elif r < 0.86:
                session = self.rng.choice(list(self.sessions))
                self._append(ev.session_stream(session), [ev.SessionRenamed(
                    session_id=session, title=f"renamed {self.rng.random():.3f}")])
            elif r < 0.88:
                session = self.rng.choice(list(self.sessions))
                self._append(ev.session_stream(session),
                             [ev.SessionArchived(session_id=session)])
            elif r < 0.90:  # issue 17 (a later user message unarchives too)
                session = self.rng.choice(list(self.sessions))
                self._append(ev.session_stream(session),
                             [ev.SessionUnarchived(session_id=session)])
            elif r < 0.93:
                session = self.rng.choice(list(self.sessions))
                self._append(ev.session_stream(session), [ev.AssistantReplyFailed(
                    session_id=session, error="timeout")])
            elif r < 0.96:
                self.delete()
            else:
                user = self.rng.choice(self.users)
                project = self.rng.choice(list(self.projects))
                self._append(ev.user_stream(user),
                             [ev.ProjectLinked(user_id=user, project_id=project)])

    def register(self) -> None:
        user = self._u()
        self._append(ev.user_stream(user), [ev.UserRegistered(
            user_id=user, email=f"{user}@x.test", display_name="u")], "user", user)
        self.users.append(user)

    def start_session(self) -> None:
        user = self.rng.choice(self.users)
        mine = [p for p, o in self.projects.items() if o == user]
        if mine and self.rng.random() < 0.5:
            project = self.rng.choice(mine)
        else:
            project = self._u()
            self._append(ev.project_stream(project), [ev.ProjectCreated(
                project_id=project, owner_id=user, title="p")], "project", user)
            self.projects[project] = user
        session = self._u()
        self._append(ev.session_stream(session), [ev.SessionStarted(
            session_id=session, user_id=user, project_id=project, title="new")],
            "session", user)
        self.sessions[session] = user
        self.open_turns[session] = []

    def post(self) -> None:
        session = self.rng.choice(list(self.sessions))
        user = self.sessions[session]
        waiting = self.open_turns[session]
        events: list[ev.Event] = []
        for _ in range(self.rng.randint(1, 4)):
            if waiting and self.rng.random() < 0.5:
                events.append(ev.MessagePosted(
                    session_id=session, message_id=self._u(), user_id=user, role="assistant",
                    content=f"answer {self.rng.random():.6f}", turn_id=waiting.pop(0),
                    metadata={"model": "m"}))
            else:
                turn = self._u()
                waiting.append(turn)
                events.append(ev.MessagePosted(
                    session_id=session, message_id=self._u(), user_id=user, role="user",
                    content=f"text {self.rng.random():.6f} " * self.rng.randint(1, 30),
                    turn_id=turn))
        self._append(ev.session_stream(session), events)

    def reorganize(self, session: uuid.UUID) -> None:
        """Issue 17: the session moved to another project of its owner (when there is one,
        else one made for it), that project renamed, the session renamed and posted to."""
        owner = self.sessions[session]
        mine = [p for p, o in self.projects.items() if o == owner]
        project = mine[0] if mine else self._u()
        if not mine:
            self._append(ev.project_stream(project), [ev.ProjectCreated(
                project_id=project, owner_id=owner, title="p")], "project", owner)
            self.projects[project] = owner
        self._append(ev.session_stream(session),
                     [ev.SessionMoved(session_id=session, project_id=project)])
        self._append(ev.project_stream(project), [ev.ProjectRenamed(
            project_id=project, title=f"project {self.rng.random():.3f}",
            description=self.rng.choice([None, "about it"]))])
        self._append(ev.session_stream(session),
                     [ev.SessionRenamed(session_id=session, title="moved")])

    def delete(self) -> None:
        session = self.rng.choice(list(self.sessions))
        stream = ev.session_stream(session)
        version = self._append(stream, [ev.SessionDeleted(session_id=session)])
        self.conn.execute("SELECT purge_stream_content(%s, %s)", (stream, version + 1))
        self.conn.execute(MARK_STREAM_DELETED, (stream,))
        del self.sessions[session]
        del self.open_turns[session]

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self.step()


def add_legacy_rows(conn: psycopg.Connection[Any], projects: int, turns: int) -> None:
    """Rows the old system wrote before any event existed."""
    for p in range(projects):
        project = uuid.uuid4()
        conn.execute("INSERT INTO dossier (project_id, title, description) VALUES (%s, %s, %s)",
                     (project, f"legacy {p}", "old"))
        for t in range(turns):
            conn.execute("INSERT INTO turns (project_id, user_text, assistant_text)"
                         " VALUES (%s, %s, %s)", (project, f"q{t}", f"a{t}"))


BEHIND = """
SELECT EXISTS (SELECT 1 FROM events e, projection_checkpoints c
                WHERE c.name = %s AND (e.txid, e.position) > (c.last_txid, c.last_position))
"""


def project_all(url: str, timeout: float = 60.0, batch_size: int = 97) -> None:
    """Projects every event appended so far. catch_up stops early while a transaction
    elsewhere on the server holds the snapshot's xmin back, so it is run until done.
    Odd batches by default: replay must not depend on them; batches of 1 apply the rules
    one event at a time, the order they are defined in."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            catch_up(conn, batch_size=batch_size)
            if not conn.execute(BEHIND, (PROJECTION,)).fetchone()[0]:
                return
            assert time.monotonic() < deadline, "projection did not catch up"
            time.sleep(0.02)


@pytest.fixture
def fresh_db(make_database: Callable[[], str]) -> Iterator[tuple[str, psycopg.Connection]]:
    url = make_database()
    with psycopg.connect(url, autocommit=True) as conn:
        yield url, conn


# bulk build in one chunk, in many (rows rewritten across chunks), and event by event
BUILDS = [pytest.param(True, replay_bulk.CHUNK, id="bulk"),
          pytest.param(True, 97, id="bulk-small-chunks"),
          pytest.param(False, 0, id="per-event")]


@pytest.mark.parametrize(("bulk", "chunk"), BUILDS)
def test_replay_rebuilds_the_read_model_row_for_row(
    fresh_db: tuple[str, psycopg.Connection[Any]], bulk: bool, chunk: int,
) -> None:
    url, conn = fresh_db
    add_legacy_rows(conn, projects=3, turns=4)
    Workload(conn, seed=1).run(2500)
    project_all(url)
    before = snapshot(conn)
    definition = describe(conn, "public")
    assert len(before["chat_messages"]) > 1000 and len(before["turns"]) > 12

    applied = replay.replay(url, bulk=bulk, chunk=chunk or replay_bulk.CHUNK)

    assert applied["read_model"] == conn.execute("SELECT count(*) FROM events").fetchone()[0]
    after = snapshot(conn)
    for table in READ_MODEL_TABLES:
        assert after[table] == before[table], table
    assert describe(conn, "public") == definition
    schemas = {r[0] for r in conn.execute("SELECT nspname FROM pg_namespace")}
    assert not schemas & {replay.REBUILD_SCHEMA, replay.RETIRED_SCHEMA}


def test_the_rebuild_tables_copy_every_part_of_the_live_definition(
    fresh_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    _url, conn = fresh_db
    conn.autocommit = False
    replay.prepare(conn, replay.READ_MODEL)
    conn.autocommit = True
    live, rebuilt = describe(conn, "public"), describe(conn, replay.REBUILD_SCHEMA)
    assert rebuilt == live
    assert any(kind == "policy" for kind, _ in live["dossier"])  # the check sees policies


def test_the_read_model_works_after_a_replay(
    fresh_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    """New events land in the swapped-in tables: trigger, functions and checkpoint work."""
    url, conn = fresh_db
    work = Workload(conn, seed=2)
    work.run(300)
    project_all(url)
    replay.replay(url)
    session = next(iter(work.sessions))
    count = conn.execute("SELECT message_count FROM sessions WHERE session_id = %s",
                         (session,)).fetchone()[0]
    with conn.transaction():
        work._append(ev.session_stream(session), [ev.MessagePosted(
            session_id=session, message_id=uuid.uuid4(), user_id=work.sessions[session],
            role="user", content="after the replay", turn_id=uuid.uuid4())])
    project_all(url)
    row = conn.execute("SELECT message_count, last_message_preview FROM sessions"
                       " WHERE session_id = %s", (session,)).fetchone()
    assert row == (count + 1, "after the replay")
    with conn.transaction():
        conn.execute("SET LOCAL ROLE chat_query")
        conn.execute("SELECT set_config('app.user_id', %s, true)", (str(work.sessions[session]),))
        rows = conn.execute("SELECT content FROM get_session_messages(%s, 1000, 0)",
                            (session,)).fetchall()
    assert rows[-1] == ("after the replay",)


def test_queries_keep_answering_through_the_swap(
    fresh_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    """The query role reads all along, new events are appended and projected meanwhile:
    no query fails, and none sees an empty list."""
    url, conn = fresh_db
    work = Workload(conn, seed=3)
    work.run(1500)
    project_all(url)
    user = max(work.users, key=lambda u: sum(o == u for o in work.sessions.values()))
    session = next(s for s, o in work.sessions.items() if o == user)
    stop = threading.Event()
    errors: list[BaseException] = []
    answers = [0]

    def query() -> None:
        with psycopg.connect(url) as q:
            q.execute("SET ROLE chat_query")
            q.commit()
            while not stop.is_set():
                try:
                    with q.transaction():
                        q.execute("SELECT set_config('app.user_id', %s, true)", (str(user),))
                        sessions = q.execute("SELECT * FROM get_user_sessions(%s, 10)",
                                             (user,)).fetchall()
                        messages = q.execute("SELECT * FROM get_session_messages(%s, 50, 0)",
                                             (session,)).fetchall()
                    assert sessions and messages, "empty answer"
                    answers[0] += 1
                except BaseException as exc:
                    errors.append(exc)
                    return

    def write_and_project() -> None:
        with psycopg.connect(url, autocommit=True) as w:
            more = Workload(w, seed=4)
            while not stop.is_set():
                more.run(20)
                with psycopg.connect(url) as p:
                    catch_up(p, batch_size=200)

    threads = [threading.Thread(target=query) for _ in range(3)]
    threads.append(threading.Thread(target=write_and_project))
    for t in threads:
        t.start()
    try:
        replay.replay(url)
        before = answers[0]
        while answers[0] < before + 20 and not errors:  # and still answering afterwards
            stop.wait(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    project_all(url)
    counted = conn.execute("SELECT count(*) FROM chat_messages").fetchone()[0]
    expected = conn.execute(
        "SELECT count(*) FROM events e JOIN event_streams s USING (stream_id)"
        " WHERE e.type = 'MessagePosted' AND NOT s.deleted").fetchone()[0]
    assert counted == expected


@pytest.mark.parametrize("bulk", [True, False], ids=["bulk", "per-event"])
def test_an_interrupted_replay_leaves_the_live_model_and_can_be_rerun(
    fresh_db: tuple[str, psycopg.Connection[Any]], monkeypatch: pytest.MonkeyPatch,
    bulk: bool,
) -> None:
    url, conn = fresh_db
    Workload(conn, seed=5).run(800)
    project_all(url)
    before = snapshot(conn)
    calls = [0]
    real_advance, real_write = replay.advance, replay_bulk.write_round

    def failing_advance(c: psycopg.Connection[Any], p: replay.Projection, limit: int) -> int:
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt  # the operator's Ctrl-C, mid-build
        return real_advance(c, p, 100)

    def failing_write(c: psycopg.Connection[Any], changes: Round, insert: Any) -> None:
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        real_write(c, changes, insert)

    monkeypatch.setattr(replay, "advance", failing_advance)
    monkeypatch.setattr(replay_bulk, "write_round", failing_write)
    with pytest.raises(KeyboardInterrupt):
        replay.replay(url, bulk=bulk, chunk=100)
    assert snapshot(conn) == before  # the live tables were never touched
    assert conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'rebuild'").fetchone()

    monkeypatch.setattr(replay, "advance", real_advance)
    monkeypatch.setattr(replay_bulk, "write_round", real_write)
    replay.replay(url, bulk=bulk)
    assert snapshot(conn) == before


def test_only_one_replay_runs_at_a_time(
    fresh_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    url, _conn = fresh_db
    with psycopg.connect(url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s)", (replay._REPLAY_LOCK_KEY,))
        with pytest.raises(replay.ReplayBusy):
            replay.replay(url)


def test_an_event_the_live_projector_parked_is_parked_by_the_replay_too(
    fresh_db: tuple[str, psycopg.Connection[Any]],
) -> None:
    url, conn = fresh_db
    work = Workload(conn, seed=6)
    work.run(200)
    session = next(iter(work.sessions))
    with conn.transaction():  # an answer to a turn that never was: its row cannot be written
        work._append(ev.session_stream(session), [ev.MessagePosted(
            session_id=session, message_id=uuid.uuid4(), user_id=work.sessions[session],
            role="assistant", content="orphan", turn_id=uuid.uuid4())])
    work.run(50)
    for _ in range(3):  # the live projector retries, then parks
        project_all(url)
    before = snapshot(conn)
    parked = conn.execute("SELECT position FROM parked_events WHERE parked").fetchall()
    assert len(parked) == 1

    replay.replay(url)

    assert snapshot(conn) == before
    assert conn.execute("SELECT position FROM parked_events WHERE parked AND projection = %s",
                        (PROJECTION,)).fetchall() == parked


class ChaosWorkload(Workload):
    """Workload plus the events a projector must skip or park, and the rarer paths:
    messages to sessions that do not exist (one answering a real turn), answers to turns
    that never were, reused message ids, taken user ids and e-mails, sessions and links
    naming unknown projects, turns shared across sessions, system messages."""

    def __init__(self, conn: psycopg.Connection[Any], seed: int) -> None:
        super().__init__(conn, seed)
        self.message_ids: list[tuple[uuid.UUID, uuid.UUID]] = []  # (message, session)
        self.turns: list[uuid.UUID] = []
        self.emails: list[str] = []

    def register(self) -> None:
        super().register()
        self.emails.append(f"{self.users[-1]}@x.test")

    def step(self) -> None:
        if self.rng.random() < 0.75 or not self.sessions or len(self.users) < 2:
            super().step()
            return
        with self.conn.transaction():
            self.chaos(self.rng.randrange(12))

    def _message(self, session: uuid.UUID, role: ev.Role, turn: uuid.UUID | None,
                 message: uuid.UUID | None = None) -> None:
        user = self.sessions.get(session, self.rng.choice(self.users))
        message = message or self._u()
        self._append(ev.session_stream(session), [ev.MessagePosted(
            session_id=session, message_id=message, user_id=user, role=role,
            content=f"{role} {self.rng.random():.5f}", turn_id=turn,
            metadata={"n": self.rng.randint(0, 9)} if self.rng.random() < 0.5 else {})])
        self.message_ids.append((message, session))
        if role == "user" and turn is not None:
            self.turns.append(turn)

    def chaos(self, kind: int) -> None:
        session = self.rng.choice(list(self.sessions))
        if kind == 0:  # to a session that does not exist: dropped
            self._message(self._u(), "user", self._u())
        elif kind == 1 and self.turns:  # ... but an assistant one still answers its turn
            self._message(self._u(), "assistant", self.rng.choice(self.turns))
        elif kind == 2:  # an answer to a turn that never was: parked
            self._message(session, "assistant", self._u())
        elif kind == 3 and self.message_ids:  # a message id already used: parked
            self._message(session, "user", self._u(), self.rng.choice(self.message_ids)[0])
        elif kind == 4 and self.turns:  # another session's turn: the first one keeps it
            self._message(session, "user", self.rng.choice(self.turns))
        elif kind == 5:  # a system message, no turn
            self._message(session, "system", None)
        elif kind == 6:  # a user id already registered: parked
            user = self.rng.choice(self.users)
            self._append(ev.user_stream(user), [ev.UserRegistered(user_id=user)])
        elif kind == 7 and self.emails:  # an e-mail already taken, at sign-up: parked
            user = self._u()
            self._append(ev.user_stream(user), [ev.UserRegistered(
                user_id=user, email=self.rng.choice(self.emails))], "user", user)
        elif kind == 8:  # a profile update to another user's e-mail (parked), or a new one
            user = self.rng.choice(self.users)
            email = (self.rng.choice(self.emails) if self.rng.random() < 0.5
                     else f"new-{self._u()}@x.test")
            self._append(ev.user_stream(user), [ev.UserProfileUpdated(
                user_id=user, email=email, avatar_url="a.png")])
            if email.startswith("new-"):
                self.emails.append(email)
        elif kind == 9:  # a session in a project that does not exist: parked, its
            ghost = self._u()  # messages dropped
            self._append(ev.session_stream(ghost), [ev.SessionStarted(
                session_id=ghost, user_id=self.rng.choice(self.users), project_id=self._u())],
                "session")
            self._message(ghost, "user", self._u())
        elif kind == 10:  # a link to a project that does not exist: parked
            user = self.rng.choice(self.users)
            self._append(ev.user_stream(user),
                         [ev.ProjectLinked(user_id=user, project_id=self._u())])
        else:  # a profile update of a user that does not exist: nothing
            self._append(ev.user_stream(self._u()), [ev.UserProfileUpdated(
                user_id=self._u(), display_name="nobody")])


PARKED = "SELECT position FROM parked_events WHERE parked AND projection = %s ORDER BY 1"


@pytest.mark.parametrize(("seed", "chunk", "live_batch"),
                         [(11, replay_bulk.CHUNK, 97), (12, 61, 1), (13, 500, 97)])
def test_the_bulk_build_equals_the_live_projection_on_random_events(
    fresh_db: tuple[str, psycopg.Connection[Any]], seed: int, chunk: int, live_batch: int,
) -> None:
    """Bulk-built tables against live-projected ones: deletes, renames, archives, profile
    updates, replies, imported legacy turns (linked to their session by both), events
    skipped and events parked."""
    url, conn = fresh_db
    add_legacy_rows(conn, projects=4, turns=3)
    work = ChaosWorkload(conn, seed=seed)
    work.run(800)
    import_legacy(url, out=io.StringIO())
    for session, owner in conn.execute(  # the imported sessions join the workload
            "SELECT (data->>'session_id')::uuid, (data->>'user_id')::uuid FROM events"
            " WHERE type = 'SessionStarted' AND metadata->>'source' = 'legacy-import'"):
        work.sessions[session] = owner
        work.open_turns[session] = []
    work.run(800)
    with conn.transaction():  # issue 17: moves and project renames, then posts
        for session in list(work.sessions)[3:9]:
            work.reorganize(session)
    for _ in range(20):
        with conn.transaction():
            work.post()
    with conn.transaction():  # user messages unarchive: some sessions end archived for sure
        for session in list(work.sessions)[:3]:
            work._append(ev.session_stream(session), [ev.SessionArchived(session_id=session)])
    # the rebuild copies the legacy turns before either side links them
    replay.prepare(conn, replay.READ_MODEL)

    built = replay.READ_MODEL.bulk_build
    assert built is not None
    read = built(conn, replay.READ_MODEL, None, chunk)
    project_all(url, timeout=600.0, batch_size=live_batch)  # a batch of 1: slow, loaded

    assert read == conn.execute("SELECT count(*) FROM events").fetchone()[0]
    live, rebuilt = snapshot(conn), snapshot(conn, replay.REBUILD_SCHEMA)
    for table in READ_MODEL_TABLES:
        assert rebuilt[table] == live[table], table
    assert describe(conn, replay.REBUILD_SCHEMA) == describe(conn, "public")  # loading undone
    parked = conn.execute(PARKED, (PROJECTION,)).fetchall()
    assert conn.execute(PARKED, (replay.READ_MODEL.rebuild_checkpoint,)).fetchall() == parked
    assert len(parked) > 10
    # the paths the comparison is about were taken
    assert any(r[2][:1] == "q" and r[5] is not None for r in live["turns"])  # legacy, linked
    assert conn.execute("SELECT count(*) FROM chat_messages m JOIN turns t USING (turn_id)"
                        " WHERE t.session_id <> m.session_id").fetchone()[0] > 0
    assert any(r[7] is False for r in live["sessions"])  # archived
    replay.cleanup(conn)
