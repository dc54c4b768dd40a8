-- Delivery history (issue 14): one endpoint's attempts newest first, and its deliveries
-- newest event first, each read through an index on the endpoint so that a page costs what
-- it returns, never what other endpoints or organizations have accumulated.

-- An endpoint's attempts by time (`GET /api/webhooks/{id}/attempts`, `since`, cursor).
CREATE INDEX attempts_by_endpoint ON attempts (endpoint_id, at, seq);
-- Its successful attempts by event: the `delivered` deliveries. Partial: failed attempts
-- (the bulk of a failing endpoint's history) never touch it.
CREATE INDEX attempts_delivered ON attempts (endpoint_id, event_id, at) WHERE error IS NULL;
-- Its outstanding deliveries by event (failed ones: `failed_deliveries`' primary key).
CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_id, event_id);
