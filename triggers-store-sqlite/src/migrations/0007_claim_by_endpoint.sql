-- Claims find due parallel deliveries per endpoint (issue 13, finished).
--
-- `deliveries_endpoint_due` orders the parallel deliveries of each endpoint by `due_at`: a
-- claim visits each endpoint with outstanding deliveries once (a loose scan: the first entry
-- after the previous endpoint), then takes the earliest due deliveries of those under their
-- caps. The deliveries of an endpoint or organization at its cap are never walked, however
-- many wait. It replaces `deliveries_due` (due time only), which made a claim visit every
-- waiting delivery of a capped endpoint that came due before the others' deliveries.
--
-- (Numbered 0007: 0006 is another change's, made at the same time.)
DROP INDEX deliveries_due;
CREATE INDEX deliveries_endpoint_due ON deliveries (endpoint_seq, due_at) WHERE line IS NULL;
