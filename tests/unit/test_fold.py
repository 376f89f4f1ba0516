"""The read-model fold (workers/fold.py) on its own: the row changes a batch of events
becomes, and when it must split them into rounds. Writers and tables are tested against
PostgreSQL in tests/integration/test_replay.py and test_projection.py."""

from __future__ import annotations

import datetime as dt
import uuid

from services.core import events as ev
from workers.fold import Known, ReadModelFold, SessionState

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def at(seconds: int) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def session_known() -> tuple[Known, uuid.UUID, uuid.UUID]:
    user, project, session = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    known = Known(users={user: [user, None, None, None]}, projects={project},
                  sessions={session: SessionState(user, project, "t", True, 5)})
    return known, user, session


def message(session: uuid.UUID, user: uuid.UUID, turn: uuid.UUID | None = None,
            role: ev.Role = "user") -> ev.MessagePosted:
    return ev.MessagePosted(session_id=session, message_id=uuid.uuid4(), user_id=user,
                            role=role, content="hi", turn_id=turn)


def test_messages_continue_the_sessions_sequence_and_create_their_turns() -> None:
    known, user, session = session_known()
    fold = ReadModelFold(known)
    turn = uuid.uuid4()
    assert fold.apply(message(session, user, turn), at(1)) is None
    assert fold.apply(message(session, user, turn, "assistant"), at(2)) is None
    (changes,) = fold.rounds()
    assert [m[9] for m in changes.messages[session]] == [6, 7]
    assert changes.turns_new[turn][3] == "hi"  # answered in the same round


def test_a_rename_after_a_later_message_of_its_session_starts_a_new_round() -> None:
    """The writers insert messages (whose trigger keeps updated_at = greatest(...)) after
    a round's session updates: a rename timed before a message it follows must come after."""
    known, user, session = session_known()
    fold = ReadModelFold(known)
    fold.apply(message(session, user), at(10))
    fold.apply(ev.SessionRenamed(session_id=session, title="new"), at(5))
    first, second = fold.rounds()
    assert session in first.messages and not first.sessions_updated
    assert second.sessions_updated[session] == [session, "new", True, at(5)]


def test_a_rename_in_time_order_stays_in_the_round() -> None:
    known, user, session = session_known()
    fold = ReadModelFold(known)
    fold.apply(message(session, user), at(1))
    fold.apply(ev.SessionRenamed(session_id=session, title="new"), at(2))
    assert len(fold.rounds()) == 1


def test_deleting_a_session_unlinks_other_sessions_pending_messages_from_its_turns() -> None:
    known, user, session = session_known()
    other = uuid.uuid4()
    known.sessions[other] = SessionState(user, next(iter(known.projects)), None, True, 0)
    fold = ReadModelFold(known)
    turn = uuid.uuid4()
    fold.apply(message(session, user, turn), at(1))
    fold.apply(message(other, user, turn, "assistant"), at(2))
    fold.apply(ev.SessionDeleted(session_id=session), at(3))
    (changes,) = fold.rounds()
    assert session not in changes.messages and turn not in changes.turns_new
    assert changes.messages[other][0][2] is None
    assert changes.deleted_sessions == [session]


def test_a_refused_event_changes_nothing() -> None:
    known, user, session = session_known()
    fold = ReadModelFold(known)
    posted = message(session, user)
    assert fold.apply(posted, at(1)) is None
    assert fold.apply(posted, at(2)) is not None  # the same message id again
    assert fold.apply(message(session, user, uuid.uuid4(), "assistant"), at(3)) is not None
    (changes,) = fold.rounds()
    assert len(changes.messages[session]) == 1
    assert known.sessions[session].last_seq == 6


# --- issue 17: archive --------------------------------------------------------------------


def test_archive_and_unarchive_set_is_active() -> None:
    known, _user, session = session_known()
    fold = ReadModelFold(known)
    fold.apply(ev.SessionArchived(session_id=session), at(1))
    (changes,) = fold.rounds()
    assert changes.sessions_updated[session] == [session, "t", False, at(1)]
    fold = ReadModelFold(known)
    fold.apply(ev.SessionUnarchived(session_id=session), at(2))
    (changes,) = fold.rounds()
    assert changes.sessions_updated[session] == [session, "t", True, at(2)]


def test_a_user_message_to_an_archived_session_unarchives_it() -> None:
    known, user, session = session_known()
    known.sessions[session].is_active = False
    fold = ReadModelFold(known)
    fold.apply(message(session, user, role="assistant"), at(1))
    assert not fold.rounds()[0].sessions_updated  # an assistant reply leaves it archived
    fold = ReadModelFold(known)
    fold.apply(message(session, user), at(2))
    (changes,) = fold.rounds()
    assert changes.sessions_updated[session][2] is True
    assert known.sessions[session].is_active


def test_archiving_and_posting_in_one_round_leave_the_session_active() -> None:
    known, user, session = session_known()
    fold = ReadModelFold(known)
    fold.apply(ev.SessionArchived(session_id=session), at(1))
    fold.apply(message(session, user), at(2))
    (changes,) = fold.rounds()
    assert changes.sessions_updated[session][2] is True


# --- issue 17: projects -------------------------------------------------------------------


def test_a_moved_session_gets_the_new_project_and_an_unknown_project_refuses_the_move() -> None:
    known, user, session = session_known()
    target = uuid.uuid4()
    known.projects.add(target)
    fold = ReadModelFold(known)
    assert fold.apply(ev.SessionMoved(session_id=session, project_id=uuid.uuid4()), at(1))
    assert fold.apply(ev.SessionMoved(session_id=session, project_id=target), at(2)) is None
    fold.apply(message(session, user, uuid.uuid4()), at(3))
    (changes,) = fold.rounds()
    assert changes.sessions_moved[session] == [session, target, at(2)]
    assert next(iter(changes.turns_new.values()))[1] == target  # new turns: the new project


def test_a_rename_after_a_move_of_the_same_session_starts_a_new_round() -> None:
    """Moves are written after the round's session updates: a later rename must follow."""
    known, _user, session = session_known()
    target = uuid.uuid4()
    known.projects.add(target)
    fold = ReadModelFold(known)
    fold.apply(ev.SessionMoved(session_id=session, project_id=target), at(1))
    fold.apply(ev.SessionRenamed(session_id=session, title="new"), at(2))
    first, second = fold.rounds()
    assert session in first.sessions_moved and session in second.sessions_updated


def test_a_project_renamed_in_the_round_it_was_created_is_inserted_renamed() -> None:
    user, project = uuid.uuid4(), uuid.uuid4()
    fold = ReadModelFold(Known(users={user: [user, None, None, None]}))
    fold.apply(ev.ProjectCreated(project_id=project, owner_id=user, title="a",
                                 description="d"), at(1))
    fold.apply(ev.ProjectRenamed(project_id=project, title="b"), at(2))
    (changes,) = fold.rounds()
    assert changes.dossier_new == [[project, "b", at(1), at(2), "d"]]
    fold = ReadModelFold(Known(projects={project}))
    fold.apply(ev.ProjectRenamed(project_id=project, title="c", description="e"), at(3))
    fold.apply(ev.ProjectRenamed(project_id=project, title="f"), at(4))
    (changes,) = fold.rounds()
    assert changes.projects_updated[project] == [project, "f", "e", at(4)]
