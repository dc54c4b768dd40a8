//! A budget of open outbound connections, kept by closing the least recently used idle one.
//!
//! The pool bounds idle connections per host (`pool_max_idle_per_host`, for
//! `pool_idle_timeout`), not in total. An organization whose endpoints point at many hosts or
//! ports (50 endpoints on 50 ports of one server are 50 hosts to the pool), or that repoints
//! them, leaves idle sockets behind on every one of them, and enough of them run the process
//! out of file descriptors: then no tenant's request is even accepted.
//!
//! [`Budgeted`] counts every connection the deliverer has open or is opening. A connection
//! over the budget first closes the *idle* connection used least recently — one whose last
//! I/O read a response; a connection that sent a request and waits for its answer is never
//! closed — so the count stays within the budget plus the connections being opened at that
//! moment. When every counted connection waits for an answer, the attempt fails at once (a
//! `Retry`) instead of opening one more. The connections that get closed are the ones used
//! least recently: a busy endpoint keeps its connections, and an organization that scatters
//! its deliveries over many hosts mostly closes its own.
//!
//! Closing works through the connection's reads: an evicted connection's next read (the
//! pool's connection task keeps one pending on every idle connection, to notice the peer
//! closing) ends the stream, and hyper drops the connection, which frees its place.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use atomic_waker::AtomicWaker;
use hyper_util::client::legacy::connect::{Connected, Connection};
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

/// What the budget knows of one open connection.
struct Slot {
    /// When it last moved bytes: the budget's use count then.
    last_used: AtomicU64,
    /// It wrote a request and has not read from the answer yet.
    awaiting: AtomicBool,
    /// The budget closed it: its reads end the stream.
    evicted: AtomicBool,
    /// The task reading it, woken when it is evicted.
    reader: AtomicWaker,
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
                .filter(|s| {
                    !s.awaiting.load(Ordering::Acquire) && !s.evicted.load(Ordering::Acquire)
                })
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
            // A new connection is made to send a request.
            awaiting: AtomicBool::new(true),
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

impl<T> Counted<T> {
    fn used(&self) {
        self.slot.last_used.store(self._ticket.budget.tick(), Ordering::Release);
    }

    /// After a write: bytes sent mean a request waiting for its answer.
    fn wrote(&self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.slot.awaiting.store(true, Ordering::Release);
            self.used();
        }
    }
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
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.slot.awaiting.store(false, Ordering::Release);
            this.used();
        }
        read
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
        let written = Pin::new(&mut this.io).poll_write(cx, data);
        this.wrote(&written);
        written
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
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, data);
        this.wrote(&written);
        written
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
        self.io.connected()
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
    use http_body_util::Full;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio::sync::Notify;

    use super::*;
    use crate::webhook::client::{build, HttpsClient};
    use crate::webhook::ssrf::AddressPolicy;
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
                    hold.notified().await;
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                if socket.write_all(answer).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn post(client: &HttpsClient, port: u16) -> Result<u16, String> {
        let request = http::Request::post(format!("http://127.0.0.1:{port}/hook"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .unwrap();
        let response = client.request(request).await.map_err(|e| format!("{e:?}"))?;
        Ok(response.status().as_u16())
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
        (build(&WebhookConfig::default(), policy, budget.clone()).unwrap(), budget)
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

    /// A connection waiting for its answer is never closed for another: with every place
    /// taken by one, a new host's attempt fails at once (the delivery is retried later),
    /// and the waiting request still gets its answer.
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
