-- Fair claiming and FIFO endpoints (issue 13).
--
-- endpoints.ordering: 'parallel' or 'fifo'. deliveries.fifo_seq: set for an *ordered*
-- delivery (one queued while its endpoint was fifo) to the sequence value drawn once by the
-- statement that queued it; an endpoint's line is ordered by (fifo_seq, event_id), and its
-- first outstanding delivery is the head, the only one a claim may take. An insert that
-- starts after another returned draws a larger value, so it queues behind it.
ALTER TABLE endpoints ADD COLUMN ordering text NOT NULL DEFAULT 'parallel'
    CHECK (ordering IN ('parallel', 'fifo'));
ALTER TABLE deliveries ADD COLUMN fifo_seq bigint;
CREATE SEQUENCE deliveries_fifo_seq;

-- The due queue now holds parallel deliveries only; heads of FIFO lines are found through
-- their endpoints (endpoints_fifo) and deliveries_line. A long line then costs a claim one
-- index probe instead of a scan of every delivery waiting in it.
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE fifo_seq IS NULL;
CREATE INDEX deliveries_line ON deliveries (endpoint_id, fifo_seq, event_id)
    WHERE fifo_seq IS NOT NULL;
CREATE INDEX endpoints_fifo ON endpoints (id) WHERE ordering = 'fifo';

-- Live leases per endpoint and organization, which the claim counts for the caps: only
-- in-flight rows are in it, so counting costs what is in flight, not the queue.
CREATE INDEX deliveries_in_flight ON deliveries (endpoint_id) WHERE state = 'in_flight';
