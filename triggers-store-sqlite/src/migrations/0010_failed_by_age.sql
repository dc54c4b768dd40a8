-- Recover seeks its window (hostile-tenant review, 2026-12-07).
--
-- `recover` picked an endpoint's failed deliveries in event order and filtered on the
-- event's creation time through a join, so a window holding nothing (one in the future, or
-- one past everything) walked every failed delivery of the endpoint, on the writer, once per
-- call. Each failed delivery now carries its event's creation time, indexed after the
-- endpoint: a call reads the window and nothing else, oldest first.
-- A failed delivery whose event is gone could never be recovered (the old query joined the
-- event); nothing should be left of such rows, and none is kept.
DELETE FROM failed_deliveries
WHERE NOT EXISTS (SELECT 1 FROM events e WHERE e.seq = failed_deliveries.event_seq);
ALTER TABLE failed_deliveries ADD COLUMN event_created_at INTEGER NOT NULL DEFAULT 0;
UPDATE failed_deliveries
SET event_created_at = (SELECT e.created_at FROM events e WHERE e.seq = failed_deliveries.event_seq);
CREATE INDEX failed_deliveries_by_age
    ON failed_deliveries (endpoint_seq, event_created_at, event_seq);
