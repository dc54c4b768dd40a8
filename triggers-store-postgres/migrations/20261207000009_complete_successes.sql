-- Successful completions whose events may have other outstanding deliveries, in one round
-- trip (complete.rs, "Successes path").
--
-- The general path decides "was this the last outstanding delivery of its event?" after
-- locking the event, with a snapshot taken after the lock: two completions of an event's
-- last two deliveries then decide one after the other, and the second sees the first's
-- delete. From the client that is a transaction of five round trips (BEGIN, finish, lock,
-- record, COMMIT). A VOLATILE function takes a fresh snapshot for each statement it runs
-- (READ COMMITTED), so the same three statements run here, in the caller's one statement
-- and its one transaction: nothing is decided from a snapshot older than the lock.
--
-- Arguments: per completion, the fence (delivery id, lease owner, attempt) and the attempt
-- record (endpoint, time, status code, latency, error); `keep` = attempts kept per
-- (event, endpoint), the new one included. Returns the ids of the deliveries whose
-- completion applied (the others are stale). The attempt trim is the one of
-- `trim_attempts_cte!` in complete.rs (a change there needs a migration replacing this
-- function).
CREATE FUNCTION triggers_complete_successes(
    ids uuid[], owners uuid[], attempt_nos int4[], endpoint_ids uuid[], ats timestamptz[],
    status_codes int4[], latencies int8[], errors text[], keep int8
) RETURNS SETOF uuid
LANGUAGE plpgsql VOLATILE
AS $fn$
DECLARE
    applied uuid[];
    event_ids uuid[];
    last_ats timestamptz[];
BEGIN
    -- Lease bookkeeping: no flush (complete.rs, "Durability").
    PERFORM set_config('synchronous_commit', 'off', true);

    WITH fin AS (
        DELETE FROM deliveries d
        USING UNNEST(ids, owners, attempt_nos, endpoint_ids, ats, status_codes, latencies,
                     errors)
            WITH ORDINALITY AS c(id, owner, attempt, endpoint_id, at, status_code, latency_ms,
                                 error, ord)
        WHERE d.id = c.id AND d.state = 'in_flight' AND d.lease_owner = c.owner
          AND d.attempt = c.attempt
        RETURNING d.id, d.event_id, c.endpoint_id, c.at, c.status_code, c.latency_ms, c.error,
                  c.ord
    ),
    attempts_in AS (
        INSERT INTO attempts (event_id, endpoint_id, at, status_code, latency_ms, error)
        SELECT event_id, endpoint_id, at, status_code, latency_ms, error FROM fin ORDER BY ord
    ),
    trimmed AS (
        DELETE FROM attempts a
        USING (SELECT DISTINCT event_id, endpoint_id FROM fin) p
        CROSS JOIN LATERAL (
            SELECT x.seq
            FROM (SELECT b.seq, b.endpoint_id FROM attempts b
                  WHERE b.event_id = p.event_id OFFSET 0) x
            WHERE x.endpoint_id = p.endpoint_id
            ORDER BY x.seq DESC
            OFFSET greatest(keep - 1, 0)
        ) old
        WHERE a.event_id = p.event_id AND a.seq = old.seq
    ),
    healthy AS (
        UPDATE endpoints e SET failing_since = NULL
        WHERE e.id IN (SELECT endpoint_id FROM fin) AND e.failing_since IS NOT NULL
    ),
    -- Per event, the last success of the batch (completion order) gives `delivered_at`.
    last AS (
        SELECT DISTINCT ON (event_id) event_id, at FROM fin ORDER BY event_id, ord DESC
    )
    SELECT (SELECT array_agg(id) FROM fin),
           array_agg(last.event_id ORDER BY last.event_id), array_agg(last.at ORDER BY last.event_id)
    INTO applied, event_ids, last_ats
    FROM last;

    IF event_ids IS NULL THEN
        RETURN;
    END IF;
    -- In id order, as every other path locks events (no deadlock between completions).
    PERFORM 1 FROM events WHERE id = ANY(event_ids) ORDER BY id FOR NO KEY UPDATE;
    -- A fresh snapshot: sees every delete committed before the lock was granted.
    UPDATE events e SET status = 'delivered', delivered_at = x.at
    FROM UNNEST(event_ids, last_ats) AS x(id, at)
    WHERE e.id = x.id AND e.status = 'pending'
      AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id);
    RETURN QUERY SELECT unnest(applied);
END
$fn$;
