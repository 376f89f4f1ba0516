-- Before a read waits for its min_position (services/query/consistency.py), the query role
-- asks the event store two things it may not read itself: is the caller a registered user
-- (a waiting request must be someone's), and does an event at that position exist (a
-- position beyond the store's end would only make the request wait out its bound).
-- Two booleans; reads no user's content.
CREATE FUNCTION read_your_writes_check(p_user uuid, p_position bigint,
                                       OUT user_known boolean, OUT position_exists boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $$
    SELECT EXISTS (
               SELECT 1 FROM public.event_streams s
                WHERE s.stream_id = 'user-' || p_user::text
                  AND s.stream_type = 'user' AND NOT s.deleted),
           p_position <= (SELECT coalesce(max(e.position), 0) FROM public.events e)
$$;
REVOKE ALL ON FUNCTION read_your_writes_check(uuid, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION read_your_writes_check(uuid, bigint) TO chat_query;
