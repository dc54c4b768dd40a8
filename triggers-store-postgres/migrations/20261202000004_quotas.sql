-- Tenant quotas and retention (issue 12).

-- In-flight deliveries cancelled by a replay: their worker's completion is stale, but its
-- attempt is still recorded in the event's history. A row goes when that completion arrives
-- or, once its lease has expired, at the next replay.
CREATE TABLE superseded_deliveries (
    id                uuid        PRIMARY KEY,
    event_id          uuid        NOT NULL,
    lease_owner       uuid        NOT NULL,
    attempt           integer     NOT NULL,
    lease_expires_at  timestamptz NOT NULL
);
CREATE INDEX superseded_by_lease ON superseded_deliveries (lease_expires_at);

-- Retention: finished (delivered or failed) events by age. Partial, so inserts (pending)
-- never touch it.
CREATE INDEX events_finished ON events (created_at) WHERE status <> 'pending';
-- Retention of dedup entries past their window.
CREATE INDEX dedup_created ON dedup (created_at);
