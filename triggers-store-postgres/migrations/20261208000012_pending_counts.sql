-- Pending events counted per organization (hostile-tenant review, 2026-12-08).
--
-- The Ingestor bounds how many pending events an organization keeps (an inbox nobody
-- acknowledges grew without end, filling the disk every tenant shares), and counting them
-- with count(*) walks them. Statement-level triggers record what each statement changed in
-- `pending_deltas` (one row per organization and statement, in the statement's
-- transaction, no row ever updated: writers of one organization on many connections and
-- nodes never wait for each other); each node's fold task moves them into `pending_counts`
-- (one node at a time), and a read adds the two (`pending.rs`).
CREATE TABLE pending_counts (
    organization_id  uuid    PRIMARY KEY,
    n                bigint  NOT NULL
);
CREATE TABLE pending_deltas (
    organization_id  uuid    NOT NULL,
    n                bigint  NOT NULL
);
CREATE INDEX pending_deltas_org ON pending_deltas (organization_id);

CREATE FUNCTION triggers_pending_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pending_deltas (organization_id, n)
    SELECT organization_id, count(*) FROM new_rows WHERE status = 'pending' GROUP BY 1;
    RETURN NULL;
END $$;

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

-- The triggers first: creating them locks `events` against writes until this migration
-- commits, so the count below misses no concurrent insert of another node.
CREATE TRIGGER events_pending_inserted AFTER INSERT ON events
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION triggers_pending_inserted();
CREATE TRIGGER events_pending_changed AFTER UPDATE ON events
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION triggers_pending_changed();
CREATE TRIGGER events_pending_deleted AFTER DELETE ON events
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION triggers_pending_deleted();

INSERT INTO pending_counts (organization_id, n)
SELECT organization_id, count(*) FROM events WHERE status = 'pending' GROUP BY 1;
