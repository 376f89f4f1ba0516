-- Erasing an account (DELETE /api/v1/users/me): like purge_stream_content (0006), and also
-- the personal fields of the user's own events (e-mail, name, avatar). The second narrow
-- exception to append-only; only the owner (the command service's user) may run it.
CREATE FUNCTION purge_personal_data(p_stream_id text, p_before_version bigint)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE n integer;
BEGIN
    PERFORM set_config('chat.purging', 'on', true);
    UPDATE events
       SET data = (data - ARRAY['content', 'title', 'error', 'email', 'display_name',
                                'avatar_url']) || '{"redacted": true}'::jsonb
     WHERE stream_id = p_stream_id
       AND version < p_before_version
       AND (data ?| ARRAY['content', 'title', 'error', 'email', 'display_name', 'avatar_url']
            OR NOT (data ? 'redacted'));
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('chat.purging', 'off', true);
    RETURN n;
END;
$$;

REVOKE ALL ON FUNCTION purge_personal_data(text, bigint) FROM PUBLIC;
