-- Issue 17: the session list filtered by archive state and project. The seed's
-- get_user_sessions stays as it is (every session); this one is what the API lists.
-- p_archived false: the active sessions (is_active not false); true: the archived ones.
-- p_project_id NULL: every project. The same keyset branches as get_user_sessions, each a
-- range walk of sessions_user_activity_idx with the two conditions as filters.
CREATE FUNCTION list_user_sessions(
    p_user_id uuid,
    p_limit integer DEFAULT 10,
    p_before_at timestamptz DEFAULT NULL,
    p_before_id uuid DEFAULT NULL,
    p_archived boolean DEFAULT false,
    p_project_id uuid DEFAULT NULL
) RETURNS TABLE (
    session_id uuid, title text, project_id uuid, created_at timestamptz,
    updated_at timestamptz, last_message_at timestamptz, is_active boolean,
    message_count integer, preview text
)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    before_at timestamptz := coalesce(p_before_at, 'infinity');
    before_id uuid := coalesce(p_before_id, 'ffffffff-ffff-ffff-ffff-ffffffffffff');
BEGIN
    IF p_before_id IS NULL THEN
        RETURN QUERY
            SELECT s.session_id, s.title, s.project_id, s.created_at, s.updated_at,
                   s.last_message_at, s.is_active, s.message_count, s.last_message_preview
              FROM sessions s
             WHERE s.user_id = p_user_id AND s.last_message_at < before_at
               AND (s.is_active IS FALSE) = p_archived
               AND (p_project_id IS NULL OR s.project_id = p_project_id)
             ORDER BY s.last_message_at DESC, s.session_id DESC
             LIMIT p_limit;
    ELSE
        RETURN QUERY
            SELECT s.session_id, s.title, s.project_id, s.created_at, s.updated_at,
                   s.last_message_at, s.is_active, s.message_count, s.last_message_preview
              FROM sessions s
             WHERE s.user_id = p_user_id
               AND (s.last_message_at, s.session_id) < (before_at, before_id)
               AND (s.is_active IS FALSE) = p_archived
               AND (p_project_id IS NULL OR s.project_id = p_project_id)
             ORDER BY s.last_message_at DESC, s.session_id DESC
             LIMIT p_limit;
    END IF;
END;
$$;

GRANT EXECUTE ON FUNCTION list_user_sessions(uuid, integer, timestamptz, uuid, boolean, uuid)
    TO chat_query;
