-- triggers: initial schema.
--
-- No foreign keys: rows are written in bulk by one statement per batch, and referential
-- integrity is kept by the store's statements themselves (fan-out joins lock endpoints
-- FOR KEY SHARE so a concurrent delete cannot leave orphaned deliveries).

CREATE TABLE organizations (
    id          uuid        PRIMARY KEY,
    name        text        NOT NULL,
    tier        text        NOT NULL,
    key_hash    bytea       NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL
);

CREATE TABLE endpoints (
    seq                   bigserial   NOT NULL,
    id                    uuid        PRIMARY KEY,
    organization_id       uuid        NOT NULL,
    url                   text        NOT NULL,
    type_filter           text,
    -- type_filter as a LIKE pattern (ESCAPE '\'), NULL = every type.
    filter_like           text,
    secret                text        NOT NULL,
    previous_secret       text,
    previous_valid_until  timestamptz,
    enabled               boolean     NOT NULL DEFAULT true,
    disabled_reason       text,
    failing_since         timestamptz,
    created_at            timestamptz NOT NULL
);
CREATE INDEX endpoints_org ON endpoints (organization_id, created_at, seq);

CREATE TABLE events (
    id               uuid        PRIMARY KEY,
    organization_id  uuid        NOT NULL,
    event_type       text        NOT NULL,
    -- The JSON text exactly as received (validated before it gets here).
    payload          text        NOT NULL,
    dedup_id         text,
    status           text        NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    created_at       timestamptz NOT NULL,
    delivered_at     timestamptz
);
CREATE INDEX events_inbox ON events (organization_id, status, id);

-- One row per (organization, dedup id): the event that owns the id. A row older than the
-- caller's dedup window is taken over by the next insert with that id.
CREATE TABLE dedup (
    organization_id  uuid        NOT NULL,
    dedup_id         text        NOT NULL,
    event_id         uuid        NOT NULL,
    event_type       text        NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (organization_id, dedup_id)
);

-- Outstanding deliveries only: a delivery's row is deleted when it finishes (delivered,
-- failed), is cancelled (replay, endpoint deletion); its history lives in `attempts`. Deleting
-- writes no index entries, where marking the row finished would insert into every index.
CREATE TABLE deliveries (
    -- The event id's 48-bit time prefix and random bits (see triggers_delivery_id), so new ids are
    -- appended to the primary key's right edge like the (UUID v7) event ids.
    id                uuid        PRIMARY KEY,
    event_id          uuid        NOT NULL,
    organization_id   uuid        NOT NULL,
    endpoint_id       uuid        NOT NULL,
    -- pending | in_flight
    state             text        NOT NULL CHECK (state IN ('pending', 'in_flight')),
    attempt           integer     NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL,
    -- When the delivery is next claimable: next_attempt_at while pending, the lease's expiry
    -- while in flight.
    due_at            timestamptz NOT NULL,
    lease_owner       uuid,
    lease_expires_at  timestamptz
);
-- The due queue: every delivery, by the time it becomes claimable.
CREATE INDEX deliveries_due ON deliveries (due_at);
-- "Has this event outstanding deliveries?" (completion) and replay's cancellation.
CREATE INDEX deliveries_event ON deliveries (event_id);
CREATE INDEX deliveries_org_in_flight ON deliveries (organization_id) WHERE state = 'in_flight';
-- A queue table: every delivery is updated and deleted and leaves dead row versions at the
-- head of the due index, so vacuum and analyze it far more often than the defaults. Pages are
-- filled to 60 % so that a claim's new row version (not HOT: due_at and state are indexed)
-- stays on its page instead of every concurrent claimer appending to the table's last page.
ALTER TABLE deliveries SET (
    fillfactor = 60,
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    autovacuum_vacuum_cost_delay = 0
);

-- A delivery id for `event_id`: its time-ordered first 48 bits, then random bits.
CREATE FUNCTION triggers_delivery_id(event_id uuid) RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE
AS $$ SELECT (left(event_id::text, 14) || right(gen_random_uuid()::text, 22))::uuid $$;

CREATE TABLE attempts (
    event_id     uuid        NOT NULL,
    seq          bigserial   NOT NULL,
    endpoint_id  uuid        NOT NULL,
    at           timestamptz NOT NULL,
    status_code  integer,
    latency_ms   bigint      NOT NULL,
    error        text,
    PRIMARY KEY (event_id, seq)
);

-- GCRA state of the shared rate limiter: the theoretical arrival time in Unix nanoseconds.
-- UNLOGGED: no WAL and no fsync per check; after a crash the table is empty, which only
-- gives every organization a full allowance again.
CREATE UNLOGGED TABLE rate_limits (
    organization_id  uuid   PRIMARY KEY,
    tat_ns           bigint NOT NULL
);
