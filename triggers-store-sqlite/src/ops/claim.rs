//! `DeliveryQueue::claim`: which due deliveries a claim may lease under the organization and
//! endpoint caps, and their leases. Runs on the writer connection, inside the writer's
//! transaction, so its statements see one state and take effect together.
//!
//! A claim is a few small indexed statements, and the choice among their rows is made here.
//! It used to be one statement of common table expressions and window functions: SQLite gave
//! each materialized step its own temporary b-tree, each with a page cache allocated and
//! freed per claim, and that was about half of a claim's time (BENCHMARKS.md, "Issue #17").
//!
//! Top down:
//! 1. `busy`: the live leases (in flight, lease not expired) per endpoint and per
//!    organization, found through the partial index of leased rows, so they cost what is in
//!    flight, not the queue. The same walk collects the expired leases of parallel
//!    deliveries: claimable again, and not in the pending index of step 2 (a leased row
//!    leaves it, so that neither the claim nor the completion moves an index entry there;
//!    migration 0008).
//! 2. `open`: every endpoint with outstanding parallel deliveries and its earliest `due_at`
//!    (a loose scan of `deliveries_pending_due`, one index probe per endpoint, and its
//!    expired leases), kept if it is due, enabled and under its caps (an endpoint's cap: 1
//!    while failing — the circuit breaker —, else its own `concurrency`, or twice its own
//!    `rate_limit`, when lower than the claim's); per organization only as many, earliest first, as the organization has room
//!    for; then the `limit` earliest. No other endpoint can hold one of the `limit` earliest
//!    claimable deliveries: each endpoint kept has a claimable delivery no later than its
//!    first one (its own, or an earlier one of its organization). The deliveries of an
//!    endpoint or organization at its cap are never walked, however many wait.
//! 3. Candidates: the earliest due pending deliveries of each open endpoint, as many as its
//!    cap leaves room for, its expired leases, and the first delivery of each FIFO
//!    endpoint's line if it is due and that endpoint has nothing in flight.
//! 4. The candidates in due order, each taken while its organization and endpoint have room,
//!    up to `limit`; those are leased.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use rusqlite::{params, Connection};
use triggers_core::clock::add;
use triggers_core::store::{ClaimRequest, Delivery, StoreResult};
use triggers_core::{DeliveryId, EndpointId, EventId, OrganizationId, Secret, Timestamp};
use uuid::Uuid;

use crate::codec::{self, micros, query_opt};
use crate::error::{corrupt, SqlResultExt};
use crate::ops::lifecycle;

/// What a claim took.
#[derive(Default)]
pub(crate) struct Claimed {
    /// The leased deliveries, earliest due first.
    pub(crate) deliveries: Vec<Delivery>,
    /// Whether one of them is the head of a FIFO endpoint's line. Such a claim is answered
    /// only once it is on the disk: its predecessor's completion committed before it, so
    /// after a power loss the line can never have moved on while its predecessor is still
    /// outstanding. Other claims are answered at `COMMIT` (a lost lease is only a repeat).
    pub(crate) hands_out_a_line_head: bool,
}

