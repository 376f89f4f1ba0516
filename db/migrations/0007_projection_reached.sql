-- Read-your-writes for the query role, which may not read the event store: has projection
-- p_projection applied the event at p_position? Returns only a boolean, reads no user table.
CREATE FUNCTION projection_reached(p_projection text, p_position bigint) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    SELECT EXISTS (
        SELECT 1
          FROM projection_checkpoints c, events e
         WHERE c.name = p_projection
           AND e.position = p_position
           AND (c.last_txid, c.last_position) >= (e.txid, e.position))
$$;
REVOKE ALL ON FUNCTION projection_reached(text, bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION projection_reached(text, bigint) TO chat_query;
