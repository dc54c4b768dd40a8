-- Pending events counted per organization (hostile-tenant review, 2026-12-08).
--
-- The Ingestor bounds how many pending events an organization keeps (an inbox nobody
-- acknowledges grew without end, filling the disk every tenant shares). Counting them with
-- `count(*)` walks the organization's pending events, so the count is kept here, in the
-- same transaction as every write that changes it. The hot changes — inserts (every event
-- goes in pending) and a pending event becoming delivered (a completion, an ack) — are
-- summed by the writer and written once per organization and transaction (`ops::pending`);
-- every other change of an event's status, and every deletion of a pending event, is
-- counted by the triggers below, row by row. A row may reach 0 and stay.
CREATE TABLE pending_counts (
    org_id  BLOB    PRIMARY KEY,
    n       INTEGER NOT NULL
) WITHOUT ROWID;

INSERT INTO pending_counts (org_id, n)
SELECT org_id, count(*) FROM events WHERE status = 0 GROUP BY org_id;

-- Not to delivered (1): those few statements count themselves.
CREATE TRIGGER events_pending_changed AFTER UPDATE OF status ON events
WHEN (old.status = 0) <> (new.status = 0) AND new.status <> 1
BEGIN
    INSERT INTO pending_counts (org_id, n)
    VALUES (new.org_id, CASE WHEN new.status = 0 THEN 1 ELSE -1 END)
    ON CONFLICT (org_id) DO UPDATE SET n = n + excluded.n;
END;

CREATE TRIGGER events_pending_deleted AFTER DELETE ON events WHEN old.status = 0
BEGIN
    UPDATE pending_counts SET n = n - 1 WHERE org_id = old.org_id;
END;
