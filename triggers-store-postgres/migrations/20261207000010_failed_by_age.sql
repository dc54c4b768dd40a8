-- Recover seeks its window (hostile-tenant review, 2026-12-07).
--
-- `recover` picked an endpoint's failed deliveries in event id order and filtered on the
-- event's creation time through a join, so a window holding nothing (one in the future, or
-- one past everything) walked every failed delivery of the endpoint, once per call, holding
-- the endpoint locked. Each failed delivery now carries its event's creation time, indexed
-- after the endpoint: a call reads the window and nothing else, oldest first. Every insert
-- into the table sets it (the statements in events.rs, insert.rs and lifecycle.rs).
ALTER TABLE failed_deliveries ADD COLUMN event_created_at timestamptz;
UPDATE failed_deliveries f SET event_created_at = e.created_at FROM events e
WHERE e.id = f.event_id;
-- A failed delivery whose event is gone could never be recovered (the old query joined the
-- event); none should exist, and none is kept.
DELETE FROM failed_deliveries WHERE event_created_at IS NULL;
ALTER TABLE failed_deliveries ALTER COLUMN event_created_at SET NOT NULL;
CREATE INDEX failed_deliveries_by_age
    ON failed_deliveries (endpoint_id, event_created_at, event_id);
