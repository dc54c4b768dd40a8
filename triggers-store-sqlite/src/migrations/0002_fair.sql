-- Fair claiming and FIFO endpoints (issue 13).
--
-- `endpoints.ordering`: 0 parallel, 1 fifo. `deliveries.line`: the place of an ordered
-- delivery (one queued while its endpoint was fifo) in its endpoint's line, NULL for a
-- parallel one; the smallest outstanding `line` of an endpoint is the head, the only one a
-- claim may take. Parallel deliveries are found through `deliveries_due` (now partial), heads
-- through `deliveries_line`, so a long line costs a claim one index probe, not a scan.
ALTER TABLE endpoints ADD COLUMN ordering INTEGER NOT NULL DEFAULT 0;
ALTER TABLE deliveries ADD COLUMN line INTEGER;
DROP INDEX deliveries_due;
CREATE INDEX deliveries_due ON deliveries (due_at) WHERE line IS NULL;
CREATE INDEX deliveries_line ON deliveries (endpoint_seq, line) WHERE line IS NOT NULL;
CREATE INDEX endpoints_fifo ON endpoints (seq) WHERE ordering = 1;
