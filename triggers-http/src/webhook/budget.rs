//! A budget of open outbound connections, kept by closing the least recently used idle one.
//!
//! The pool bounds idle connections per host (`pool_max_idle_per_host`, for
//! `pool_idle_timeout`), not in total. An organization whose endpoints point at many hosts or
//! ports (50 endpoints on 50 ports of one server are 50 hosts to the pool), or that repoints
//! them, leaves idle sockets behind on every one of them, and enough of them run the process
//! out of file descriptors: then no tenant's request is even accepted.
//!
//! [`Budgeted`] counts every connection the deliverer has open or is opening. A connection
//! over the budget first closes the *idle* connection used least recently, so the count
//! stays within the budget plus the connections being opened at that moment. Idle means
//! known to carry no request: the deliverer marks a connection in use ([`send`]) from the
//! moment the pool hands it out until the answer's body is read, and a connection made less
//! than [`FRESH`] ago that has not carried a request yet is left alone (it was made for one).
//! Nothing the receiver sends or makes the client send (pings, TLS key updates, session
//! tickets) changes that, so a receiver can neither pin its connections nor get another's
//! closed in the middle of a request. When every counted connection is in use, the attempt is
//! deferred (`Deferred`: no attempt used up, the endpoint not blamed) instead of opening one
//! more. The connections that get closed are the ones used least recently: a busy endpoint
//! keeps its connections, and an organization that scatters its deliveries over many hosts
//! mostly closes its own.
//!
//! Closing works through the connection's reads: an evicted connection's next read (the
//! pool's connection task keeps one pending on every idle connection, to notice the peer
//! closing) ends the stream, and hyper drops the connection, which frees its place.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use hyper_util::client::legacy::connect::{CaptureConnection, Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Every connection is in use: none could be closed to make room for another.
#[derive(Debug, thiserror::Error)]
#[error("all {0} outbound connections (TRIGGERS_WEBHOOK_MAX_CONNECTIONS) are in use")]
pub(crate) struct BudgetFull(usize);

/// The count of open outbound connections and the ones that may be closed.
pub(crate) struct Budget {
    max: usize,
    /// Counts uses of every connection: the order of last uses (a clock would tie).
    uses: AtomicU64,
    started: Instant,
    /// When [`warn_full`](Self::warn_full) last warned, in seconds since `started` (0: never).
    warned: AtomicU64,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Connections open or being opened (each holds a [`Ticket`]).
    open: usize,
    next_id: u64,
    /// The open connections, by id.
    slots: HashMap<u64, Arc<Slot>>,
}

/// How long a new connection that has not carried a request yet is kept from eviction: it
/// was made for a request, which the pool is about to hand it (or it went to the pool idle
/// because another connection freed up first).
pub(crate) const FRESH: Duration = Duration::from_secs(1);

/// What the budget knows of one open connection.
struct Slot {
    /// When a request last started or ended on it: the budget's use count then.
    last_used: AtomicU64,
    /// Requests on it now (marked by [`send`]).
    requests: AtomicUsize,
    /// It has carried a request: no longer fresh.
    served: AtomicBool,
    /// When it was made.
    made: Instant,
    /// The budget closed it: its reads end the stream.
    evicted: AtomicBool,
    /// The task reading it, woken when it is evicted.
    reader: AtomicWaker,
}

impl Slot {
    /// Whether the budget may close it now.
    fn idle(&self) -> bool {
        !self.evicted.load(Ordering::Acquire)
            && self.requests.load(Ordering::Acquire) == 0
            && (self.served.load(Ordering::Acquire) || self.made.elapsed() >= FRESH)
    }
}

