-- The legacy POST /chat refuses anonymous posts into a project linked to a real user
-- (services/command/legacy.py): which users a project is linked to, without a scan.
CREATE INDEX events_project_linked_idx ON events ((data->>'project_id'))
 WHERE type = 'ProjectLinked';
