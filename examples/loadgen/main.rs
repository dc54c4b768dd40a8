//! An HTTP load generator for `POST /api/events`: N keep-alive connections, each sending one
//! request at a time with a unique dedup id, for a fixed duration or request count. Prints
//! requests per second, latency percentiles and status counts.
//!
//! ```text
//! # terminal 1: a server whose enterprise tier will not throttle the run
//! TRIGGERS_TIER_LIMITS=enterprise=1000000000 RUST_LOG=warn \
//!     cargo run --release --example server
//! # terminal 2
//! cargo run --release --example loadgen -- --connections 64 --duration 10s
//! ```
//!
//! Options: `--url` (default `http://127.0.0.1:8080`), `--connections` (16), `--duration`
//! (10s), `--requests` (stop after this many instead), `--warmup` (1s, not measured),
//! `--payload-bytes` (100), `--key` (an API key; by default a new enterprise organization is
//! created, with `TRIGGERS_ADMIN_TOKEN` as bearer token if set), `--threads` (runtime
//! worker threads, default: the number of CPUs), `--get PATH` (send `GET PATH` instead, to
//! measure the HTTP layer alone, e.g. `--get /health`).
//!
//! `--webhook` measures delivery end to end instead: the load generator also runs a webhook
//! receiver on 127.0.0.1 (answering 200 and checking every signature), registers it as the
//! organization's endpoint, sends events as above (no warm-up), then waits until every
//! accepted event has reached the receiver and prints deliveries per second from the first
//! request to the last delivery. The server must allow loopback targets and not throttle:
//!
//! ```text
//! TRIGGERS_WEBHOOK_ALLOW=127.0.0.0/8 TRIGGERS_TIER_LIMITS=enterprise=1000000000 RUST_LOG=warn \
//!     cargo run --release --example server
//! cargo run --release --example loadgen -- --webhook --connections 16 --duration 10s
//! ```
//!
//! `--endpoints N` (with `--webhook`, default 1) registers N endpoints of the organization at
//! the receiver (up to the server's `TRIGGERS_MAX_ENDPOINTS`, 50 by default): every event
//! fans out to all of them, and the run waits for N deliveries per accepted event. It
//! measures what fan-out costs the ingest and the delivery path.
//!
//! `--receiver-host NAME` (with `--webhook`) registers the receiver as `http://NAME:PORT/…`
//! instead of `http://127.0.0.1:PORT/…`, e.g. `localhost`: the server then looks the name up
//! for its deliveries, which measures what that costs.
//!
//! `--batch N` sends `POST /api/events/batch` with N events per request instead (each event
//! as above) and also prints events per second; with `--webhook` every event of an accepted
//! batch is expected at the receiver.
//!
//! `--fifo` (with `--webhook`) registers the endpoint with `"ordering": "fifo"`: the rate is
//! then that of one ordered line. Each event also carries its connection's number, and the
//! receiver counts deliveries that overtook an earlier event of the same connection (a
//! connection sends its next event only after the previous one was accepted, so a FIFO line
//! holds them in that order); it must print `out_of_order=0`.

mod receiver;

#[path = "../support/standard_webhooks.rs"]
mod standard_webhooks;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper::Request;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// `println!` that ignores a closed stdout (`loadgen … | head -1` must not panic).
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

type Error = Box<dyn std::error::Error + Send + Sync>;

struct Args {
    host: String,
    connections: usize,
    duration: Duration,
    requests: Option<u64>,
    warmup: Duration,
    payload_bytes: usize,
    key: Option<String>,
    threads: usize,
    get: Option<String>,
    webhook: bool,
    fifo: bool,
    endpoints: usize,
    batch: Option<usize>,
    receiver_host: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, Error> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse()?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => return Err(format!("bad duration {s:?}").into()),
    })
}

