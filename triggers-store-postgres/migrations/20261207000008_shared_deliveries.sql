-- A delivery whose event got another outstanding delivery after the delivery was claimed.
--
-- A completion takes the fast path (complete.rs) when its delivery was its event's only
-- outstanding one at the claim: it then marks the event delivered without looking for
-- others. `recover` queues a delivery for an event that may have one in flight; it first
-- sets `shared` on the event's outstanding deliveries, and the fast path's fence refuses a
-- shared delivery, whose completion then takes the general path (which locks the event and
-- decides with a fresh snapshot). A constant default: adding the column rewrites nothing.
ALTER TABLE deliveries ADD COLUMN shared boolean NOT NULL DEFAULT false;
