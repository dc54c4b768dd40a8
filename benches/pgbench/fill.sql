-- Queues :n events with one delivery each, due now (benches/pgbench/run.sh).
WITH ev AS (
  INSERT INTO events (id, organization_id, event_type, payload, status, created_at)
  SELECT (lpad(to_hex((extract(epoch from clock_timestamp())*1000)::bigint),12,'0') || right(replace(gen_random_uuid()::text,'-',''), 20))::uuid,
         '00000000-0000-0000-0000-000000000001', 'order.paid', '{"order": 7, "cents": 1999}', 'pending', now()
  FROM generate_series(1, :n)
  RETURNING id, organization_id, created_at),
-- Counted as the store's own insert counts them (migration …12_pending_counts).
counted AS (INSERT INTO pending_deltas (organization_id, n) SELECT organization_id, count(*) FROM ev GROUP BY 1)
INSERT INTO deliveries (id, event_id, organization_id, endpoint_id, state, attempt, next_attempt_at, due_at)
SELECT triggers_delivery_id(ev.id), ev.id, ev.organization_id, '00000000-0000-0000-0000-0000000000e1', 'pending', 0, ev.created_at, ev.created_at FROM ev;