fn parse_args() -> Result<Args, Error> {
    let mut a = Args {
        host: "127.0.0.1:8080".into(),
        connections: 16,
        duration: Duration::from_secs(10),
        requests: None,
        warmup: Duration::from_secs(1),
        payload_bytes: 100,
        key: None,
        threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        get: None,
        webhook: false,
        fifo: false,
        endpoints: 1,
        batch: None,
        receiver_host: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => {
                let url = value()?;
                let host = url.strip_prefix("http://").ok_or("--url must be http://HOST:PORT")?;
                a.host = host.trim_end_matches('/').to_owned();
            }
            "--connections" | "-c" => a.connections = value()?.parse()?,
            "--duration" | "-d" => a.duration = parse_duration(&value()?)?,
            "--requests" | "-n" => a.requests = Some(value()?.parse()?),
            "--warmup" => a.warmup = parse_duration(&value()?)?,
            "--payload-bytes" => a.payload_bytes = value()?.parse()?,
            "--key" => a.key = Some(value()?),
            "--threads" => a.threads = value()?.parse()?,
            "--get" => a.get = Some(value()?),
            "--webhook" => a.webhook = true,
            "--fifo" => a.fifo = true,
            "--endpoints" => a.endpoints = value()?.parse()?,
            "--batch" => a.batch = Some(value()?.parse()?),
            "--receiver-host" => a.receiver_host = Some(value()?),
            "-h" | "--help" => {
                out!("see the doc comment of examples/loadgen/main.rs for the options");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    if a.fifo && !a.webhook {
        return Err("--fifo needs --webhook".into());
    }
    if a.endpoints != 1 && !a.webhook {
        return Err("--endpoints needs --webhook".into());
    }
    if a.receiver_host.is_some() && !a.webhook {
        return Err("--receiver-host needs --webhook".into());
    }
    if a.endpoints == 0 {
        return Err("--endpoints must be at least 1".into());
    }
    if a.webhook {
        if a.get.is_some() {
            return Err("--webhook and --get exclude each other".into());
        }
        a.warmup = Duration::ZERO; // Every accepted event must be delivered and counted.
    }
    if matches!(a.batch, Some(n) if n == 0 || n > 1000) {
        return Err("--batch takes 1 to 1000 events".into());
    }
    if a.batch.is_some() && a.get.is_some() {
        return Err("--batch and --get exclude each other".into());
    }
    if a.connections == 0 {
        return Err("--connections must be at least 1".into());
    }
    Ok(a)
}

/// One keep-alive connection.
struct Conn {
    host: String,
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(host: &str) -> Result<Self, Error> {
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        Ok(Self { host: host.to_owned(), sender })
    }

    async fn post(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<(u16, Bytes), Error> {
        self.send("POST", path, headers, body).await
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: String,
    ) -> Result<(u16, Bytes), Error> {
        let mut req = Request::builder().method(method).uri(path).header("host", &self.host);
        if !body.is_empty() {
            req = req.header("content-type", "application/json");
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        self.sender.ready().await?;
        let res = self.sender.send_request(req.body(Full::new(Bytes::from(body)))?).await?;
        let status = res.status().as_u16();
        Ok((status, res.into_body().collect().await?.to_bytes()))
    }
}

/// POSTs `body` to `path` on a new connection, expects 201, and returns the string field
/// `field` of the JSON answer.
async fn create(
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: String,
    field: &str,
) -> Result<String, Error> {
    let (status, body) = Conn::open(host).await?.post(path, headers, body).await?;
    if status != 201 {
        let answer = String::from_utf8_lossy(&body);
        return Err(format!("POST {path} answered {status}: {answer}").into());
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    Ok(v[field].as_str().ok_or_else(|| format!("no {field} in the answer"))?.to_owned())
}

/// Registers `url` as a webhook endpoint of the key's organization (ordered with `fifo`);
/// returns its secret.
async fn create_endpoint(host: &str, key: &str, url: &str, fifo: bool) -> Result<String, Error> {
    let ordering = if fifo { r#","ordering":"fifo""# } else { "" };
    let body = format!(r#"{{"url":"{url}"{ordering}}}"#);
    create(host, "/api/webhook/config", &[("x-api-key", key)], body, "secret").await
}

/// Creates an enterprise organization; returns its API key.
async fn create_key(host: &str) -> Result<String, Error> {
    let token = std::env::var("TRIGGERS_ADMIN_TOKEN").ok().map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> =
        token.as_deref().map(|t| ("authorization", t)).into_iter().collect();
    let body = r#"{"organization_name":"loadgen","tier":"enterprise"}"#.to_owned();
    create(host, "/api/keys/generate", &headers, body, "api_key").await
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u32>,
    statuses: BTreeMap<u16, u64>,
    errors: u64,
}

struct Shared {
    key: String,
    host: String,
    padding: String,
    run: String,
    measuring: AtomicBool,
    stop: AtomicBool,
    budget: Option<AtomicU64>,
    get: Option<String>,
    /// Tag each event with its connection's number (`payload.c`), for the order check.
    tag: bool,
    /// Events per `POST /api/events/batch`, if batching.
    batch: Option<usize>,
}

async fn worker(shared: Arc<Shared>, id: usize) -> Tally {
    let mut tally = Tally::default();
    let mut conn: Option<Conn> = None;
    let headers = [("x-api-key", shared.key.as_str())];
    for i in 0u64.. {
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        if let Some(budget) = &shared.budget {
            if shared.measuring.load(Ordering::Relaxed)
                && budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                    .is_err()
            {
                break;
            }
        }
        if conn.is_none() {
            match Conn::open(&shared.host).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    tally.errors += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let started = Instant::now();
        let tag = if shared.tag { format!(r#""c":{id},"#) } else { String::new() };
        let event = |j: usize| {
            format!(
                r#"{{"type":"load.test","dedup_id":"{}-{id}-{i}-{j}","payload":{{{tag}"n":{i},"pad":"{}"}}}}"#,
                shared.run, shared.padding
            )
        };
        let result = match (&shared.get, shared.batch) {
            (Some(path), _) => c.send("GET", path, &headers, String::new()).await,
            (None, None) => c.post("/api/events", &headers, event(0)).await,
            (None, Some(n)) => {
                let items: Vec<String> = (0..n).map(event).collect();
                let body = format!(r#"{{"events":[{}]}}"#, items.join(","));
                c.post("/api/events/batch", &headers, body).await
            }
        };
        let elapsed = started.elapsed();
        let measuring = shared.measuring.load(Ordering::Relaxed);
        match result {
            Ok((status, _)) if measuring => {
                *tally.statuses.entry(status).or_default() += 1;
                tally.latencies_us.push(u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX));
            }
            Ok(_) => {}
            Err(_) => {
                tally.errors += u64::from(measuring);
                conn = None;
            }
        }
    }
    tally
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    f64::from(sorted[rank.min(sorted.len() - 1)]) / 1000.0
}

fn main() -> Result<(), Error> {
    let args = parse_args()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<(), Error> {
    let key = match &args.key {
        Some(k) => k.clone(),
        None => create_key(&args.host).await?,
    };
    let receiver = match args.webhook {
        true => {
            let receiver = receiver::Receiver::start().await?;
            for i in 0..args.endpoints {
                let secret = create_endpoint(
                    &args.host,
                    &key,
                    &receiver.url(i, args.receiver_host.as_deref()),
                    args.fifo,
                )
                .await?;
                receiver.set_secret(i, &secret)?;
            }
            Some(receiver)
        }
        false => None,
    };
    let run = format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos()
    );
    let shared = Arc::new(Shared {
        key,
        host: args.host.clone(),
        padding: "x".repeat(args.payload_bytes),
        run,
        measuring: AtomicBool::new(args.warmup.is_zero()),
        stop: AtomicBool::new(false),
        budget: args.requests.map(AtomicU64::new),
        get: args.get.clone(),
        tag: args.fifo,
        batch: args.batch,
    });
    let tasks: Vec<_> =
        (0..args.connections).map(|id| tokio::spawn(worker(shared.clone(), id))).collect();
    tokio::time::sleep(args.warmup).await;
    shared.measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let load_started = receiver.as_ref().map(|r| r.elapsed());
    if args.requests.is_none() {
        tokio::time::sleep(args.duration).await;
        shared.stop.store(true, Ordering::Relaxed);
    }
    let mut total = Tally::default();
    for t in tasks {
        let t = t.await?;
        total.latencies_us.extend(t.latencies_us);
        total.errors += t.errors;
        for (s, n) in t.statuses {
            *total.statuses.entry(s).or_default() += n;
        }
    }
    let elapsed = started.elapsed();
    total.latencies_us.sort_unstable();
    let n = total.latencies_us.len();
    let l = &total.latencies_us;
    out!(
        "connections={} requests={n} elapsed={:.2}s rate={:.0} req/s",
        args.connections,
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
    out!(
        "latency ms: p50={:.3} p90={:.3} p99={:.3} p99.9={:.3} max={:.3}",
        percentile(l, 50.0),
        percentile(l, 90.0),
        percentile(l, 99.0),
        percentile(l, 99.9),
        percentile(l, 100.0)
    );
    // Accepted: `202` for one event, `200` for a batch (whose events are all valid).
    let succeeded: u64 =
        total.statuses.iter().filter(|(s, _)| (200..300).contains(*s)).map(|(_, n)| n).sum();
    let per_request = args.batch.map_or(1, |n| n as u64);
    let accepted = succeeded * per_request;
    if args.batch.is_some() {
        out!("events={accepted} rate={:.0} events/s", accepted as f64 / elapsed.as_secs_f64());
    }
    let statuses: Vec<String> = total.statuses.iter().map(|(s, n)| format!("{s}={n}")).collect();
    out!("status: {} connection_errors={}", statuses.join(" "), total.errors);
    if let (Some(receiver), Some(load_started)) = (receiver, load_started) {
        let expected = accepted * args.endpoints as u64;
        report_deliveries(&receiver, expected, load_started).await;
    }
    Ok(())
}

/// Waits until `expected` distinct deliveries arrived (or none for 30 s) and prints the rate.
async fn report_deliveries(receiver: &receiver::Receiver, expected: u64, load_started: Duration) {
    let load_ended = receiver.elapsed();
    let (mut last_count, mut last_progress) = (0, Instant::now());
    loop {
        let n = receiver.distinct();
        if n >= expected || last_progress.elapsed() > Duration::from_secs(30) {
            break;
        }
        if n != last_count {
            (last_count, last_progress) = (n, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = receiver.tally();
    let span = t.last.saturating_sub(load_started).as_secs_f64();
    let mut full: Vec<u64> =
        t.per_second.iter().copied().take(t.per_second.len().saturating_sub(1)).collect();
    full.sort_unstable();
    out!(
        "deliveries: {} of {expected} expected (requests={} bad_signatures={}) \
         in {span:.2}s from the first request: rate={:.0} deliveries/s; \
         queue drained {:.2}s after the last request",
        t.distinct,
        t.requests,
        t.bad_signatures,
        t.distinct as f64 / span.max(f64::EPSILON),
        t.last.saturating_sub(load_ended).as_secs_f64(),
    );
    out!(
        "deliveries per whole second: median={} min={} max={} ({} seconds) out_of_order={}",
        full.get(full.len() / 2).copied().unwrap_or(0),
        full.first().copied().unwrap_or(0),
        full.last().copied().unwrap_or(0),
        full.len(),
        t.out_of_order
    );
    if t.distinct < expected {
        out!(
            "MISSING: {} deliveries of accepted events did not arrive within 30 s of the last",
            expected - t.distinct
        );
    }
}
