//! A webhook receiver on loopback for the delivery benchmark: answers every POST with 200,
//! checks each Standard Webhooks signature, and counts distinct deliveries over time. Endpoint
//! `i` of the run is the path `/hook/{i}` with its own secret; a delivery is distinct by
//! (endpoint, `webhook-id`).

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
    ids: HashSet<(usize, String)>,
    requests: u64,
    bad_signatures: u64,
    /// When each distinct id arrived, relative to `started`, in order.
    arrivals: Vec<Duration>,
    /// Per endpoint and load connection (`payload.c`), the last `payload.n` delivered for the
    /// first time.
    last_n: HashMap<(usize, u64), u64>,
    /// First deliveries whose `n` was below an earlier one of the same connection.
    out_of_order: u64,
}

/// A running receiver. The signing key of each endpoint is set once it is registered.
pub(crate) struct Receiver {
    pub(crate) addr: SocketAddr,
    started: Instant,
    keys: Mutex<Vec<Option<Vec<u8>>>>,
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
    /// First deliveries that overtook an earlier event of the same load connection at the
    /// same endpoint (events carrying `payload.c`, as `--fifo` sends them; 0 when no event
    /// does).
    pub(crate) out_of_order: u64,
}

impl Receiver {
    /// Binds 127.0.0.1:0 and serves until the process ends.
    pub(crate) async fn start() -> Result<Arc<Self>, Error> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let receiver = Arc::new(Self {
            addr: listener.local_addr()?,
            started: Instant::now(),
            keys: Mutex::new(Vec::new()),
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

    /// The URL of endpoint `i` of the run: at this receiver's address, or at `host` (a name
    /// for it) and its port.
    pub(crate) fn url(&self, i: usize, host: Option<&str>) -> String {
        match host {
            None => format!("http://{}/hook/{i}", self.addr),
            Some(host) => format!("http://{host}:{}/hook/{i}", self.addr.port()),
        }
    }

    /// Sets endpoint `i`'s `whsec_…` secret, which every delivery to it must be signed with.
    pub(crate) fn set_secret(&self, i: usize, secret: &str) -> Result<(), Error> {
        let key = standard_webhooks::secret_key(secret)?;
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if keys.len() <= i {
            keys.resize(i + 1, None);
        }
        keys[i] = Some(key);
        Ok(())
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let header = |name: &str| {
            req.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
        };
        let (id, ts, signatures) =
            (header("webhook-id"), header("webhook-timestamp"), header("webhook-signature"));
        let endpoint = req.uri().path().strip_prefix("/hook/").and_then(|i| i.parse().ok());
        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let endpoint = endpoint.unwrap_or(usize::MAX);
        let valid = self.signed(endpoint, &id, &ts, &body, &signatures);
        let at = self.started.elapsed();
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.requests += 1;
        if !valid {
            seen.bad_signatures += 1;
        } else if seen.ids.insert((endpoint, id)) {
            seen.arrivals.push(at);
            if let Some((c, n)) = connection_and_n(&body) {
                match seen.last_n.insert((endpoint, c), n) {
                    Some(previous) if previous > n => seen.out_of_order += 1,
                    _ => {}
                }
            }
        }
        Response::new(Full::new(Bytes::new()))
    }

    fn signed(&self, endpoint: usize, id: &str, ts: &str, body: &[u8], signatures: &str) -> bool {
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        let key = keys.get(endpoint).and_then(Option::as_deref);
        key.is_some_and(|key| standard_webhooks::verify(key, id, ts, body, signatures))
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
