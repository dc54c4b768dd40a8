-- This database's node id: the lease owner its delivery workers use in every run, so that a
-- restart can end at once the leases a crashed run left behind (DeliveryQueue::node_id).
-- One row, written on first open (the store fills it in with a random UUID).
CREATE TABLE node (
    id BLOB NOT NULL
);
