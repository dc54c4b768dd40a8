-- Schema version 1.
--
-- Conventions: ids are 16-byte UUID blobs; times are INTEGER unix microseconds; text is UTF-8.
-- Internal INTEGER `seq` keys (rowids) link tables; they never leave the store.

-- Organizations and the SHA-256 hash of their current API key.
CREATE TABLE organizations (
    id          BLOB PRIMARY KEY NOT NULL,
    name        TEXT NOT NULL,
    tier        TEXT NOT NULL,
    key_hash    BLOB NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
) WITHOUT ROWID;

-- Webhook endpoints. `prev_secret` is a rotated-out secret still valid until `prev_valid_until`.
CREATE TABLE endpoints (
    seq               INTEGER PRIMARY KEY,
    id                BLOB NOT NULL UNIQUE,
    org_id            BLOB NOT NULL,
    url               TEXT NOT NULL,
    type_filter       TEXT,
    secret            TEXT NOT NULL,
    prev_secret       TEXT,
    prev_valid_until  INTEGER,
    enabled           INTEGER NOT NULL DEFAULT 1,
    disabled_reason   TEXT,
    failing_since     INTEGER,
    created_at        INTEGER NOT NULL
);
CREATE INDEX endpoints_by_org ON endpoints (org_id, enabled);

-- Events. `status`: 0 pending, 1 delivered, 2 failed. `payload` is the JSON text as received.
CREATE TABLE events (
    seq           INTEGER PRIMARY KEY,
    id            BLOB NOT NULL UNIQUE,
    org_id        BLOB NOT NULL,
    event_type    TEXT NOT NULL,
    payload       TEXT NOT NULL,
    dedup_id      TEXT,
    status        INTEGER NOT NULL,
    created_at    INTEGER NOT NULL,
    delivered_at  INTEGER
);
-- The inbox: one organization's events of one status in id (= creation) order. Also covers
-- the per-status counts of `stats`.
CREATE INDEX events_inbox ON events (org_id, status, id);
-- Delivered events by age, for the retention purge. Partial: pending events (the bulk of
-- inserts) never touch it.
CREATE INDEX events_delivered ON events (created_at) WHERE status = 1;

-- The dedup window: the latest event stored under each (organization, dedup id). Kept apart
-- from `events` so that purging events does not forget dedup ids, and so that an entry older
-- than the window can be taken over (REPLACE gives the new entry a new, larger seq, which keeps
-- `seq` order close to `created_at` order for the retention purge).
CREATE TABLE dedup (
    seq         INTEGER PRIMARY KEY,
    org_id      BLOB NOT NULL,
    dedup_id    TEXT NOT NULL,
    event_id    BLOB NOT NULL,
    event_type  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (org_id, dedup_id)
);

-- Outstanding deliveries only: a delivery row is deleted when it is delivered, failed or
-- cancelled. `state`: 0 pending, 1 in flight (leased). `due_at` is the claim key: the next
-- attempt's time while pending, the lease expiry while in flight, so one index finds both
-- due and expired-lease deliveries. `claimed_due` remembers `due_at` at the last claim.
CREATE TABLE deliveries (
    id            BLOB PRIMARY KEY NOT NULL,
    event_seq     INTEGER NOT NULL,
    endpoint_seq  INTEGER NOT NULL,
    state         INTEGER NOT NULL,
    attempt       INTEGER NOT NULL,
    due_at        INTEGER NOT NULL,
    claimed_due   INTEGER,
    lease_owner   BLOB
) WITHOUT ROWID;
CREATE INDEX deliveries_due ON deliveries (due_at);
CREATE INDEX deliveries_by_event ON deliveries (event_seq);
CREATE INDEX deliveries_leased ON deliveries (event_seq) WHERE state = 1;

-- Finished delivery attempts, in insertion (= time) order per event.
CREATE TABLE attempts (
    seq          INTEGER PRIMARY KEY,
    event_seq    INTEGER NOT NULL,
    endpoint_id  BLOB NOT NULL,
    at           INTEGER NOT NULL,
    status_code  INTEGER,
    latency_ms   INTEGER NOT NULL,
    error        TEXT
);
CREATE INDEX attempts_by_event ON attempts (event_seq);
