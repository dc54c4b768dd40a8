-- Endpoint lifecycle (issue 14): per-endpoint settings, and failed deliveries kept for
-- `recover`.

-- A free-text note, custom headers (JSON array of [name, value] pairs, NULL = none), and the
-- endpoint's own delivery rate (per second) and concurrency limits (NULL = the defaults).
ALTER TABLE endpoints
    ADD COLUMN description  text,
    ADD COLUMN headers      text,
    ADD COLUMN rate_limit   integer,
    ADD COLUMN concurrency  integer;

-- Failed deliveries, one per (endpoint, event): retries exhausted, failed when the endpoint
-- was disabled, or recorded for an event that matched a disabled endpoint. `recover` turns
-- them back into deliveries; replay and endpoint deletion forget them. Written only on
-- failures and lifecycle changes, never by the hot claim / success path.
CREATE TABLE failed_deliveries (
    endpoint_id      uuid        NOT NULL,
    event_id         uuid        NOT NULL,
    organization_id  uuid        NOT NULL,
    reason           text        NOT NULL,
    failed_at        timestamptz NOT NULL,
    PRIMARY KEY (endpoint_id, event_id)
);
CREATE INDEX failed_deliveries_event ON failed_deliveries (event_id);