impl Budget {
    /// A budget of `max` connections (at least 1).
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            uses: AtomicU64::new(0),
            started: Instant::now(),
            warned: AtomicU64::new(0),
            state: Mutex::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Says that the budget is full of busy connections, at most once a minute (a flood of
    /// deferrals must not flood the log).
    fn warn_full(&self) {
        let now = self.started.elapsed().as_secs().max(1);
        let last = self.warned.load(Ordering::Relaxed);
        let due = last == 0 || now >= last + 60;
        if due
            && self.warned.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            tracing::warn!(
                max = self.max,
                "every outbound webhook connection waits for an answer: \
                new connections are deferred (TRIGGERS_WEBHOOK_MAX_CONNECTIONS)"
            );
        }
    }

    /// The next use's place in the order of uses.
    fn tick(&self) -> u64 {
        self.uses.fetch_add(1, Ordering::Relaxed)
    }

    /// Connections open or being opened now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.state().open
    }

    /// A place for one more connection; over the budget, the idle connection used least
    /// recently is closed for it first (it frees its place once hyper drops it).
    pub(crate) fn reserve(self: &Arc<Self>) -> Result<Ticket, BudgetFull> {
        let mut state = self.state();
        if state.open >= self.max {
            let idle = state
                .slots
                .values()
                .filter(|s| s.idle())
                .min_by_key(|s| s.last_used.load(Ordering::Acquire));
            let Some(idle) = idle else {
                drop(state);
                self.warn_full();
                return Err(BudgetFull(self.max));
            };
            idle.evicted.store(true, Ordering::Release);
            idle.reader.wake();
            tracing::debug!(
                max = self.max,
                "outbound connection budget: closed the idle connection used least recently"
            );
        }
        state.open += 1;
        Ok(Ticket { budget: self.clone(), slot: None })
    }
}

/// One place in the budget: given back when dropped (a failed connection attempt, or the
/// connection it was attached to closing).
pub(crate) struct Ticket {
    budget: Arc<Budget>,
    slot: Option<(u64, Arc<Slot>)>,
}

impl Ticket {
    /// Counts `io`, a connection just made, in the budget.
    pub(crate) fn attach<T>(mut self, io: T) -> Counted<T> {
        let slot = Arc::new(Slot {
            last_used: AtomicU64::new(self.budget.tick()),
            requests: AtomicUsize::new(0),
            served: AtomicBool::new(false),
            made: Instant::now(),
            evicted: AtomicBool::new(false),
            reader: AtomicWaker::new(),
        });
        let mut state = self.budget.state();
        let id = state.next_id;
        state.next_id += 1;
        state.slots.insert(id, slot.clone());
        drop(state);
        self.slot = Some((id, slot.clone()));
        Counted { io, slot, _ticket: self }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.budget.state();
        state.open = state.open.saturating_sub(1);
        if let Some((id, _)) = &self.slot {
            state.slots.remove(id);
        }
    }
}

/// A connection counted in a [`Budget`].
pub(crate) struct Counted<T> {
    io: T,
    slot: Arc<Slot>,
    _ticket: Ticket,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.slot.reader.register(cx.waker());
        if this.slot.evicted.load(Ordering::Acquire) {
            return Poll::Ready(Ok(())); // the end of the stream: hyper closes the connection
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.slot.evicted.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut this.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.slot.evicted.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        Pin::new(&mut this.io).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        // The pool hands this to whoever captures the connection a request gets ([`send`]).
        let slot = SlotRef { slot: self.slot.clone(), budget: self._ticket.budget.clone() };
        self.io.connected().extra(slot)
    }
}

/// A counted connection, as its [`Connected`] carries it.
#[derive(Clone)]
struct SlotRef {
    slot: Arc<Slot>,
    budget: Arc<Budget>,
}

/// A request on a counted connection: the connection is not closed for another while this
/// lives (hold it until the answer's body is read).
pub(crate) struct InUse {
    slot: Arc<Slot>,
    budget: Arc<Budget>,
}