/// `DeliveryQueue::claim`.
pub(crate) fn claim(conn: &Connection, req: ClaimRequest) -> StoreResult<Claimed> {
    let now = micros(req.now);
    let lease_until = add(req.now, req.lease);
    let picked = pick(conn, &req, now)?;
    let hands_out_a_line_head = picked.iter().any(|c| c.head);

    let mut lease = conn
        .prepare_cached(
            "UPDATE deliveries
             SET state = 1, attempt = attempt + 1, lease_owner = ?2, claimed_due = due_at,
                 due_at = ?3
             WHERE endpoint_seq = ?1 AND event_seq = ?4",
        )
        .store()?;
    let mut event = conn
        .prepare_cached(
            "SELECT id, org_id, event_type, payload, created_at FROM events WHERE seq = ?1",
        )
        .store()?;
    let mut targets: HashMap<i64, Option<Target>> = HashMap::new();
    let mut out = Vec::with_capacity(picked.len());
    for c in picked {
        let leased = lease
            .execute(params![
                c.endpoint_seq,
                req.owner.0.as_bytes(),
                micros(lease_until),
                c.event_seq
            ])
            .store()?;
        if leased == 0 {
            continue;
        }
        let ev = query_opt(&mut event, [c.event_seq], |row| {
            Ok((
                EventId(codec::uuid(row, 0)?),
                OrganizationId(codec::uuid(row, 1)?),
                codec::text(row, 2)?,
                codec::payload(row, 3)?,
                codec::ts(row, 4)?,
            ))
        })?;
        let t = match targets.get(&c.endpoint_seq) {
            Some(t) => t.clone(),
            None => {
                let t = target(conn, c.endpoint_seq, now)?;
                targets.insert(c.endpoint_seq, t.clone());
                t
            }
        };
        let (Some((event_id, organization_id, event_type, payload, created_at)), Some(t)) = (ev, t)
        else {
            // Cannot happen through this store's own writes; drop the orphan so it cannot
            // block the queue.
            tracing::warn!(delivery = %c.id, "dropping a delivery whose event or endpoint is gone");
            conn.prepare_cached(
                "DELETE FROM deliveries WHERE endpoint_seq = ?1 AND event_seq = ?2",
            )
            .store()?
            .execute([c.endpoint_seq, c.event_seq])
            .store()?;
            continue;
        };
        out.push(Delivery {
            id: DeliveryId(c.id),
            attempt: c.attempt.saturating_add(1),
            lease_owner: req.owner,
            lease_expires_at: lease_until,
            event_id,
            organization_id,
            event_type,
            payload,
            created_at,
            endpoint_id: t.id,
            url: t.url,
            secrets: t.secrets,
            endpoint_failing_since: t.failing_since,
            headers: t.headers,
            endpoint_rate_limit: t.rate_limit,
            endpoint_concurrency: t.concurrency,
        });
    }
    Ok(Claimed { deliveries: out, hands_out_a_line_head })
}

/// A due delivery the claim may take.
struct Candidate {
    id: Uuid,
    due_at: i64,
    event_seq: i64,
    endpoint_seq: i64,
    /// Its attempt number before this claim.
    attempt: u32,
    org: Uuid,
    /// Its endpoint's cap for this claim.
    cap: u64,
    /// The head of a FIFO line.
    head: bool,
}

/// A lease that has expired: its delivery may be claimed again.
struct Expired {
    id: Uuid,
    due_at: i64,
    event_seq: i64,
    attempt: u32,
}

/// Live leases per endpoint and per organization.
#[derive(Default)]
struct Busy {
    endpoints: HashMap<i64, u64>,
    orgs: HashMap<Uuid, u64>,
}

impl Busy {
    fn endpoint(&self, seq: i64) -> u64 {
        self.endpoints.get(&seq).copied().unwrap_or(0)
    }

    fn org(&self, org: &Uuid) -> u64 {
        self.orgs.get(org).copied().unwrap_or(0)
    }
}

/// What the caps need to know about an endpoint.
struct EndpointCaps {
    org: Uuid,
    enabled: bool,
    failing: bool,
    concurrency: Option<i64>,
    rate_limit: Option<i64>,
}

impl EndpointCaps {
    /// Its cap for a parallel delivery under a claim's endpoint cap `claim_cap`.
    fn cap(&self, claim_cap: u64) -> u64 {
        if self.failing {
            return 1;
        }
        let own = self.concurrency.map_or(claim_cap, |c| u64::try_from(c).unwrap_or(0));
        // Twice its own rate (`DeliveryQueue::claim`): more would only be put back.
        let paced =
            self.rate_limit.map_or(claim_cap, |r| u64::try_from(r).unwrap_or(0).saturating_mul(2));
        own.min(paced).min(claim_cap).max(1)
    }
}

/// The endpoints a claim looked at, each read once.
#[derive(Default)]
struct Endpoints(HashMap<i64, Option<EndpointCaps>>);

impl Endpoints {
    fn get(&mut self, conn: &Connection, seq: i64) -> StoreResult<Option<&EndpointCaps>> {
        let found = match self.0.entry(seq) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => {
                let mut stmt = conn
                    .prepare_cached(
                        "SELECT org_id, enabled, failing_since IS NOT NULL, concurrency,
                                rate_limit
                         FROM endpoints WHERE seq = ?1",
                    )
                    .store()?;
                new.insert(query_opt(&mut stmt, [seq], |row| {
                    Ok(EndpointCaps {
                        org: codec::uuid(row, 0)?,
                        enabled: codec::int(row, 1)? != 0,
                        failing: codec::int(row, 2)? != 0,
                        concurrency: codec::opt_int(row, 3)?,
                        rate_limit: codec::opt_int(row, 4)?,
                    })
                })?)
            }
        };
        Ok(found.as_ref())
    }
}

