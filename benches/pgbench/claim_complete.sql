-- One claim of 64 (CLAIM_SQL of triggers-store-postgres/src/queue.rs) and its completion as
-- delivered (FAST_SQL of src/complete.rs), with pgbench variables for the bind parameters.
-- Keep it in step with those two statements when they change. The caps are the bench's
-- (none: u32::MAX), as in benches/postgres.rs.
WITH RECURSIVE busy AS MATERIALIZED (
    SELECT b.endpoint_id, b.organization_id, count(*) AS n
    FROM deliveries b
    WHERE b.state = 'in_flight' AND b.due_at > now()
    GROUP BY b.endpoint_id, b.organization_id
),
org_busy AS MATERIALIZED (
    SELECT organization_id, sum(n) AS n FROM busy GROUP BY organization_id
),
outstanding AS (
    (SELECT endpoint_id, due_at FROM deliveries
     WHERE fifo_seq IS NULL ORDER BY endpoint_id, due_at LIMIT 1)
    UNION ALL
    SELECT n.endpoint_id, n.due_at FROM outstanding o CROSS JOIN LATERAL (
        SELECT l.endpoint_id, l.due_at FROM deliveries l
        WHERE l.fifo_seq IS NULL AND l.endpoint_id > o.endpoint_id
        ORDER BY l.endpoint_id, l.due_at LIMIT 1) n
),
capped AS (
    SELECT o.endpoint_id, o.due_at AS first_due, ep.organization_id,
           CASE WHEN ep.failing_since IS NULL
                THEN GREATEST(1, LEAST(ep.concurrency, 2 * ep.rate_limit, 2147483647::int8)) ELSE 1 END AS cap,
           coalesce(ob.n, 0) AS org_n, coalesce(b.n, 0) AS ep_n
    FROM outstanding o
    JOIN endpoints ep ON ep.id = o.endpoint_id AND ep.enabled
    LEFT JOIN org_busy ob ON ob.organization_id = ep.organization_id
    LEFT JOIN busy b ON b.endpoint_id = o.endpoint_id
    WHERE o.due_at <= now()
),
open AS (
    SELECT r.*, row_number() OVER (ORDER BY r.first_due, r.endpoint_id) AS claim_rank
    FROM (
        SELECT c.*, row_number() OVER (PARTITION BY c.organization_id
                                       ORDER BY c.first_due, c.endpoint_id) AS org_rank
        FROM capped c
        WHERE c.org_n < 2147483647 AND c.ep_n < c.cap
    ) r
    WHERE r.org_rank <= 2147483647 - r.org_n
    ORDER BY r.first_due, r.endpoint_id
    LIMIT 64
),
parallel AS (
    SELECT d.id, d.due_at, e.organization_id, e.endpoint_id, e.cap
    FROM open e CROSS JOIN LATERAL (
        SELECT l.id, l.due_at FROM deliveries l
        WHERE l.endpoint_id = e.endpoint_id AND l.fifo_seq IS NULL AND l.due_at <= now()
        ORDER BY l.due_at
        LIMIT LEAST(e.cap - e.ep_n, 2147483647 - e.org_n, 64 - e.claim_rank + 1)
        FOR UPDATE SKIP LOCKED
    ) d
),
heads AS (
    SELECT h.id FROM endpoints ep
    CROSS JOIN LATERAL (
        SELECT l.id, l.due_at FROM deliveries l
        WHERE l.endpoint_id = ep.id AND l.fifo_seq IS NOT NULL
        ORDER BY l.fifo_seq, l.event_id
        LIMIT 1
    ) h
    WHERE ep.ordering = 'fifo' AND ep.enabled AND h.due_at <= now()
      AND NOT (ep.id IN (SELECT endpoint_id FROM busy))
      AND NOT (ep.organization_id IN (SELECT organization_id FROM org_busy WHERE n >= 2147483647))
),
head_locked AS (
    SELECT d.id, d.due_at, d.organization_id, d.endpoint_id, 1::int8 AS cap
    FROM deliveries d
    -- By primary key (an array, not a join the planner may turn into a scan of the line).
    WHERE d.id = ANY (ARRAY(SELECT id FROM heads)) AND d.due_at <= now() AND d.fifo_seq IS NOT NULL
    FOR UPDATE SKIP LOCKED
),
ranked AS (
    SELECT c.id, c.due_at, c.cap,
           coalesce(o.n, 0) + row_number() OVER (PARTITION BY c.organization_id
                                                 ORDER BY c.due_at, c.id) AS org_n,
           coalesce(b.n, 0) + row_number() OVER (PARTITION BY c.endpoint_id
                                                 ORDER BY c.due_at, c.id) AS ep_n
    FROM (SELECT * FROM parallel UNION ALL SELECT * FROM head_locked) c
    LEFT JOIN org_busy o ON o.organization_id = c.organization_id
    LEFT JOIN busy b ON b.endpoint_id = c.endpoint_id
),
due AS (
    SELECT id, due_at FROM ranked WHERE org_n <= 2147483647 AND ep_n <= cap ORDER BY due_at LIMIT 64
),
commit_mode AS (
    SELECT set_config('synchronous_commit',
        CASE WHEN EXISTS (SELECT 1 FROM due JOIN head_locked h ON h.id = due.id)
             THEN current_setting('synchronous_commit') ELSE 'off' END, true) AS mode
),
claimed AS (
    UPDATE deliveries d
    SET state = 'in_flight', attempt = d.attempt + 1, lease_owner = (lpad(:client_id::text, 32, '0'))::uuid,
        lease_expires_at = now() + interval '60 s', due_at = now() + interval '60 s'
    -- By primary key, as an array: joined with `due`, the planner may walk the whole
    -- primary key index instead (it did once statistics said the table was nearly empty,
    -- visiting every dead row version the queue's churn leaves behind).
    WHERE d.id = ANY (ARRAY(SELECT id FROM due)) AND (SELECT mode FROM commit_mode) IS NOT NULL
    RETURNING d.id, d.attempt, d.event_id, d.endpoint_id
),
res AS (
SELECT c.id, c.attempt, c.event_id, c.endpoint_id, e.organization_id, e.event_type, e.payload, e.created_at,
       ep.url, ep.secret, ep.previous_secret, ep.previous_valid_until, ep.failing_since,
       ep.headers, ep.rate_limit, ep.concurrency,
       (SELECT count(*) FROM (SELECT 1 FROM deliveries o WHERE o.event_id = c.event_id
                              LIMIT 2) o) AS siblings
FROM claimed c
JOIN due ON due.id = c.id
JOIN events e ON e.id = c.event_id
JOIN endpoints ep ON ep.id = c.endpoint_id
ORDER BY due.due_at, c.id)
SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(attempt), '{}') AS atts, coalesce(array_agg(endpoint_id),'{}') AS eps, sum(length(payload)) AS bytes, count(*) AS n FROM res
\gset
WITH fin AS (
    DELETE FROM deliveries d
    USING UNNEST(':ids'::uuid[], array_fill((lpad(:client_id::text, 32, '0'))::uuid, ARRAY[:n]), ':atts'::int4[], ':eps'::uuid[],
                 array_fill(now(), ARRAY[:n]), array_fill(200, ARRAY[:n]), array_fill(1::int8, ARRAY[:n]), array_fill(NULL::text, ARRAY[:n]))
        WITH ORDINALITY AS c(id, owner, attempt, endpoint_id, at, status_code, latency_ms, error, ord)
    WHERE d.id = c.id AND d.state = 'in_flight' AND d.lease_owner = c.owner
      AND d.attempt = c.attempt AND NOT d.shared
    RETURNING d.id, d.event_id, c.endpoint_id, c.at, c.status_code, c.latency_ms, c.error, c.ord
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
        OFFSET greatest(100 - 1, 0)
    ) old
    WHERE a.event_id = p.event_id AND a.seq = old.seq
),
healthy AS (
    UPDATE endpoints e SET failing_since = NULL
    WHERE e.id IN (SELECT endpoint_id FROM fin) AND e.failing_since IS NOT NULL
),
delivered AS (
    UPDATE events e SET status = 'delivered', delivered_at = fin.at
    FROM fin
    WHERE e.id = fin.event_id AND e.status = 'pending'
)
SELECT count(*) AS done FROM fin WHERE (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
\gset
