//! The inbox: an organization's events page by page, oldest first, by status or across
//! every status (`status=all`: the store lists one status at a time, in id order, so one
//! page of each is merged by id).

use super::{Cursor, Ingestor};
use crate::deliver::Deliverer;
use crate::domain::event::{Event, EventStatus};
use crate::domain::org::Organization;
use crate::domain::validate::ValidationError;
use crate::domain::webhook::TypeGlob;
use crate::domain::{EventId, OrganizationId};
use crate::error::Result;
use crate::store::{page_item_size, EventStore, ListQuery, Page};

/// What to list from the inbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxQuery {
    /// Only events with this status (default `pending`); `None`: every status.
    pub status: Option<EventStatus>,
    /// Only events whose type matches this glob.
    pub type_glob: Option<TypeGlob>,
    /// Page size, 1–1000 (default 100).
    pub limit: u32,
    /// Where to continue: the previous page's `next_cursor`.
    pub cursor: Option<String>,
}

impl Default for InboxQuery {
    fn default() -> Self {
        Self { status: Some(EventStatus::Pending), type_glob: None, limit: 100, cursor: None }
    }
}

/// One inbox page, oldest event first.
#[derive(Debug, Clone)]
pub struct InboxPage {
    /// The events, in ascending id (= creation) order.
    pub events: Vec<Event>,
    /// The cursor for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

impl<S: EventStore, D: Deliverer> Ingestor<S, D> {
    /// A page of the inbox, oldest first; follow `next_cursor` for the next page. Paging
    /// visits every matching event exactly once, also while new events arrive. A page holds
    /// at most `query.limit` events and ends early at `IngestorConfig::max_page_bytes`.
    pub async fn inbox(&self, org: &Organization, query: InboxQuery) -> Result<InboxPage> {
        if !(1..=1000).contains(&query.limit) {
            return Err(ValidationError::Field {
                field: "limit",
                reason: "must be between 1 and 1000".into(),
            }
            .into());
        }
        let after = query.cursor.as_deref().map(Cursor::decode).transpose()?;
        let max_bytes = self.inner.config.max_page_bytes;
        self.at_store(org, move |this, org| async move {
            let store = &this.inner.store;
            let Some(status) = query.status else {
                return every_status(store, org.id, query, after, max_bytes).await;
            };
            let type_glob = query.type_glob;
            let list = ListQuery { status, type_glob, limit: query.limit, after, max_bytes };
            let page = store.list_events(org.id, &list).await?;
            Ok(InboxPage { events: page.items, next_cursor: page.next_after.map(Cursor::encode) })
        })
        .await
    }
}

/// A page of `org`'s events of every status after `after`, ascending id, with the inbox's
/// guarantees: at most `query.limit` events, at most `max_bytes` (but at least one event),
/// and every event visited exactly once by following the cursor.
///
/// Each status's page gets a third of the byte budget, so the three pages together hold no
/// more than one page would. The merge stops at the first point where a status page ended
/// with more to come (its next event could sort before the others' remaining ones): the
/// cursor is then the last event taken, and the next call reads on from there.
async fn every_status<S: EventStore>(
    store: &S,
    org: OrganizationId,
    query: InboxQuery,
    after: Option<EventId>,
    max_bytes: u64,
) -> Result<InboxPage> {
    let share = (max_bytes / 3).max(1);
    let mut pages: Vec<Page<Event>> = Vec::with_capacity(3);
    for status in [EventStatus::Pending, EventStatus::Delivered, EventStatus::Failed] {
        let list = ListQuery {
            status,
            type_glob: query.type_glob.clone(),
            limit: query.limit,
            after,
            max_bytes: share,
        };
        pages.push(store.list_events(org, &list).await?);
    }
    // Events past the smallest "more follows" boundary are left for the next page: what that
    // status holds beyond its page could come before them.
    let horizon = pages.iter().filter_map(|p| p.next_after.and(p.items.last()).map(|e| e.id)).min();
    let mut events: Vec<Event> = pages
        .into_iter()
        .flat_map(|p| p.items)
        .filter(|e| horizon.map_or(true, |h| e.id <= h))
        .collect();
    events.sort_unstable_by_key(|e| e.id);
    // An event whose status changed between the three reads may be listed twice.
    events.dedup_by_key(|e| e.id);
    let mut more = horizon.is_some() || events.len() > query.limit as usize;
    events.truncate(query.limit as usize);
    let mut size = 0u64;
    let mut keep = 0;
    for e in &events {
        size += page_item_size(&e.event_type, e.payload.get(), e.dedup_id.as_deref());
        if keep > 0 && size > max_bytes {
            more = true;
            break;
        }
        keep += 1;
    }
    events.truncate(keep);
    let next_cursor = if more { events.last().map(|e| Cursor::encode(e.id)) } else { None };
    Ok(InboxPage { events, next_cursor })
}