/// Steps 1 – 4 of the module docs: the deliveries to lease, earliest due first.
fn pick(conn: &Connection, req: &ClaimRequest, now: i64) -> StoreResult<Vec<Candidate>> {
    let limit = usize::try_from(req.limit).unwrap_or(usize::MAX);
    let org_cap = u64::from(req.org_concurrency);
    let claim_cap = u64::from(req.endpoint_concurrency);
    let mut endpoints = Endpoints::default();

    // 1. busy, and the expired leases of parallel deliveries (claimable again)
    let mut busy = Busy::default();
    let mut expired: HashMap<i64, Vec<Expired>> = HashMap::new();
    let mut leased = conn
        .prepare_cached(
            "SELECT endpoint_seq, due_at, id, event_seq, attempt, line IS NULL
             FROM deliveries INDEXED BY deliveries_leased WHERE state = 1",
        )
        .store()?;
    let mut rows = leased.query([]).store()?;
    while let Some(row) = rows.next().store()? {
        let (seq, due_at) = (codec::int(row, 0)?, codec::int(row, 1)?);
        if due_at > now {
            *busy.endpoints.entry(seq).or_default() += 1;
        } else if codec::int(row, 5)? != 0 {
            // (An expired head of a FIFO line is found through its line in step 3.)
            expired.entry(seq).or_default().push(Expired {
                id: codec::uuid(row, 2)?,
                due_at,
                event_seq: codec::int(row, 3)?,
                attempt: codec::unsigned(row, 4)?,
            });
        }
    }
    drop(rows);
    for (&seq, &n) in &busy.endpoints {
        if let Some(e) = endpoints.get(conn, seq)? {
            *busy.orgs.entry(e.org).or_default() += n;
        }
    }

    // 2. open: (first due, endpoint, organization, cap). An endpoint's first due delivery is
    // its earliest pending one or its earliest expired lease.
    let mut first: BTreeMap<i64, i64> = BTreeMap::new();
    let mut next = conn
        .prepare_cached(
            "SELECT endpoint_seq, due_at FROM deliveries INDEXED BY deliveries_pending_due
             WHERE line IS NULL AND state = 0 AND endpoint_seq > ?1
             ORDER BY endpoint_seq, due_at LIMIT 1",
        )
        .store()?;
    let mut after = i64::MIN;
    while let Some((seq, first_due)) =
        query_opt(&mut next, [after], |r| Ok((codec::int(r, 0)?, codec::int(r, 1)?)))?
    {
        after = seq;
        first.insert(seq, first_due);
    }
    for (&seq, leases) in &expired {
        let earliest = leases.iter().map(|l| l.due_at).min().unwrap_or(now);
        first.entry(seq).and_modify(|d| *d = (*d).min(earliest)).or_insert(earliest);
    }
    let mut open = Vec::new();
    for (seq, first_due) in first {
        if first_due > now {
            continue;
        }
        let Some(e) = endpoints.get(conn, seq)? else { continue };
        let cap = e.cap(claim_cap);
        if e.enabled && busy.org(&e.org) < org_cap && busy.endpoint(seq) < cap {
            open.push((first_due, seq, e.org, cap));
        }
    }
    open.sort_unstable_by_key(|&(first_due, seq, ..)| (first_due, seq));
    let mut room: HashMap<Uuid, u64> = HashMap::new();
    open.retain(|(_, _, org, _)| {
        let left = room.entry(*org).or_insert_with(|| org_cap - busy.org(org));
        *left > 0 && {
            *left -= 1;
            true
        }
    });
    open.truncate(limit);

    // 3. candidates
    let mut candidates = Vec::new();
    let mut parallel = conn
        .prepare_cached(
            "SELECT d.id, d.due_at, d.event_seq, d.attempt
             FROM deliveries d INDEXED BY deliveries_pending_due
             WHERE d.endpoint_seq = ?1 AND d.line IS NULL AND d.state = 0 AND d.due_at <= ?2
             ORDER BY d.due_at LIMIT ?3",
        )
        .store()?;
    let candidate = |row: &rusqlite::Row<'_>| {
        Ok((
            codec::uuid(row, 0)?,
            codec::int(row, 1)?,
            codec::int(row, 2)?,
            codec::unsigned::<u32>(row, 3)?,
        ))
    };
    for &(_, seq, org, cap) in &open {
        let room = cap.saturating_sub(busy.endpoint(seq)).min(req.limit.into());
        let take = i64::try_from(room).unwrap_or(i64::MAX);
        let mut rows = parallel.query(params![seq, now, take]).store()?;
        while let Some(row) = rows.next().store()? {
            let (id, due_at, event_seq, attempt) = candidate(row)?;
            let endpoint_seq = seq;
            candidates.push(Candidate {
                id,
                due_at,
                event_seq,
                endpoint_seq,
                attempt,
                org,
                cap,
                head: false,
            });
        }
        drop(rows);
        for l in expired.remove(&seq).unwrap_or_default() {
            candidates.push(Candidate {
                id: l.id,
                due_at: l.due_at,
                event_seq: l.event_seq,
                endpoint_seq: seq,
                attempt: l.attempt,
                org,
                cap,
                head: false,
            });
        }
    }
    let mut fifo = conn
        .prepare_cached(
            "SELECT seq, org_id FROM endpoints INDEXED BY endpoints_fifo
             WHERE ordering = 1 AND enabled = 1",
        )
        .store()?;
    let mut line_head = conn
        .prepare_cached(
            "SELECT id, due_at, event_seq, attempt FROM deliveries INDEXED BY deliveries_line
             WHERE endpoint_seq = ?1 AND line IS NOT NULL ORDER BY line LIMIT 1",
        )
        .store()?;
    let mut rows = fifo.query([]).store()?;
    while let Some(row) = rows.next().store()? {
        let (seq, org) = (codec::int(row, 0)?, codec::uuid(row, 1)?);
        if busy.endpoint(seq) > 0 || busy.org(&org) >= org_cap {
            continue;
        }
        let Some((id, due_at, event_seq, attempt)) = query_opt(&mut line_head, [seq], candidate)?
        else {
            continue;
        };
        if due_at <= now {
            candidates.push(Candidate {
                id,
                due_at,
                event_seq,
                endpoint_seq: seq,
                attempt,
                org,
                cap: 1,
                head: true,
            });
        }
    }
    drop(rows);

    // 4. take
    candidates.sort_unstable_by_key(|c| (c.due_at, c.id));
    let mut taken_by_org: HashMap<Uuid, u64> = HashMap::new();
    let mut taken_by_endpoint: HashMap<i64, u64> = HashMap::new();
    candidates.retain(|c| {
        let org_n = taken_by_org.entry(c.org).or_insert_with(|| busy.org(&c.org));
        let ep_n = taken_by_endpoint
            .entry(c.endpoint_seq)
            .or_insert_with(|| busy.endpoint(c.endpoint_seq));
        if *org_n >= org_cap || *ep_n >= c.cap {
            return false;
        }
        *org_n += 1;
        *ep_n += 1;
        true
    });
    candidates.truncate(limit);
    Ok(candidates)
}

