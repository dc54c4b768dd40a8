-- The outbox of endpoint announcements (`triggers.endpoint.disabled` / `.enabled`; see
-- `src/announce.rs`). The write that changes an endpoint's `enabled` records the event here
-- in its own transaction; it is moved into `events` (with its fan-out) right after that
-- commits, or by the store's sweep if that fails. Rows are transient: normally none.
CREATE TABLE announcements (
    id              uuid        PRIMARY KEY,
    organization_id uuid        NOT NULL,
    endpoint_id     uuid        NOT NULL,
    event_type      text        NOT NULL,
    payload         text        NOT NULL,
    -- The change's time (the event's `created_at`).
    created_at      timestamptz NOT NULL,
    -- The database's time of the recording: the sweep leaves young rows to their own call.
    recorded_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX announcements_by_endpoint ON announcements (endpoint_id, created_at);
CREATE INDEX announcements_by_age ON announcements (recorded_at);
