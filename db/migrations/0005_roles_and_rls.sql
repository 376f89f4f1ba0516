-- Roles. They are cluster-wide, so creation tolerates an existing role (other databases of
-- the same cluster, such as parallel test runs, create them too).
--   chat_owner     owns the per-user tables; FORCE ROW LEVEL SECURITY binds even it.
--   chat_query     what the query service runs as: SELECT only, neither owner nor BYPASSRLS.
--   chat_projector what the projector writes as: its own policies, never the query role's.
DO $$
DECLARE r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['chat_owner', 'chat_query', 'chat_projector'] LOOP
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOBYPASSRLS', r);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
        -- the migrating user switches to these roles with SET ROLE
        EXECUTE format('GRANT %I TO %I', r, current_user);
    END LOOP;
END;
$$;

GRANT USAGE ON SCHEMA public TO chat_query, chat_projector;

DO $$
DECLARE t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['users', 'sessions', 'chat_messages', 'user_projects', 'dossier', 'turns'] LOOP
        EXECUTE format('ALTER TABLE %I OWNER TO chat_owner', t);
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('GRANT SELECT ON %I TO chat_query', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO chat_projector', t);
        EXECUTE format(
            'CREATE POLICY projector_all ON %I TO chat_projector USING (true) WITH CHECK (true)', t);
    END LOOP;
END;
$$;

-- The query role's policies. Fail closed: with app.user_id unset (or reset to ''), the
-- comparison is with NULL and no row passes. (SELECT ...) makes it one InitPlan per
-- statement instead of a call per row; every user_id used here is indexed.
CREATE POLICY owner_read ON users FOR SELECT TO chat_query
    USING (user_id = (SELECT NULLIF(current_setting('app.user_id', true), '')::uuid));
CREATE POLICY owner_read ON sessions FOR SELECT TO chat_query
    USING (user_id = (SELECT NULLIF(current_setting('app.user_id', true), '')::uuid));
CREATE POLICY owner_read ON chat_messages FOR SELECT TO chat_query
    USING (user_id = (SELECT NULLIF(current_setting('app.user_id', true), '')::uuid));
CREATE POLICY owner_read ON user_projects FOR SELECT TO chat_query
    USING (user_id = (SELECT NULLIF(current_setting('app.user_id', true), '')::uuid));
CREATE POLICY owner_read ON turns FOR SELECT TO chat_query
    USING (user_id = (SELECT NULLIF(current_setting('app.user_id', true), '')::uuid));
-- A project is visible to the users linked to it (user_projects is itself filtered).
CREATE POLICY linked_read ON dossier FOR SELECT TO chat_query
    USING (EXISTS (SELECT 1 FROM user_projects up WHERE up.project_id = dossier.project_id));

GRANT EXECUTE ON FUNCTION get_user_sessions(uuid, integer, timestamptz, uuid),
                          get_session_messages(uuid, integer, integer),
                          get_session_messages_keyset(uuid, integer, bigint, bigint)
    TO chat_query;

-- The projector reads the event store and keeps its checkpoint; it never writes events.
GRANT SELECT ON events, event_streams TO chat_projector;
GRANT SELECT, INSERT, UPDATE ON projection_checkpoints TO chat_projector;
GRANT SELECT, INSERT, UPDATE, DELETE ON parked_events TO chat_projector;
