-- Endpoint lifecycle (issue 14): per-endpoint settings, and failed deliveries kept for
-- `recover`.

-- A free-text note, custom headers (JSON array of [name, value] pairs, NULL = none), and the
-- endpoint's own delivery rate (per second) and concurrency limits (NULL = the defaults).
ALTER TABLE endpoints ADD COLUMN description TEXT;
ALTER TABLE endpoints ADD COLUMN headers TEXT;
ALTER TABLE endpoints ADD COLUMN rate_limit INTEGER;
ALTER TABLE endpoints ADD COLUMN concurrency INTEGER;

-- Failed deliveries, one per (endpoint, event): retries exhausted, failed when the endpoint
-- was disabled, or recorded for an event that matched a disabled endpoint. `recover` turns
-- them back into deliveries; replay, endpoint deletion and the retention purge forget them.
CREATE TABLE failed_deliveries (
    endpoint_seq  INTEGER NOT NULL,
    event_seq     INTEGER NOT NULL,
    reason        TEXT NOT NULL,
    failed_at     INTEGER NOT NULL,
    PRIMARY KEY (endpoint_seq, event_seq)
) WITHOUT ROWID;
CREATE INDEX failed_deliveries_by_event ON failed_deliveries (event_seq);
