-- How far projection p_projection is behind the event store, for /metrics: the events
-- committed after its checkpoint (in the followers' (txid, position) order, counted up to
-- 1,000,000 so a scrape stays cheap on a huge backlog) and the age in seconds of the first
-- of them (0 and 0 when caught up). A projection with no checkpoint row yet has applied
-- nothing. SECURITY DEFINER because the query role may not read the event store; it returns
-- only a count and an age, never a row's content.
CREATE FUNCTION projection_lag(p_projection text)
RETURNS TABLE (events bigint, seconds double precision)
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public, pg_temp AS $$
    WITH checkpoint AS (
        SELECT coalesce(c.last_txid, '0'::xid8) AS txid, coalesce(c.last_position, 0) AS position
          FROM (SELECT 1) AS one
          LEFT JOIN projection_checkpoints c ON c.name = p_projection
    )
    SELECT (SELECT count(*)
              FROM (SELECT 1 FROM events e
                     WHERE (e.txid, e.position) > (k.txid, k.position)
                     LIMIT 1000000) AS pending),
           coalesce((SELECT greatest(0, extract(epoch FROM clock_timestamp() - e.recorded_at))
                       FROM events e
                      WHERE (e.txid, e.position) > (k.txid, k.position)
                      ORDER BY e.txid, e.position
                      LIMIT 1), 0)::double precision
      FROM checkpoint k
$$;
REVOKE ALL ON FUNCTION projection_lag(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION projection_lag(text) TO chat_query;
