-- Events are append-only. The single exception is purge_stream_content(): deleting a
-- session erases what the user wrote from every earlier event of its stream, so neither a
-- replay nor an analytics consumer can bring it back. Deleted tuples still linger in WAL,
-- replicas and backups until those rotate (docs/data-erasure.md).
CREATE FUNCTION events_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND current_setting('chat.purging', true) = 'on' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'events are append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_append_only();

-- Redacts the user-written fields (message content, titles) of a stream's events before
-- p_before_version, marking each redacted event. Returns how many events it changed.
CREATE FUNCTION purge_stream_content(p_stream_id text, p_before_version bigint)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE n integer;
BEGIN
    PERFORM set_config('chat.purging', 'on', true);
    UPDATE events
       SET data = (data - ARRAY['content', 'title', 'error']) || '{"redacted": true}'::jsonb
     WHERE stream_id = p_stream_id
       AND version < p_before_version
       AND NOT (data ? 'redacted');
    GET DIAGNOSTICS n = ROW_COUNT;
    PERFORM set_config('chat.purging', 'off', true);
    RETURN n;
END;
$$;

-- Only the owner (the command service's user) may purge.
REVOKE ALL ON FUNCTION purge_stream_content(text, bigint) FROM PUBLIC;
