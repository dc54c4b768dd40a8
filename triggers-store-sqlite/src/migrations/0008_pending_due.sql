-- Leases leave the claim index (issue 17).
--
-- `deliveries_pending_due` is `deliveries_endpoint_due` restricted to pending rows
-- (`state = 0`). A claim used to move a leased row within the claim index (from its due time to
-- its lease expiry) and its completion removed it from there: two index changes per delivery.
-- Now a claim only removes the row from the index, and the completion has nothing to do there.
-- Leases, live or expired, are found through `deliveries_leased`, which a claim reads anyway
-- to count the live ones; an expired lease is claimable again from there (`ops::claim`).
DROP INDEX deliveries_endpoint_due;
CREATE INDEX deliveries_pending_due ON deliveries (endpoint_seq, due_at)
    WHERE line IS NULL AND state = 0;