impl InUse {
    /// Marks the connection `connected` describes in use, if it is a counted one.
    fn of(connected: &Connected) -> Option<Self> {
        let mut extras = http::Extensions::new();
        connected.get_extras(&mut extras);
        let SlotRef { slot, budget } = extras.get::<SlotRef>()?.clone();
        slot.requests.fetch_add(1, Ordering::AcqRel);
        slot.served.store(true, Ordering::Release);
        slot.last_used.store(budget.tick(), Ordering::Release);
        Some(Self { slot, budget })
    }
}

impl Drop for InUse {
    fn drop(&mut self) {
        self.slot.last_used.store(self.budget.tick(), Ordering::Release);
        self.slot.requests.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs `sending` (a request the client is making with `captured` from
/// [`capture_connection`](hyper_util::client::legacy::connect::capture_connection)) and
/// marks the connection the pool hands it in use as soon as it is handed out. Returns the
/// request's result and the mark, to hold until the answer's body is read.
pub(crate) async fn send<F: Future>(
    sending: F,
    captured: &mut CaptureConnection,
) -> (F::Output, Option<InUse>) {
    tokio::pin!(sending);
    let mut in_use = None;
    let mut waiting = true;
    loop {
        tokio::select! {
            biased;
            connected = captured.wait_for_connection_metadata(), if waiting => {
                in_use = connected.as_ref().and_then(InUse::of);
                waiting = false;
            }
            done = &mut sending => return (done, in_use),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A TCP connector whose connections count in a [`Budget`]: a place is taken before the
/// DNS lookup and the connect (none are made when the budget is full of busy connections)
/// and given back when the connection closes or the attempt fails.
#[derive(Clone)]
pub(crate) struct Budgeted<C> {
    pub(crate) inner: C,
    pub(crate) budget: Arc<Budget>,
}

impl<C> tower_service::Service<http::Uri> for Budgeted<C>
where
    C: tower_service::Service<http::Uri, Response = TokioIo<TcpStream>>,
    C::Error: Into<BoxError>,
    C::Future: Send + 'static,
{
    type Response = TokioIo<Counted<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let attempt = match self.budget.reserve() {
            Ok(ticket) => Ok((ticket, self.inner.call(uri))),
            Err(full) => Err(full),
        };
        Box::pin(async move {
            let (ticket, connecting) = attempt?;
            let stream = connecting.await.map_err(Into::into)?.into_inner();
            Ok(TokioIo::new(ticket.attach(stream)))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::connect::capture_connection;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    use super::*;
    use crate::webhook::client::{build, HttpsClient};
    use crate::webhook::ssrf::{AddressPolicy, PolicyResolver};
    use crate::webhook::WebhookConfig;

    /// A keep-alive HTTP/1.1 receiver on loopback that counts its connections, requests
    /// and closed connections; with `hold`, each answer waits for a notification.
    struct Receiver {
        port: u16,
        accepted: AtomicUsize,
        requests: AtomicUsize,
        closed: AtomicUsize,
        hold: Option<Notify>,
    }

    impl Receiver {
        async fn start(hold: bool) -> Arc<Self> {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let me = Arc::new(Self {
                port,
                accepted: AtomicUsize::new(0),
                requests: AtomicUsize::new(0),
                closed: AtomicUsize::new(0),
                hold: hold.then(Notify::new),
            });
            let receiver = me.clone();
            tokio::spawn(async move {
                while let Ok((socket, _)) = listener.accept().await {
                    receiver.accepted.fetch_add(1, Ordering::SeqCst);
                    tokio::spawn(receiver.clone().serve(socket));
                }
            });
            me
        }

        async fn serve(self: Arc<Self>, mut socket: TcpStream) {
            let mut buf = Vec::new();
            loop {
                // One request: headers, then a body of `content-length` bytes.
                let body_start = loop {
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break i + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    match socket.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            self.closed.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..body_start]).to_ascii_lowercase();
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                while buf.len() < body_start + length {
                    let mut chunk = [0u8; 4096];
                    let n = socket.read(&mut chunk).await.unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                }
                buf.drain(..body_start + length);
                self.requests.fetch_add(1, Ordering::SeqCst);
                if let Some(hold) = &self.hold {
                    // An interim answer first: bytes arrive on the connection while the
                    // request still waits for its answer.
                    if socket.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.is_err() {
                        return;
                    }
                    hold.notified().await;
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                if socket.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    }

    /// One request as the deliverer makes it: the connection in use until the body is read.
    async fn post(client: &HttpsClient, port: u16) -> Result<u16, String> {
        let mut request = http::Request::post(format!("http://127.0.0.1:{port}/hook"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let mut captured = capture_connection(&mut request);
        let (sent, in_use) = send(client.request(request), &mut captured).await;
        let response = sent.map_err(|e| format!("{e:?}"))?;
        assert!(in_use.is_some(), "the connection is marked in use");
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        Ok(status)
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        for _ in 0..400 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("timed out waiting until {what}");
    }

    fn client(max: usize) -> (HttpsClient, Arc<Budget>) {
        let policy = AddressPolicy::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let budget = Budget::new(max);
        let resolver = PolicyResolver::without_dns(policy);
        (build(&WebhookConfig::default(), resolver, budget.clone()).unwrap(), budget)
    }

    /// With two connections allowed, a third host closes the idle connection used least
    /// recently (not the one used since), and the budget holds. Without the budget the pool
    /// would keep all three for 90 s — or one per host of any number of hosts.
    #[tokio::test]
    async fn a_new_connection_closes_the_idle_one_used_least_recently() {
        let (client, budget) = client(2);
        let (a, b, c) = (
            Receiver::start(false).await,
            Receiver::start(false).await,
            Receiver::start(false).await,
        );
        assert_eq!(post(&client, a.port).await, Ok(200));
        assert_eq!(post(&client, b.port).await, Ok(200));
        assert_eq!(post(&client, a.port).await, Ok(200), "a is now the one used last");
        assert_eq!(budget.open(), 2);

        assert_eq!(post(&client, c.port).await, Ok(200));
        eventually("b's idle connection is closed", || b.closed.load(Ordering::SeqCst) == 1).await;
        eventually("its place is given back", || budget.open() == 2).await;
        assert_eq!(a.closed.load(Ordering::SeqCst), 0);
        assert_eq!(post(&client, a.port).await, Ok(200));
        assert_eq!(a.accepted.load(Ordering::SeqCst), 1, "a's connection was kept and reused");
        assert_eq!(a.requests.load(Ordering::SeqCst), 3);
    }

    /// A connection waiting for its answer is never closed for another, also when bytes
    /// arrived on it meanwhile (an interim `100 Continue` here; a TLS session ticket or an
    /// HTTP/2 ping in the wild): with every place taken by one, a new host's attempt fails
    /// at once (the deliverer defers it), and the waiting request still gets its answer.
    #[tokio::test]
    async fn a_connection_waiting_for_its_answer_is_never_closed() {
        let (client, budget) = client(1);
        let (slow, other) = (Receiver::start(true).await, Receiver::start(false).await);
        let waiting = {
            let client = client.clone();
            let port = slow.port;
            tokio::spawn(async move { post(&client, port).await })
        };
        eventually("the slow receiver has the request", || {
            slow.requests.load(Ordering::SeqCst) == 1
        })
        .await;
        let refused = post(&client, other.port).await.unwrap_err();
        assert!(refused.contains("BudgetFull"), "{refused}");
        assert_eq!(other.accepted.load(Ordering::SeqCst), 0, "no connection was made");
        slow.hold.as_ref().unwrap().notify_one();
        assert_eq!(waiting.await.unwrap(), Ok(200));
        assert_eq!(slow.closed.load(Ordering::SeqCst), 0);
        assert_eq!(budget.open(), 1);
    }
}
