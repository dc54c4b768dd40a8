-- One claim of 64 (CLAIM_SQL of triggers-store-postgres/src/queue.rs) and its completion as
-- delivered (FAST_SQL of src/complete.rs), with pgbench variables for the bind parameters.
-- Keep it in step with those two statements when they change.
WITH due AS (
    SELECT d.id, d.due_at FROM deliveries d
    JOIN endpoints ep ON ep.id = d.endpoint_id AND ep.enabled
    WHERE d.due_at <= now()
      AND (SELECT set_config('synchronous_commit', 'off', true)) IS NOT NULL
    ORDER BY d.due_at
    LIMIT 64
    FOR UPDATE OF d SKIP LOCKED
),
claimed AS (
    UPDATE deliveries d
    SET state = 'in_flight', attempt = d.attempt + 1, lease_owner = (lpad(:client_id::text, 32, '0'))::uuid,
        lease_expires_at = now() + interval '60 s', due_at = now() + interval '60 s'
    FROM due WHERE d.id = due.id
    RETURNING d.id, d.attempt, d.event_id, d.endpoint_id, due.due_at AS was_due
),
res AS (
SELECT c.id, c.attempt, c.event_id, c.endpoint_id, e.organization_id, e.event_type, e.payload, e.created_at,
       ep.url, ep.secret, ep.previous_secret, ep.previous_valid_until, ep.failing_since,
       ep.headers, ep.rate_limit, ep.concurrency,
       (SELECT count(*) FROM deliveries o WHERE o.event_id = c.event_id) AS siblings
FROM claimed c
JOIN events e ON e.id = c.event_id
JOIN endpoints ep ON ep.id = c.endpoint_id
ORDER BY c.was_due, c.id)
SELECT coalesce(array_agg(id), '{}') AS ids, coalesce(array_agg(attempt), '{}') AS atts, coalesce(array_agg(endpoint_id),'{}') AS eps, sum(length(payload)) AS bytes, count(*) AS n FROM res
\gset
WITH fin AS (
    DELETE FROM deliveries d
    USING UNNEST(':ids'::uuid[], array_fill((lpad(:client_id::text, 32, '0'))::uuid, ARRAY[:n]), ':atts'::int4[], ':eps'::uuid[],
                 array_fill(now(), ARRAY[:n]), array_fill(200, ARRAY[:n]), array_fill(1::int8, ARRAY[:n]), array_fill(NULL::text, ARRAY[:n]))
        WITH ORDINALITY AS c(id, owner, attempt, endpoint_id, at, status_code, latency_ms, error, ord)
    WHERE d.id = c.id AND d.state = 'in_flight' AND d.lease_owner = c.owner
      AND d.attempt = c.attempt
    RETURNING d.id, d.event_id, c.endpoint_id, c.at, c.status_code, c.latency_ms, c.error, c.ord
),
attempts_in AS (
    INSERT INTO attempts (event_id, endpoint_id, at, status_code, latency_ms, error)
    SELECT event_id, endpoint_id, at, status_code, latency_ms, error FROM fin ORDER BY ord
),
trimmed AS (
    DELETE FROM attempts a
    USING (
        SELECT b.event_id, b.seq,
               row_number() OVER (PARTITION BY b.event_id, b.endpoint_id ORDER BY b.seq DESC) AS rn
        FROM attempts b
        JOIN (SELECT DISTINCT event_id, endpoint_id FROM fin) p ON b.event_id = p.event_id AND b.endpoint_id = p.endpoint_id
    ) old
    WHERE a.event_id = old.event_id AND a.seq = old.seq AND old.rn >= 100
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
SELECT count(*) AS done FROM fin
\gset
