"""The read-model projection rules, once: events → row changes for each table.

Both writers use this fold and nothing else decides what a row holds:
- the live projector (workers/projector.py) writes a batch's changes with a few set-based
  statements (INSERT ... SELECT FROM unnest, UPDATE ... FROM unnest, DELETE ... ANY);
- the replay (workers/replay_bulk.py) writes a chunk's changes with COPY into the tables it
  builds aside, and the same UPDATE/DELETE statements.

Why a fold in Python rather than rules in SQL: a batch's events depend on each other (a
session started, then posted to, renamed, deleted; an e-mail freed then taken; a turn
linked then answered). Set-based SQL over a staging table would have to resolve that order
in SQL for every rule, and the replay would lose COPY. A fold resolves the order in memory
and hands each writer plain rows. The one rule kept in SQL is the session's counters
(message_count, last_seq, preview, last_message_at, updated_at after a message): the
seed's statement trigger update_session_last_message() keeps them on every insert into
chat_messages, live and during the replay's COPY alike, so they too are defined once.

State. The fold starts from `Known`: the rows the events touch, looked up by id before the
fold (workers/fold_sql.py `load_known`), so memory is bounded by the batch or chunk, never
by the history: nothing is carried from one chunk to the next.

Rounds. The writers apply a round's changes in one fixed order (deletes; users; dossier
and links; sessions; turns; messages, which fire the trigger; answers to turns). That order
equals applying the events one by one except when a rename or archive follows a message of
the same session with a later time (the trigger's greatest() would then win over the
rename's time): the fold then closes the round and starts another, written after it.

The rules (what the seed's tables say about each event):
- UserRegistered inserts a user; a taken user_id or e-mail refuses the event.
  UserProfileUpdated sets the fields it carries and updated_at; a missing user is a no-op,
  an e-mail another user has refuses it.
- ProjectCreated inserts the dossier row and links the owner; a taken project id or an
  unknown owner refuses it. ProjectLinked links once (again: a no-op); an unknown user or
  project refuses it.
- SessionStarted inserts the session; a taken id, an unknown user or project refuses it.
  SessionRenamed / SessionArchived / SessionUnarchived set title / is_active and updated_at
  (no-op when the session is gone); SessionMoved sets project_id and updated_at (an unknown
  project refuses it; the session's turns keep the project they were asked in);
  ProjectRenamed sets the dossier row's title (and description when given) and updated_at;
  a user message to an archived session makes it active
  again (is_active, updated_at), as ChatGPT does. SessionDeleted deletes the session, its
  messages and its turns; other sessions' messages that named one of those turns keep the
  message with turn_id NULL.
- MessagePosted to a session that does not exist is dropped, except that an assistant
  message still answers its turn. Otherwise: a user message with a turn_id inserts the turn,
  or links a legacy turn (one with no session: it becomes exactly the fresh row), or leaves
  a turn some session already has; the message gets the session's next seq and its owner;
  a taken message_id, or a turn_id that names no turn, refuses the event; an assistant
  message with a turn_id fills that turn's assistant_text (the last answer wins).
- AssistantReplyFailed changes no row (the live stream told the client).
- UserDeleted (after a SessionDeleted for each of the user's sessions) deletes the user's
  remaining turns and sessions, the projects no one else is linked to, and the user with
  its links; a missing user is a no-op. It is a round of its own.
A refused event changes nothing; the caller retries or parks it.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from services.core import events as ev

Row = list[Any]
_MISSING: Any = object()
TURN_ANSWER = 3  # assistant_text in a turns row
MESSAGE_TURN = 2  # turn_id in a chat_messages row


class EventRefused(Exception):
    """An event the rules refuse (the database would refuse its rows)."""


@dataclass(slots=True)
class SessionState:
    user_id: uuid.UUID
    project_id: uuid.UUID
    title: str | None
    is_active: bool
    last_seq: int
    turns: list[uuid.UUID] = field(default_factory=list)  # known ones it owns
    messages: list[uuid.UUID] = field(default_factory=list)  # known ones it holds


@dataclass
class Needs:
    """The ids a batch touches: what `load_known` looks up."""

    users: set[uuid.UUID] = field(default_factory=set)
    emails: set[str] = field(default_factory=set)
    projects: set[uuid.UUID] = field(default_factory=set)
    links: set[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=set)
    sessions: set[uuid.UUID] = field(default_factory=set)
    turns: set[uuid.UUID] = field(default_factory=set)
    messages: set[uuid.UUID] = field(default_factory=set)


def needs(events: Iterable[ev.Event]) -> Needs:
    n = Needs()
    for e in events:
        match e:
            case ev.MessagePosted():
                n.sessions.add(e.session_id)
                n.messages.add(e.message_id)
                if e.turn_id is not None:
                    n.turns.add(e.turn_id)
            case ev.UserRegistered() | ev.UserProfileUpdated():
                n.users.add(e.user_id)
                if e.email is not None:
                    n.emails.add(e.email)
            case ev.ProjectCreated():
                n.projects.add(e.project_id)
                n.users.add(e.owner_id)
            case ev.ProjectLinked():
                n.users.add(e.user_id)
                n.projects.add(e.project_id)
                n.links.add((e.user_id, e.project_id))
            case ev.SessionStarted():
                n.sessions.add(e.session_id)
                n.users.add(e.user_id)
                n.projects.add(e.project_id)
            case ev.SessionRenamed() | ev.SessionArchived() | ev.SessionDeleted():
                n.sessions.add(e.session_id)
            case ev.UserDeleted():
                n.users.add(e.user_id)
            # issue 17
            case ev.SessionUnarchived():
                n.sessions.add(e.session_id)
            case ev.ProjectRenamed():
                n.projects.add(e.project_id)
            case ev.SessionMoved():
                n.sessions.add(e.session_id)
                n.projects.add(e.project_id)
    return n


@dataclass
class Known:
    """The rows a batch touches, as the tables hold them before it."""

    users: dict[uuid.UUID, Row] = field(default_factory=dict)  # id, email, name, avatar
    projects: set[uuid.UUID] = field(default_factory=set)
    links: set[tuple[uuid.UUID, uuid.UUID]] = field(default_factory=set)
    sessions: dict[uuid.UUID, SessionState] = field(default_factory=dict)
    turns: dict[uuid.UUID, uuid.UUID | None] = field(default_factory=dict)  # → its session
    messages: dict[uuid.UUID, uuid.UUID] = field(default_factory=dict)  # → its session


@dataclass
class Round:
    """Row changes written together, in the order of the fields (see the docstring)."""

    deleted_sessions: list[uuid.UUID] = field(default_factory=list)
    deleted_turns: list[uuid.UUID] = field(default_factory=list)  # legacy ones linked here
    deleted_users: list[uuid.UUID] = field(default_factory=list)  # a round of their own
    users_updated: dict[uuid.UUID, Row] = field(default_factory=dict)
    users_new: dict[uuid.UUID, Row] = field(default_factory=dict)
    dossier_new: list[Row] = field(default_factory=list)
    links_new: list[Row] = field(default_factory=list)
    sessions_new: dict[uuid.UUID, Row] = field(default_factory=dict)
    sessions_updated: dict[uuid.UUID, Row] = field(default_factory=dict)
    turns_new: dict[uuid.UUID, Row] = field(default_factory=dict)
    turns_linked: dict[uuid.UUID, Row] = field(default_factory=dict)
    messages: dict[uuid.UUID, list[Row]] = field(default_factory=dict)  # by session
    answers: dict[uuid.UUID, str] = field(default_factory=dict)  # turns already written
    # issue 17, written after sessions_updated
    projects_updated: dict[uuid.UUID, Row] = field(default_factory=dict)
    sessions_moved: dict[uuid.UUID, Row] = field(default_factory=dict)
    # the fold's bookkeeping, not written
    cross_refs: dict[uuid.UUID, list[Row]] = field(default_factory=dict)  # another's turn
    last_message_at: dict[uuid.UUID, dt.datetime] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any((self.deleted_sessions, self.deleted_turns, self.deleted_users,
                    self.users_updated,
                    self.users_new, self.dossier_new, self.links_new, self.sessions_new,
                    self.sessions_updated, self.turns_new, self.turns_linked, self.messages,
                    self.answers, self.projects_updated, self.sessions_moved))


class ReadModelFold:
    """Folds events, in (txid, position) order, into rounds of row changes."""

    def __init__(self, known: Known) -> None:
        self.k = known
        self.emails = {row[1]: uid for uid, row in known.users.items() if row[1] is not None}
        self.done: list[Round] = []
        self.round = Round()
    def apply(self, event: ev.Event, at: dt.datetime) -> str | None:
        """Folds one event; returns why it is refused (then nothing changed), else None."""
        return _RULES[type(event)](self, event, at)

    def rounds(self) -> list[Round]:
        """Every round so far, the open one closed."""
        self._cut()
        return [r for r in self.done if r]

    def _cut(self) -> None:
        self.done.append(self.round)
        self.round = Round()

    # Users and projects --------------------------------------------------------------------

    def _user_deleted(self, e: ev.UserDeleted, _at: dt.datetime) -> str | None:
        # A round of its own, after everything before it: deletes go first in a round.
        row = self.k.users.pop(e.user_id, None)
        if row is None:
            return None
        if row[1] is not None:
            self.emails.pop(row[1], None)
        self.k.links = {link for link in self.k.links if link[0] != e.user_id}
        for sid in [s for s, state in self.k.sessions.items() if state.user_id == e.user_id]:
            del self.k.sessions[sid]
        if self.round:
            self._cut()
        self.round.deleted_users.append(e.user_id)
        self._cut()
        return None

    def _user_registered(self, e: ev.UserRegistered, at: dt.datetime) -> str | None:
        if e.user_id in self.k.users:
            return f"duplicate user {e.user_id}"
        if e.email is not None and e.email in self.emails:
            return "duplicate email"
        self.k.users[e.user_id] = [e.user_id, e.email, e.display_name, e.avatar_url]
        self.round.users_new[e.user_id] = [e.user_id, e.email, e.display_name, e.avatar_url,
                                           at, at]
        if e.email is not None:
            self.emails[e.email] = e.user_id
        return None

    def _profile_updated(self, e: ev.UserProfileUpdated, at: dt.datetime) -> str | None:
        row = self.k.users.get(e.user_id)
        if row is None:
            return None  # no row to update
        if e.email is not None and e.email != row[1]:
            if self.emails.get(e.email, e.user_id) != e.user_id:
                return "duplicate email"
            self.emails.pop(row[1], None)
            self.emails[e.email] = e.user_id
            row[1] = e.email
        if e.display_name is not None:
            row[2] = e.display_name
        if e.avatar_url is not None:
            row[3] = e.avatar_url
        new = self.round.users_new.get(e.user_id)
        if new is not None:
            new[1:4] = row[1:4]
            new[5] = at
        else:
            self.round.users_updated[e.user_id] = [*row, at]
        return None

    def _project_created(self, e: ev.ProjectCreated, at: dt.datetime) -> str | None:
        if e.project_id in self.k.projects:
            return f"duplicate project {e.project_id}"
        if e.owner_id not in self.k.users:
            return f"user {e.owner_id} does not exist"
        self.k.projects.add(e.project_id)
        self.k.links.add((e.owner_id, e.project_id))
        self.round.dossier_new.append([e.project_id, e.title or None, at, at, e.description])
        self.round.links_new.append([e.owner_id, e.project_id, at])
        return None

    def _project_linked(self, e: ev.ProjectLinked, at: dt.datetime) -> str | None:
        link = (e.user_id, e.project_id)
        if link in self.k.links:
            return None  # linked once
        if e.user_id not in self.k.users:
            return f"user {e.user_id} does not exist"
        if e.project_id not in self.k.projects:
            return f"project {e.project_id} does not exist"
        self.k.links.add(link)
        self.round.links_new.append([e.user_id, e.project_id, at])
        return None

    # Sessions ------------------------------------------------------------------------------

    def _session_started(self, e: ev.SessionStarted, at: dt.datetime) -> str | None:
        if e.session_id in self.k.sessions:
            return f"duplicate session {e.session_id}"
        if e.user_id not in self.k.users:
            return f"user {e.user_id} does not exist"
        if e.project_id not in self.k.projects:
            return f"project {e.project_id} does not exist"
        self.k.sessions[e.session_id] = SessionState(e.user_id, e.project_id, e.title, True, 0)
        self.round.sessions_new[e.session_id] = [e.session_id, e.user_id, e.project_id,
                                                 e.title, at, at, at, True]
        return None

    def _session_changed(self, sid: uuid.UUID, at: dt.datetime, title: str | None,
                         archived: bool | None) -> None:
        """archived None: a rename (title); True/False: an archive/unarchive."""
        s = self.k.sessions.get(sid)
        if s is None:
            return  # no row to update
        last = self.round.last_message_at.get(sid)
        if (last is not None and last > at) or sid in self.round.sessions_moved:
            # the trigger must see this round's messages before the change (and a move,
            # written after the round's session updates, must come before it)
            self._cut()
        if archived is None:
            s.title = title
        else:
            s.is_active = not archived
        new = self.round.sessions_new.get(sid)
        if new is not None:
            new[3], new[5], new[7] = s.title, at, s.is_active
        else:
            self.round.sessions_updated[sid] = [sid, s.title, s.is_active, at]

    def _session_renamed(self, e: ev.SessionRenamed, at: dt.datetime) -> str | None:
        self._session_changed(e.session_id, at, e.title, archived=None)
        return None

    def _session_archived(self, e: ev.SessionArchived, at: dt.datetime) -> str | None:
        self._session_changed(e.session_id, at, None, archived=True)
        return None

    def _session_deleted(self, e: ev.SessionDeleted, _at: dt.datetime) -> str | None:
        sid = e.session_id
        s = self.k.sessions.pop(sid, None)
        if s is None:
            return None
        r = self.round
        for turn in s.turns:
            if self.k.turns.get(turn, _MISSING) != sid:
                continue  # no longer its turn
            del self.k.turns[turn]
            r.turns_new.pop(turn, None)
            if r.turns_linked.pop(turn, None) is not None:
                r.deleted_turns.append(turn)  # written as a legacy turn: deleted by id
            r.answers.pop(turn, None)
            for message in r.cross_refs.pop(turn, ()):
                message[MESSAGE_TURN] = None  # as ON DELETE SET NULL would
        for message_id in s.messages:
            if self.k.messages.get(message_id) == sid:
                del self.k.messages[message_id]
        r.messages.pop(sid, None)
        r.last_message_at.pop(sid, None)
        r.sessions_updated.pop(sid, None)
        if r.sessions_new.pop(sid, None) is None:
            r.deleted_sessions.append(sid)
        return None

    # Messages and turns --------------------------------------------------------------------

    def _message_posted(self, e: ev.MessagePosted, at: dt.datetime) -> str | None:
        turn, sid = e.turn_id, e.session_id
        s = self.k.sessions.get(sid)
        if s is None:  # no session to write into; an answer still reaches its turn
            if turn is not None and e.role == "assistant":
                self._answer(turn, e.content)
            return None
        if e.message_id in self.k.messages:
            return f"duplicate message_id {e.message_id}"
        owner = self.k.turns.get(turn, _MISSING) if turn is not None else None
        r = self.round
        if e.role == "user" and turn is not None and (owner is _MISSING or owner is None):
            fresh = [turn, s.project_id, e.content, None, at, sid, s.user_id]
            if owner is None:  # a legacy turn: linked, and then exactly the fresh row
                r.turns_linked[turn] = fresh
                r.answers.pop(turn, None)
            else:
                r.turns_new[turn] = fresh
            self.k.turns[turn] = owner = sid
            s.turns.append(turn)
        elif owner is _MISSING:
            return f"turn {turn} does not exist"
        s.last_seq += 1
        message = [e.message_id, sid, turn, e.role, e.content, e.metadata or None, at, at,
                   s.user_id, s.last_seq]
        r.messages.setdefault(sid, []).append(message)
        self.k.messages[e.message_id] = sid
        s.messages.append(e.message_id)
        if turn is not None and owner != sid:
            r.cross_refs.setdefault(turn, []).append(message)
        last = r.last_message_at.get(sid)
        if last is None or at > last:
            r.last_message_at[sid] = at
        if turn is not None and e.role == "assistant":
            self._answer(turn, e.content)
        if not s.is_active and e.role == "user":
            self._unarchive(sid, s, at)  # issue 17: continuing a session unarchives it
        return None

    def _answer(self, turn: uuid.UUID, content: str) -> None:
        pending = self.round.turns_new.get(turn) or self.round.turns_linked.get(turn)
        if pending is not None:
            pending[TURN_ANSWER] = content
        elif turn in self.k.turns:
            self.round.answers[turn] = content

    # Issue 17: archive ----------------------------------------------------------------------

    def _session_unarchived(self, e: ev.SessionUnarchived, at: dt.datetime) -> str | None:
        self._session_changed(e.session_id, at, None, archived=False)
        return None

    def _unarchive(self, sid: uuid.UUID, s: SessionState, at: dt.datetime) -> None:
        """A user message to an archived session: active again. Written before the round's
        messages, whose trigger then moves updated_at on to the newest message."""
        s.is_active = True
        new = self.round.sessions_new.get(sid)
        if new is not None:
            new[7] = True
            return
        pending = self.round.sessions_updated.get(sid)
        if pending is not None:
            pending[2] = True
        else:
            self.round.sessions_updated[sid] = [sid, s.title, True, at]

    # Issue 17: projects ---------------------------------------------------------------------

    def _project_renamed(self, e: ev.ProjectRenamed, at: dt.datetime) -> str | None:
        pid = e.project_id
        if pid not in self.k.projects:
            return None  # no row to update
        for row in self.round.dossier_new:
            if row[0] == pid:
                row[1], row[3] = e.title or None, at
                if e.description is not None:
                    row[4] = e.description
                return None
        pending = self.round.projects_updated.get(pid)
        description = e.description if e.description is not None else (
            pending[2] if pending is not None else None)
        self.round.projects_updated[pid] = [pid, e.title or None, description, at]
        return None

    def _session_moved(self, e: ev.SessionMoved, at: dt.datetime) -> str | None:
        sid = e.session_id
        s = self.k.sessions.get(sid)
        if s is None:
            return None  # no row to update
        if e.project_id not in self.k.projects:
            return f"project {e.project_id} does not exist"
        last = self.round.last_message_at.get(sid)
        if last is not None and last > at:
            self._cut()  # as for a rename: the trigger's updated_at must not win
        s.project_id = e.project_id
        new = self.round.sessions_new.get(sid)
        if new is not None:
            new[2], new[5] = e.project_id, at
        else:
            self.round.sessions_moved[sid] = [sid, e.project_id, at]
        return None


# Unbound, at module level: a dict of bound methods on the instance would be a reference
# cycle, and the replay folds with the cyclic garbage collector off.
_RULES: dict[type, Callable[[ReadModelFold, Any, dt.datetime], str | None]] = {
    ev.MessagePosted: ReadModelFold._message_posted,
    ev.UserRegistered: ReadModelFold._user_registered,
    ev.UserProfileUpdated: ReadModelFold._profile_updated,
    ev.ProjectCreated: ReadModelFold._project_created,
    ev.ProjectLinked: ReadModelFold._project_linked,
    ev.SessionStarted: ReadModelFold._session_started,
    ev.SessionRenamed: ReadModelFold._session_renamed,
    ev.SessionArchived: ReadModelFold._session_archived,
    ev.SessionDeleted: ReadModelFold._session_deleted,
    ev.AssistantReplyFailed: lambda _fold, _e, _at: None,
    ev.UserDeleted: ReadModelFold._user_deleted,
    # issue 17
    ev.SessionUnarchived: ReadModelFold._session_unarchived,
    ev.ProjectRenamed: ReadModelFold._project_renamed,
    ev.SessionMoved: ReadModelFold._session_moved,
}
