-- The pending events already stored, counted (see the previous migration).
--
-- One snapshot (REPEATABLE READ, set before anything runs): the events it sees pending are
-- counted, and the deltas it sees — recorded since the previous migration by the
-- triggers and by inserts, each committed with its events, and so already in that count —
-- are dropped; deltas committed after the snapshot stay, to be
-- folded on top. Exact without holding writes back while it walks `events` (no statement
-- timeout: on a large table the walk takes what it takes, once; meanwhile the snapshot
-- holds vacuum back). No fold runs beside it: a node folds only once it is migrated.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;
SET LOCAL statement_timeout = 0;
INSERT INTO pending_counts (organization_id, n)
SELECT organization_id, count(*) FROM events WHERE status = 'pending' GROUP BY 1;
DELETE FROM pending_deltas;