/// What a claim needs to know about an endpoint.
#[derive(Clone)]
struct Target {
    id: EndpointId,
    url: String,
    secrets: Vec<Secret>,
    failing_since: Option<Timestamp>,
    headers: Vec<(String, String)>,
    rate_limit: Option<u32>,
    concurrency: Option<u32>,
}

fn target(conn: &Connection, seq: i64, now: i64) -> StoreResult<Option<Target>> {
    let mut stmt = conn
        .prepare_cached(
            // Issue 14: headers, rate_limit and concurrency travel with each delivery.
            "SELECT id, url, secret, prev_secret, prev_valid_until, failing_since,
                    headers, rate_limit, concurrency
             FROM endpoints WHERE seq = ?1",
        )
        .store()?;
    query_opt(&mut stmt, [seq], |row| {
        let mut secrets = vec![Secret::parse(codec::text(row, 2)?).map_err(corrupt)?];
        if let (Some(prev), Some(until)) = (codec::opt_text(row, 3)?, codec::opt_int(row, 4)?) {
            if now < until {
                secrets.push(Secret::parse(prev).map_err(corrupt)?);
            }
        }
        Ok(Target {
            id: EndpointId(codec::uuid(row, 0)?),
            url: codec::text(row, 1)?,
            secrets,
            failing_since: codec::opt_ts(row, 5)?,
            headers: lifecycle::decode_headers(codec::opt_text(row, 6)?)?,
            rate_limit: codec::opt_int(row, 7)?.and_then(|v| u32::try_from(v).ok()),
            concurrency: codec::opt_int(row, 8)?.and_then(|v| u32::try_from(v).ok()),
        })
    })
}
