//! A webhook receiver on loopback for the delivery benchmark: answers every POST with 200,
//! checks each Standard Webhooks signature, and counts distinct `webhook-id`s over time.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::standard_webhooks;
use crate::Error;

/// What the receiver has seen so far.
#[derive(Default)]
struct Seen {
    ids: HashSet<String>,
    requests: u64,
    bad_signatures: u64,
    /// When each distinct id arrived, relative to `started`, in order.
    arrivals: Vec<Duration>,
    /// Per load connection (`payload.c`), the last `payload.n` delivered for the first time.
    last_n: HashMap<u64, u64>,
    /// First deliveries whose `n` was below an earlier one of the same connection.
    out_of_order: u64,
}

/// A running receiver. Its signing key is set once the endpoint is registered.
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    started: Instant,
    key: Mutex<Option<Vec<u8>>>,
    seen: Mutex<Seen>,
}

/// A summary of the deliveries received.
pub(crate) struct Tally {
    pub(crate) distinct: u64,
    pub(crate) requests: u64,
    pub(crate) bad_signatures: u64,
    /// Time from the receiver's start to the last distinct delivery.
    pub(crate) last: Duration,
    /// Distinct deliveries per whole second after the first one, in order.
    pub(crate) per_second: Vec<u64>,
    /// First deliveries that overtook an earlier event of the same load connection (events
    /// carrying `payload.c`, as `--fifo` sends them; 0 when no event does).
    pub(crate) out_of_order: u64,
}

impl Receiver {
    /// Binds 127.0.0.1:0 and serves until the process ends.
    pub(crate) async fn start() -> Result<Arc<Self>, Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Arc::new(Self {
            addr: listener.local_addr()?,
            started: Instant::now(),
            key: Mutex::new(None),
            seen: Mutex::new(Seen::default()),
        });
        let r = receiver.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                let r = r.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let r = r.clone();
                        async move { Ok::<_, Infallible>(r.handle(req).await) }
                    });
                    let _ =
                        http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(receiver)
    }

    /// Sets the endpoint's `whsec_…` secret, which every delivery must be signed with.
    pub(crate) fn set_secret(&self, secret: &str) -> Result<(), Error> {
        let key = standard_webhooks::secret_key(secret)?;
        *self.key.lock().unwrap_or_else(PoisonError::into_inner) = Some(key);
        Ok(())
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
        };
        let (id, ts, signatures) =
            (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let valid = self.signed(&id, &ts, &body, &signatures);
        let at = self.started.elapsed();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.requests += 1;
        if !valid {
            seen.bad_signatures += 1;
        } else if seen.ids.insert(id) {
            seen.arrivals.push(at);
            if let Some((c, n)) = connection_and_n(&body) {
                match seen.last_n.insert(c, n) {
                    Some(previous) if previous > n => seen.out_of_order += 1,
                    _ => {}
                }
            }
        }
        Response::new(Full::new(Bytes::new()))
    }

    fn signed(&self, id: &str, ts: &str, body: &[u8], signatures: &str) -> bool {
        let key = self.key.lock().unwrap_or_else(PoisonError::into_inner);
        key.as_deref().is_some_and(|key| standard_webhooks::verify(key, id, ts, body, signatures))
    }

    /// Distinct deliveries so far.
    pub(crate) fn distinct(&self) -> u64 {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner).ids.len() as u64
    }

    /// Time since the receiver started.
    pub(crate) fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub(crate) fn tally(&self) -> Tally {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let first = seen.arrivals.first().copied().unwrap_or_default();
        let last = seen.arrivals.last().copied().unwrap_or_default();
        let mut per_second = vec![0u64; (last - first).as_secs() as usize + 1];
        for at in &seen.arrivals {
            per_second[(*at - first).as_secs() as usize] += 1;
        }
        Tally {
            distinct: seen.ids.len() as u64,
            requests: seen.requests,
            bad_signatures: seen.bad_signatures,
            last,
            per_second,
            out_of_order: seen.out_of_order,
        }
    }
}

/// `payload.c` and `payload.n` of a webhook body, if it has both.
fn connection_and_n(body: &[u8]) -> Option<(u64, u64)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    Some((v["payload"]["c"].as_u64()?, v["payload"]["n"].as_u64()?))
}
