-- Pending events counted per organization (hostile-tenant review, 2026-12-08).
--
-- The Ingestor bounds how many pending events an organization keeps (an inbox nobody
-- acknowledges grew without end, filling the disk every tenant shares), and counting them
-- with count(*) walks them. Each statement that changes the count records its change in
-- `pending_deltas` (one row per organization and statement, in the statement's
-- transaction, no row ever updated: writers of one organization on many connections and
-- nodes never wait for each other); each node's fold task moves them into `pending_counts`
-- (one node at a time), and a read adds the two (`pending.rs`). Inserts, the hot path,
-- count themselves in their one statement (`insert.rs`; every event is inserted there): a
-- trigger would copy every inserted row, payload and all, into its transition table. Every
-- other change — of an event's status, or a deletion — is counted by the triggers below,
-- so no other code path can forget it, also one of a node still running the previous
-- version during a rolling upgrade. That node's inserts are not counted, and stay so: its
-- events are counted out when they finish, leaving the organization's count that much too
-- low (read as at least 0) until a recount; stop the old nodes before the new ones take
-- traffic where that matters.
--
-- This migration creates the triggers; creating them waits for the writes on `events`
-- under way and holds new ones back until it commits (a moment, or `lock_timeout` and a
-- failed start if a long write transaction is in the way). The next one counts what is
-- already pending, in its own snapshot, so that the walk over `events` holds no write back.

SET LOCAL lock_timeout = '5s';

CREATE TABLE pending_counts (
    organization_id  uuid    PRIMARY KEY,
    n                bigint  NOT NULL
);
CREATE TABLE pending_deltas (
    id               bigint  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organization_id  uuid    NOT NULL,
    n                bigint  NOT NULL
);
CREATE INDEX pending_deltas_org ON pending_deltas (organization_id);
-- Rows come and go every second: vacuumed as eagerly as `deliveries`.
ALTER TABLE pending_deltas SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02
);

CREATE FUNCTION triggers_pending_changed() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE FUNCTION triggers_pending_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pending_deltas (organization_id, n)
    SELECT organization_id, -count(*) FROM old_rows WHERE status = 'pending' GROUP BY 1;
    RETURN NULL;
END $$;

CREATE TRIGGER events_pending_changed AFTER UPDATE ON events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION triggers_pending_changed();
CREATE TRIGGER events_pending_deleted AFTER DELETE ON events
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION triggers_pending_deleted();
