-- Tenant quotas and retention (issue 12).

-- In-flight deliveries cancelled by a replay: their worker's completion is stale, but its
-- attempt is still recorded in the event's history. A row goes when that completion arrives
-- or, once `lease_until` (unix µs) has passed, at the next replay.
CREATE TABLE superseded_deliveries (
    id           BLOB PRIMARY KEY NOT NULL,
    event_seq    INTEGER NOT NULL,
    lease_owner  BLOB NOT NULL,
    attempt      INTEGER NOT NULL,
    lease_until  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX superseded_by_lease ON superseded_deliveries (lease_until);

-- Finished (delivered or failed) events by age, for retention. Partial: pending events (the
-- bulk of inserts) never touch it. Replaces the delivered-only index of version 1.
CREATE INDEX events_finished ON events (created_at) WHERE status <> 0;
DROP INDEX events_delivered;
