-- The seed's functions. SECURITY INVOKER (the default): they run under the caller's RLS.

-- One UPDATE per statement, not per row: a bulk insert (replay, import) of n messages over
-- k sessions costs k row updates. Preview is the newest message's first 200 characters.
CREATE FUNCTION update_session_last_message() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sessions s
       SET message_count        = s.message_count + agg.n,
           last_seq             = greatest(s.last_seq, agg.max_seq),
           last_message_at      = greatest(s.last_message_at, agg.last_at),
           updated_at           = greatest(s.updated_at, agg.last_at),
           last_message_preview = CASE WHEN agg.max_seq >= s.last_seq
                                       THEN agg.preview ELSE s.last_message_preview END
      FROM (SELECT session_id,
                   count(*)        AS n,
                   max(seq)        AS max_seq,
                   max(created_at) AS last_at,
                   (array_agg(left(content, 200) ORDER BY seq DESC))[1] AS preview
              FROM new_messages
             GROUP BY session_id) agg
     WHERE s.session_id = agg.session_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER chat_messages_update_session
    AFTER INSERT ON chat_messages
    REFERENCING NEW TABLE AS new_messages
    FOR EACH STATEMENT EXECUTE FUNCTION update_session_last_message();

-- The caller's sessions, newest activity first. p_before_at/p_before_id continue after
-- the last row of the previous page (keyset: the same cost at any depth). Each branch is a
-- plain range on sessions_user_activity_idx: no "param IS NULL OR ..." that a generic plan
-- would have to turn into a filter.
CREATE FUNCTION get_user_sessions(
    p_user_id uuid,
    p_limit integer DEFAULT 10,
    p_before_at timestamptz DEFAULT NULL,
    p_before_id uuid DEFAULT NULL
) RETURNS TABLE (
    session_id uuid, title text, project_id uuid, created_at timestamptz,
    updated_at timestamptz, last_message_at timestamptz, is_active boolean,
    message_count integer, preview text
)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    IF p_before_at IS NULL THEN
        RETURN QUERY
            SELECT s.session_id, s.title, s.project_id, s.created_at, s.updated_at,
                   s.last_message_at, s.is_active, s.message_count, s.last_message_preview
              FROM sessions s
             WHERE s.user_id = p_user_id
             ORDER BY s.last_message_at DESC, s.session_id DESC
             LIMIT p_limit;
    ELSIF p_before_id IS NULL THEN
        RETURN QUERY
            SELECT s.session_id, s.title, s.project_id, s.created_at, s.updated_at,
                   s.last_message_at, s.is_active, s.message_count, s.last_message_preview
              FROM sessions s
             WHERE s.user_id = p_user_id AND s.last_message_at < p_before_at
             ORDER BY s.last_message_at DESC, s.session_id DESC
             LIMIT p_limit;
    ELSE
        RETURN QUERY
            SELECT s.session_id, s.title, s.project_id, s.created_at, s.updated_at,
                   s.last_message_at, s.is_active, s.message_count, s.last_message_preview
              FROM sessions s
             WHERE s.user_id = p_user_id
               AND (s.last_message_at, s.session_id) < (p_before_at, p_before_id)
             ORDER BY s.last_message_at DESC, s.session_id DESC
             LIMIT p_limit;
    END IF;
END;
$$;

-- A page of a session's messages in chronological order, by offset (the seed's form).
CREATE FUNCTION get_session_messages(
    p_session_id uuid,
    p_limit integer DEFAULT 50,
    p_offset integer DEFAULT 0
) RETURNS TABLE (
    message_id uuid, role text, content text, metadata jsonb,
    created_at timestamptz, turn_id uuid, seq bigint
)
LANGUAGE sql STABLE AS $$
    SELECT m.message_id, m.role, m.content, m.metadata, m.created_at, m.turn_id, m.seq
      FROM chat_messages m
     WHERE m.session_id = p_session_id
     ORDER BY m.seq
     LIMIT p_limit OFFSET p_offset
$$;

-- The keyset form: messages after (or before) a sequence number, in chronological order.
-- Each branch is one range walk of chat_messages_session_seq_key whatever the depth, and
-- stays one under a generic plan (no "param IS NULL OR ..." conditions).
CREATE FUNCTION get_session_messages_keyset(
    p_session_id uuid,
    p_limit integer DEFAULT 50,
    p_after_seq bigint DEFAULT NULL,
    p_before_seq bigint DEFAULT NULL
) RETURNS TABLE (
    message_id uuid, role text, content text, metadata jsonb,
    created_at timestamptz, turn_id uuid, seq bigint
)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    after_seq  bigint := coalesce(p_after_seq, 0);
    before_seq bigint := coalesce(p_before_seq, 9223372036854775807);
BEGIN
    IF p_before_seq IS NOT NULL AND p_after_seq IS NULL THEN
        -- the newest p_limit messages before p_before_seq: walk backwards, return in order
        RETURN QUERY
            SELECT page.* FROM (
                SELECT m.message_id, m.role, m.content, m.metadata, m.created_at, m.turn_id, m.seq
                  FROM chat_messages m
                 WHERE m.session_id = p_session_id AND m.seq < before_seq
                 ORDER BY m.seq DESC
                 LIMIT p_limit) page
             ORDER BY page.seq;
    ELSE
        RETURN QUERY
            SELECT m.message_id, m.role, m.content, m.metadata, m.created_at, m.turn_id, m.seq
              FROM chat_messages m
             WHERE m.session_id = p_session_id AND m.seq > after_seq AND m.seq < before_seq
             ORDER BY m.seq
             LIMIT p_limit;
    END IF;
END;
$$;
