-- Deliveries keyed by endpoint and event (issue 17).
--
-- `deliveries` was keyed by its random id, with `deliveries_by_endpoint` (endpoint, event)
-- beside it for the delivery listing: every delivery went into and out of both. Keyed by
-- (endpoint_seq, event_seq), the table is that listing's order itself, and the other indexes
-- carry two small integers per entry instead of a 16-byte id. An endpoint has at most one
-- outstanding delivery of an event (a replay deletes the event's deliveries before queueing
-- new ones, recovering turns a failed delivery into the one outstanding delivery).
--
-- `id` stays the id handed to workers; it now carries the key (`ops::delivery_key`), so a
-- completion finds its row by primary key and compares the whole id. Ids of the rows moved
-- here are made the same way: no worker holds one across the restart this migration runs in.
CREATE TABLE deliveries_keyed (
    endpoint_seq  INTEGER NOT NULL,
    event_seq     INTEGER NOT NULL,
    id            BLOB NOT NULL,
    state         INTEGER NOT NULL,
    attempt       INTEGER NOT NULL,
    due_at        INTEGER NOT NULL,
    claimed_due   INTEGER,
    lease_owner   BLOB,
    line          INTEGER,
    PRIMARY KEY (endpoint_seq, event_seq)
) WITHOUT ROWID;
INSERT INTO deliveries_keyed
    (endpoint_seq, event_seq, id, state, attempt, due_at, claimed_due, lease_owner, line)
SELECT endpoint_seq, event_seq,
       -- one hex string, so that the result is a blob (`||` would make it text)
       unhex(printf('%010x%014x%08x', endpoint_seq, event_seq, random() & 4294967295)),
       state, attempt, due_at, claimed_due, lease_owner, line
FROM deliveries;
DROP TABLE deliveries;
ALTER TABLE deliveries_keyed RENAME TO deliveries;
CREATE INDEX deliveries_by_event ON deliveries (event_seq);
CREATE INDEX deliveries_leased ON deliveries (event_seq) WHERE state = 1;
CREATE INDEX deliveries_line ON deliveries (endpoint_seq, line) WHERE line IS NOT NULL;
CREATE INDEX deliveries_pending_due ON deliveries (endpoint_seq, due_at)
    WHERE line IS NULL AND state = 0;
