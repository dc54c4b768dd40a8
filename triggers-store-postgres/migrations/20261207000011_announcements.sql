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
    -- The order of the changes of one endpoint: drawn while the change holds the endpoint
    -- `FOR UPDATE`, so it follows their commits (their own times may not).
    seq             bigserial   NOT NULL,
    -- When the row was written (the clock, not the transaction's start): the sweep leaves
    -- young rows to the call that wrote them.
    recorded_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX announcements_by_endpoint ON announcements (endpoint_id, seq);
CREATE INDEX announcements_by_age ON announcements (recorded_at);
