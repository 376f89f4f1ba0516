-- Issue 17: the caller's projects (through user_projects), with how many of the caller's
-- sessions each holds and its last activity (the newest session activity, else when it was
-- created); newest activity first, keyset on (last_activity, project_id). A user has few
-- projects: the aggregate runs over that user's sessions (sessions_user_activity_idx).
CREATE FUNCTION list_user_projects(
    p_user_id uuid,
    p_limit integer DEFAULT 20,
    p_before_at timestamptz DEFAULT NULL,
    p_before_id uuid DEFAULT NULL
) RETURNS TABLE (
    project_id uuid, title text, description text, created_at timestamptz,
    updated_at timestamptz, session_count integer, last_activity timestamptz
)
LANGUAGE sql STABLE AS $$
    WITH mine AS (
        SELECT d.project_id, d.title, d.description, d.created_at, d.updated_at,
               coalesce(c.n, 0)::integer AS session_count,
               greatest(coalesce(c.last_at, d.created_at), d.created_at) AS last_activity
          FROM user_projects up
          JOIN dossier d ON d.project_id = up.project_id
          LEFT JOIN (SELECT s.project_id, count(*) AS n, max(s.last_message_at) AS last_at
                       FROM sessions s WHERE s.user_id = p_user_id
                      GROUP BY s.project_id) c ON c.project_id = up.project_id
         WHERE up.user_id = p_user_id
    )
    SELECT * FROM mine
     WHERE (mine.last_activity, mine.project_id)
           < (coalesce(p_before_at, 'infinity'),
              coalesce(p_before_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff'))
     ORDER BY mine.last_activity DESC, mine.project_id DESC
     LIMIT p_limit
$$;

GRANT EXECUTE ON FUNCTION list_user_projects(uuid, integer, timestamptz, uuid) TO chat_query;
