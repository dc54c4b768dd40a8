//! Delivery history on the [`Ingestor`]: an endpoint's attempts, and the deliveries of one
//! endpoint or of the whole organization, each page newest first with an opaque cursor.
//!
//! The organization-wide delivery list merges the per-endpoint lists of the store
//! ([`DeliveryHistory::endpoint_deliveries`]): it reads a small chunk of each endpoint
//! (the organization has at most `StoreLimits::max_endpoints` of them) and refills an
//! endpoint's chunk only when the merge has used it up, so a page costs about
//! `limit + endpoints × chunk` rows however much history there is.

use std::collections::VecDeque;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use super::Ingestor;
use crate::clock::{self, Timestamp};
use crate::deliver::Deliverer;
use crate::domain::org::Organization;
use crate::domain::validate::ValidationError;
use crate::domain::EndpointId;
use crate::error::{Error, Result};
use crate::store::{
    AttemptEntry, AttemptPosition, AttemptQuery, DeliveryEntry, DeliveryHistory, DeliveryQuery,
    DeliveryStatus, EventStore,
};

/// What to list of an endpoint's attempts
/// ([`Ingestor::endpoint_attempts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptsQuery {
    /// `Some(true)`: successful attempts only; `Some(false)`: failed ones only.
    pub success: Option<bool>,
    /// Only attempts that finished at or after this time.
    pub since: Option<Timestamp>,
    /// Page size, 1–1000 (default 100).
    pub limit: u32,
    /// Where to continue: the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl Default for AttemptsQuery {
    fn default() -> Self {
        Self { success: None, since: None, limit: 100, cursor: None }
    }
}

/// One page of an endpoint's attempts, newest first.
#[derive(Debug, Clone)]
pub struct AttemptsPage {
    /// The attempts, newest first.
    pub attempts: Vec<AttemptEntry>,
    /// The cursor for the next (older) page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// What to list of the organization's deliveries ([`Ingestor::deliveries`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveriesQuery {
    /// Only this endpoint's deliveries (`None`: every endpoint of the organization).
    pub endpoint: Option<EndpointId>,
    /// Only deliveries with this status (`None`: all).
    pub status: Option<DeliveryStatus>,
    /// Page size, 1–1000 (default 100).
    pub limit: u32,
    /// Where to continue: the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl Default for DeliveriesQuery {
    fn default() -> Self {
        Self { endpoint: None, status: None, limit: 100, cursor: None }
    }
}

