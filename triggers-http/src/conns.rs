//! The server's table of live connections: a cap per peer, and which connections are idle,
//! so that at the global cap an idle keep-alive connection is closed before a new connection
//! is refused. A peer is an IPv4 address or an IPv6 /64 network ([`peer_of`]): one client
//! usually holds a whole /64, so counting IPv6 addresses one by one would give it no cap.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::Notify;

/// Live connections, by id, and how many each peer address holds.
pub(crate) struct ConnTable {
    inner: Mutex<Inner>,
    per_peer_max: usize,
    epoch: Instant,
}

#[derive(Default)]
struct Inner {
    per_peer: HashMap<IpAddr, usize>,
    live: HashMap<u64, Arc<ConnState>>,
    next_id: u64,
}

/// What the table knows about one connection; shared with its task.
pub(crate) struct ConnState {
    /// Requests being handled right now.
    busy: AtomicUsize,
    /// When the connection last became idle, in ms since the table's epoch.
    idle_since_ms: AtomicU64,
    /// Asked to close: set once, so a connection is not picked twice.
    evicting: AtomicBool,
    /// Fired when the connection should close gracefully (it is idle).
    pub(crate) evict: Notify,
}

/// A connection's entry; removes it (and its peer count) from the table when dropped.
pub(crate) struct ConnGuard {
    table: Arc<ConnTable>,
    id: u64,
    peer: IpAddr,
    /// The connection's shared state.
    pub(crate) state: Arc<ConnState>,
}

/// Marks a request in progress on a connection until dropped.
pub(crate) struct Busy {
    table: Arc<ConnTable>,
    state: Arc<ConnState>,
}

impl ConnTable {
    /// A table allowing `per_peer_max` connections per peer address.
    pub(crate) fn new(per_peer_max: usize) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner::default()),
            per_peer_max: per_peer_max.max(1),
            epoch: Instant::now(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The table holds counters only; a panic elsewhere cannot leave it inconsistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Registers a new connection from `addr`, or `None` if its peer ([`peer_of`]) already
    /// holds its cap.
    pub(crate) fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<ConnGuard> {
        let peer = peer_of(addr);
        let state = Arc::new(ConnState {
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(self.now_ms()),
            evicting: AtomicBool::new(false),
            evict: Notify::new(),
        });
        let mut inner = self.lock();
        let count = inner.per_peer.entry(peer).or_insert(0);
        if *count >= self.per_peer_max {
            return None;
        }
        *count += 1;
        let id = inner.next_id;
        inner.next_id += 1;
        inner.live.insert(id, state.clone());
        drop(inner);
        Some(ConnGuard { table: self.clone(), id, peer, state })
    }

    /// Asks the connection that has been idle longest (no request in progress) to close.
    /// `false` if every connection is busy.
    pub(crate) fn evict_idle(&self) -> bool {
        let inner = self.lock();
        let victim = inner
            .live
            .values()
            .filter(|c| c.busy.load(Ordering::Acquire) == 0 && !c.evicting.load(Ordering::Acquire))
            .min_by_key(|c| c.idle_since_ms.load(Ordering::Relaxed))
            .cloned();
        drop(inner);
        match victim {
            Some(c) => {
                c.evicting.store(true, Ordering::Release);
                c.evict.notify_one();
                true
            }
            None => false,
        }
    }

    /// Connections currently held by the peer of `addr`.
    #[cfg(test)]
    fn held_by(&self, addr: IpAddr) -> usize {
        self.lock().per_peer.get(&peer_of(addr)).copied().unwrap_or(0)
    }
}

impl ConnGuard {
    /// Marks a request in progress until the returned value is dropped.
    pub(crate) fn busy(&self) -> Busy {
        self.state.busy.fetch_add(1, Ordering::AcqRel);
        Busy { table: self.table.clone(), state: self.state.clone() }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.state.idle_since_ms.store(self.table.now_ms(), Ordering::Relaxed);
        self.state.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut inner = self.table.lock();
        inner.live.remove(&self.id);
        if let Some(count) = inner.per_peer.get_mut(&self.peer) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                inner.per_peer.remove(&self.peer);
            }
        }
    }
}

/// The peer a connection from `addr` counts against: an IPv4 address (also when written as
/// an IPv4-mapped IPv6 address), or the /64 network of an IPv6 address.
pub(crate) fn peer_of(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_peers_are_counted_by_their_64_network() {
        let table = ConnTable::new(2);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _one = table.admit(ip("2001:db8:1:2::1")).unwrap();
        let _two = table.admit(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")).unwrap();
        assert!(table.admit(ip("2001:db8:1:2::7")).is_none(), "the same /64");
        assert!(table.admit(ip("2001:db8:1:3::1")).is_some(), "the next /64");
        let _v4 = table.admit(ip("192.0.2.1")).unwrap();
        let _mapped = table.admit(ip("::ffff:192.0.2.1")).unwrap();
        assert!(table.admit(ip("192.0.2.1")).is_none(), "a mapped address is its IPv4 address");
        assert!(table.admit(ip("192.0.2.2")).is_some());
    }

    #[test]
    fn peers_are_capped_and_released() {
        let table = ConnTable::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        let first = table.admit(a).unwrap();
        let _second = table.admit(a).unwrap();
        assert!(table.admit(a).is_none(), "a third connection from one peer");
        let _other = table.admit(b).unwrap();
        drop(first);
        assert_eq!(table.held_by(a), 1);
        assert!(table.admit(a).is_some());
    }

    #[test]
    fn the_longest_idle_connection_is_evicted_never_a_busy_one() {
        let table = ConnTable::new(10);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let old = table.admit(ip).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        let newer = table.admit(ip).unwrap();
        let working = old.busy();
        assert!(table.evict_idle());
        assert!(newer.state.evicting.load(Ordering::Acquire), "the idle one is picked");
        assert!(!old.state.evicting.load(Ordering::Acquire), "a busy one is not");
        assert!(!table.evict_idle(), "nothing else is idle");
        drop(working);
        assert!(table.evict_idle());
        assert!(old.state.evicting.load(Ordering::Acquire));
    }
}
