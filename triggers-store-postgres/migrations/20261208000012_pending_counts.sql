-- no-transaction
-- Pending events counted per organization (hostile-tenant review, 2026-12-08).
--
-- The Ingestor bounds how many pending events an organization keeps (an inbox nobody
-- acknowledges grew without end, filling the disk every tenant shares), and counting them
-- with count(*) walks them. Statement-level triggers record what each statement changed in
-- `pending_deltas` (one row per organization and statement, in the statement's
-- transaction, no row ever updated: writers of one organization on many connections and
-- nodes never wait for each other); each node's fold task moves them into `pending_counts`
-- (one node at a time), and a read adds the two (`pending.rs`). Triggers rather than the
-- store's own statements, so that every write is counted — also one of a node still
-- running the previous version during a rolling upgrade.
--
-- Two transactions (hence `no-transaction`), each safe to run again should the migration
-- stop between them: the first creates the triggers, holding `events` against writes only
-- for that moment; the second counts what is pending in one snapshot and drops the deltas
-- that snapshot already sees (they are in its count), so the count is exact without
-- holding writes back while it walks the table.

BEGIN;
SET LOCAL lock_timeout = '10s';

CREATE TABLE IF NOT EXISTS pending_counts (
    organization_id  uuid    PRIMARY KEY,
    n                bigint  NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_deltas (
    id               bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  uuid    NOT NULL,
    n                bigint  NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_deltas_org ON pending_deltas (organization_id);
-- Rows come and go every second: vacuumed as eagerly as `deliveries`.
ALTER TABLE pending_deltas SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02
);

CREATE OR REPLACE FUNCTION triggers_pending_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pending_deltas (organization_id, n)
    SELECT organization_id, count(*) FROM new_rows WHERE status = 'pending' GROUP BY 1;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION triggers_pending_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pending_deltas (organization_id, n)
    SELECT organization_id, sum(d) FROM (
        SELECT organization_id, 1 AS d FROM new_rows WHERE status = 'pending'
        UNION ALL
        SELECT organization_id, -1 AS d FROM old_rows WHERE status = 'pending'
    ) changed
    GROUP BY 1 HAVING sum(d) <> 0;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION triggers_pending_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pending_deltas (organization_id, n)
    SELECT organization_id, -count(*) FROM old_rows WHERE status = 'pending' GROUP BY 1;
    RETURN NULL;
END $$;

DROP TRIGGER IF EXISTS events_pending_inserted ON events;
CREATE TRIGGER events_pending_inserted AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION triggers_pending_inserted();
DROP TRIGGER IF EXISTS events_pending_changed ON events;
CREATE TRIGGER events_pending_changed AFTER UPDATE ON events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION triggers_pending_changed();
DROP TRIGGER IF EXISTS events_pending_deleted ON events;
CREATE TRIGGER events_pending_deleted AFTER DELETE ON events
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION triggers_pending_deleted();
COMMIT;

-- One snapshot: the events it sees pending, and the deltas it sees (already in that count)
-- dropped; deltas committed after it stay, to be folded on top. No fold runs meanwhile:
-- nodes fold only once migrated.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SET LOCAL statement_timeout = 0;
DELETE FROM pending_counts;
INSERT INTO pending_counts (organization_id, n)
SELECT organization_id, count(*) FROM events WHERE status = 'pending' GROUP BY 1;
DELETE FROM pending_deltas;
COMMIT;