/// One page of deliveries, newest event first (for one event, by endpoint id, descending).
#[derive(Debug, Clone)]
pub struct DeliveriesPage {
    /// The deliveries.
    pub deliveries: Vec<DeliveryEntry>,
    /// The cursor for the next (older) page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// The first byte of an attempts cursor, so that a delivery cursor is refused there.
const ATTEMPTS_TAG: u8 = b'a';
/// The first byte of a deliveries cursor.
const DELIVERIES_TAG: u8 = b'd';

/// Rows read per endpoint at a time when merging several endpoints' deliveries.
const MERGE_CHUNK: u32 = 32;

fn invalid_cursor() -> Error {
    ValidationError::Field { field: "cursor", reason: "invalid cursor".into() }.into()
}

fn check_limit(limit: u32) -> Result<()> {
    if (1..=1000).contains(&limit) {
        return Ok(());
    }
    Err(ValidationError::Field { field: "limit", reason: "must be between 1 and 1000".into() }
        .into())
}

/// Decodes a cursor: its tag, then exactly `N` bytes.
fn decode<const N: usize>(tag: u8, text: &str) -> Result<[u8; N]> {
    let bytes = URL_SAFE_NO_PAD.decode(text).map_err(|_| invalid_cursor())?;
    match bytes.split_first() {
        Some((t, rest)) if *t == tag => rest.try_into().map_err(|_| invalid_cursor()),
        _ => Err(invalid_cursor()),
    }
}

fn encode(tag: u8, parts: &[&[u8]]) -> String {
    let mut bytes = vec![tag];
    for part in parts {
        bytes.extend_from_slice(part);
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

fn attempts_cursor(p: AttemptPosition) -> String {
    encode(ATTEMPTS_TAG, &[&p.at.timestamp_micros().to_be_bytes(), &p.seq.to_be_bytes()])
}

fn attempts_position(text: &str) -> Result<AttemptPosition> {
    let bytes: [u8; 16] = decode(ATTEMPTS_TAG, text)?;
    let (at, seq) = bytes.split_at(8);
    let at = i64::from_be_bytes(at.try_into().map_err(|_| invalid_cursor())?);
    let seq = u64::from_be_bytes(seq.try_into().map_err(|_| invalid_cursor())?);
    // Our cursors carry attempt times, 1970 to 9999. A well-formed one beyond (crafted:
    // PostgreSQL refuses times before 4713 BC) is taken as the nearest end of that range,
    // which lists nothing (before 1970) or everything (after 9999): never a store error.
    let at = at.clamp(0, clock::YEAR_9999_END_MICROS);
    Ok(AttemptPosition { at: clock::from_micros(at), seq })
}

/// A place in the merged delivery order: (event position, endpoint id), both descending.
type DeliveryKey = (u128, EndpointId);

fn deliveries_cursor((position, endpoint): DeliveryKey) -> String {
    encode(DELIVERIES_TAG, &[&position.to_be_bytes(), endpoint.0.as_bytes()])
}

fn deliveries_key(text: &str) -> Result<DeliveryKey> {
    let bytes: [u8; 32] = decode(DELIVERIES_TAG, text)?;
    let (position, endpoint) = bytes.split_at(16);
    let position = u128::from_be_bytes(position.try_into().map_err(|_| invalid_cursor())?);
    let endpoint = uuid::Uuid::from_slice(endpoint).map_err(|_| invalid_cursor())?;
    Ok((position, EndpointId(endpoint)))
}

/// One endpoint's side of the merge: a chunk of its entries (newest first) and where to
/// continue.
struct Source {
    endpoint: EndpointId,
    buffer: VecDeque<DeliveryEntry>,
    before: Option<u128>,
    exhausted: bool,
}

impl<S: EventStore, D: Deliverer> Ingestor<S, D> {
    /// A page of an endpoint's delivery attempts, newest first (by finishing time), each with
    /// its event, status code, latency and error; follow `next_cursor` for older ones.
    /// `NotFound` for an unknown or foreign endpoint; `Invalid` for a bad limit or cursor.
    pub async fn endpoint_attempts(
        &self,
        org: &Organization,
        endpoint: EndpointId,
        query: AttemptsQuery,
    ) -> Result<AttemptsPage> {
        check_limit(query.limit)?;
        let before = query.cursor.as_deref().map(attempts_position).transpose()?;
        self.at_store(org, move |this, org| async move {
            this.attempts_at_store(&org, endpoint, query, before).await
        })
        .await
    }

    /// [`endpoint_attempts`](Self::endpoint_attempts) once the organization has its place
    /// at the store.
    async fn attempts_at_store(
        &self,
        org: &Organization,
        endpoint: EndpointId,
        query: AttemptsQuery,
        before: Option<AttemptPosition>,
    ) -> Result<AttemptsPage> {
        let store_query = AttemptQuery {
            success: query.success,
            since: query.since,
            before,
            limit: query.limit + 1,
        };
        let mut attempts = self
            .inner
            .store
            .endpoint_attempts(org.id, endpoint, &store_query)
            .await?
            .ok_or(Error::NotFound)?;
        let next_cursor = if attempts.len() > query.limit as usize {
            attempts.truncate(query.limit as usize);
            attempts.last().map(|a| attempts_cursor(a.position))
        } else {
            None
        };
        Ok(AttemptsPage { attempts, next_cursor })
    }

    /// A page of the organization's deliveries (of one endpoint, or of all of them), newest
    /// event first, each with its status: pending, in flight, delivered or failed (see
    /// [`DeliveryHistory::endpoint_deliveries`]). `NotFound` when `query.endpoint` is
    /// unknown or foreign; `Invalid` for a bad limit or cursor.
    pub async fn deliveries(
        &self,
        org: &Organization,
        query: DeliveriesQuery,
    ) -> Result<DeliveriesPage> {
        check_limit(query.limit)?;
        let after = query.cursor.as_deref().map(deliveries_key).transpose()?;
        self.at_store(org, move |this, org| async move {
            this.deliveries_at_store(&org, query, after).await
        })
        .await
    }

    /// [`deliveries`](Self::deliveries) once the organization has its place at the store.
    async fn deliveries_at_store(
        &self,
        org: &Organization,
        query: DeliveriesQuery,
        after: Option<(u128, EndpointId)>,
    ) -> Result<DeliveriesPage> {
        let store = &self.inner.store;
        // One endpoint: its first read says whether it is the organization's (no lookup first).
        let mut endpoints: Vec<EndpointId> = match query.endpoint {
            Some(id) => vec![id],
            None => store.endpoints(org.id).await?.into_iter().map(|e| e.id).collect(),
        };
        endpoints.sort_unstable_by(|a, b| b.cmp(a));
        let wanted = query.limit as usize + 1;
        let chunk = if endpoints.len() == 1 { query.limit + 1 } else { MERGE_CHUNK };
        let mut sources: Vec<Source> = endpoints
            .into_iter()
            .map(|endpoint| Source {
                endpoint,
                buffer: VecDeque::new(),
                // Below the cursor in (position, endpoint) order: an endpoint after the
                // cursor's in the descending order may still list the cursor's event.
                before: after.map(|(p, ep)| if endpoint < ep { p.saturating_add(1) } else { p }),
                exhausted: false,
            })
            .collect();
        for source in &mut sources {
            let found = self.refill(org, source, query.status, chunk).await?;
            if !found && query.endpoint.is_some() {
                return Err(Error::NotFound);
            }
        }
        let mut page: Vec<DeliveryEntry> = Vec::with_capacity(wanted);
        while page.len() < wanted {
            // The source whose next entry comes first: largest (position, endpoint).
            let next = sources
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.buffer.front().map(|e| ((e.position, s.endpoint), i)))
                .max_by_key(|(key, _)| *key);
            let Some((_, i)) = next else { break };
            let source = &mut sources[i];
            if let Some(entry) = source.buffer.pop_front() {
                page.push(entry);
            }
            if source.buffer.is_empty() && !source.exhausted {
                self.refill(org, source, query.status, chunk).await?;
            }
        }
        let next_cursor = if page.len() > query.limit as usize {
            page.truncate(query.limit as usize);
            page.last().map(|e| deliveries_cursor((e.position, e.endpoint_id)))
        } else {
            None
        };
        Ok(DeliveriesPage { deliveries: page, next_cursor })
    }

    /// Reads the next chunk of one endpoint's deliveries into its buffer; `false` when the
    /// endpoint is unknown or foreign (then it has nothing to give: one deleted since the list
    /// was read just ends).
    async fn refill(
        &self,
        org: &Organization,
        source: &mut Source,
        status: Option<DeliveryStatus>,
        chunk: u32,
    ) -> Result<bool> {
        let q = DeliveryQuery { status, before: source.before, limit: chunk };
        let Some(got) = self.inner.store.endpoint_deliveries(org.id, source.endpoint, &q).await?
        else {
            source.exhausted = true;
            return Ok(false);
        };
        source.exhausted = got.len() < chunk as usize;
        if let Some(last) = got.last() {
            source.before = Some(last.position);
        }
        source.buffer.extend(got);
        Ok(true)
    }
}
