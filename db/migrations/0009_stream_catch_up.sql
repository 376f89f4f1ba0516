-- Read-after-write without a token: when the read model misses a user or session, the query
-- service asks whether the event store already holds it for the caller. The answer is only
-- the position of the stream's last event, to wait for the projection to reach; NULL when
-- the stream does not exist, is deleted or is someone else's (a true 401/404).
-- Two primary-key lookups (event_streams by stream_id, events by (stream_id, version)).
-- SECURITY DEFINER because the query role may not read the event store; hence the empty
-- search_path and schema-qualified names, and EXECUTE for chat_query alone.
CREATE FUNCTION public.stream_catch_up_position(p_stream_id text, p_caller uuid)
RETURNS bigint
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
    SELECT e.position
      FROM public.event_streams s
      JOIN public.events e ON e.stream_id = s.stream_id AND e.version = s.version
     WHERE s.stream_id = p_stream_id
       AND s.owner_id = p_caller
       AND NOT s.deleted
$$;
REVOKE ALL ON FUNCTION public.stream_catch_up_position(text, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION public.stream_catch_up_position(text, uuid) TO chat_query;
