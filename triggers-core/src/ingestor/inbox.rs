//! The inbox across every status (`status=all`): the store lists one status at a time, in
//! id order, so one page of each is merged by id.

use super::{Cursor, InboxPage, InboxQuery};
use crate::domain::event::{Event, EventStatus};
use crate::domain::{EventId, OrganizationId};
use crate::error::Result;
use crate::store::{page_item_size, EventStore, ListQuery, Page};

/// A page of `org`'s events of every status after `after`, ascending id, with the inbox's
/// guarantees: at most `query.limit` events, at most `max_bytes` (but at least one event),
/// and every event visited exactly once by following the cursor.
///
/// Each status's page gets a third of the byte budget, so the three pages together hold no
/// more than one page would. The merge stops at the first point where a status page ended
/// with more to come (its next event could sort before the others' remaining ones): the
/// cursor is then the last event taken, and the next call reads on from there.
pub(super) async fn every_status<S: EventStore>(
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
