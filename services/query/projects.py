"""The caller's projects (issue 17): newest activity first, keyset-paged by an opaque cursor
(the same encoding as the session list's)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from psycopg import AsyncConnection
from psycopg.rows import class_row

from services.query.sessions import Cursor, encode_cursor

MAX_LIMIT = 100
DEFAULT_LIMIT = 20

# Under RLS: user_projects and sessions show the caller's rows, dossier the linked projects.
LIST_PROJECTS = """
SELECT project_id, title, description, created_at, updated_at, session_count, last_activity
  FROM list_user_projects(%s, %s, %s, %s)
"""


class ProjectSummary(msgspec.Struct, frozen=True, kw_only=True):
    project_id: UUID
    title: str | None
    description: str | None
    created_at: datetime | None
    updated_at: datetime | None
    session_count: int
    last_activity: datetime


class ProjectPage(msgspec.Struct, frozen=True, kw_only=True):
    projects: list[ProjectSummary]
    # Pass as ?before= for the next page; null when there is none.
    next_cursor: str | None


async def list_projects(
    conn: AsyncConnection[Any], user_id: UUID, limit: int, before: Cursor | None
) -> ProjectPage:
    args = (user_id, limit + 1, before.last_message_at if before else None,
            before.session_id if before else None)
    async with conn.cursor(row_factory=class_row(ProjectSummary)) as cur:
        await cur.execute(LIST_PROJECTS, args)
        rows = await cur.fetchall()
    page, more = rows[:limit], len(rows) > limit
    next_cursor = (encode_cursor(Cursor(page[-1].last_activity, page[-1].project_id))
                   if more else None)
    return ProjectPage(projects=page, next_cursor=next_cursor)
