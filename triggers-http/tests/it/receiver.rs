//! A webhook receiver on 127.0.0.1 for end-to-end tests: answers each request as a test
//! function says, and records what arrived.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// What a receiver answers: `None` hangs (never answers), `Some(status)` answers after a
/// short pause (so overlapping requests would be seen overlapping).
type Reply = dyn Fn(&str, i64, usize) -> Option<u16> + Send + Sync;

/// Records `(path, payload n)` of every request in arrival order, and the most requests it
/// ever had open at once.
pub struct Receiver {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, i64, Instant)>>>,
    pub max_open: Arc<AtomicUsize>,
}

impl Receiver {
    pub async fn start(
        reply: impl Fn(&str, i64, usize) -> Option<u16> + Send + Sync + 'static,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (open, max_open) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let reply: Arc<Reply> = Arc::new(reply);
        let (seen2, max2) = (seen.clone(), max_open.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (seen, open, max_open, reply) =
                    (seen2.clone(), open.clone(), max2.clone(), reply.clone());
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (seen, open, max_open, reply) =
                        (seen.clone(), open.clone(), max_open.clone(), reply.clone());
                    async move {
                        let now_open = open.fetch_add(1, Ordering::SeqCst) + 1;
                        max_open.fetch_max(now_open, Ordering::SeqCst);
                        let path = req.uri().path().to_owned();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let body: Value = serde_json::from_slice(&body).unwrap();
                        let n = body["payload"]["n"].as_i64().unwrap();
                        let count = {
                            let mut seen = seen.lock().unwrap();
                            seen.push((path.clone(), n, Instant::now()));
                            seen.iter().filter(|(p, m, _)| *p == path && *m == n).count()
                        };
                        let status = match reply(&path, n, count) {
                            Some(status) => status,
                            None => std::future::pending().await,
                        };
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        open.fetch_sub(1, Ordering::SeqCst);
                        let response = http::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, seen, max_open }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn seen(&self) -> Vec<(String, i64, Instant)> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (up to 60 s) until `done` holds for what was seen.
    pub async fn until(&self, what: &str, done: impl Fn(&[(String, i64, Instant)]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(&self.seen()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", self.ns());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    pub fn ns(&self) -> Vec<i64> {
        self.seen().iter().map(|s| s.1).collect()
    }
}
