//! Hostile clients: the server answers or closes, never panics, and keeps serving others.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use triggers_http::ServerConfig;

use crate::support::{Options, TestServer};

/// A liveness bound for reads, far above every server timeout used here.
const GUARD: Duration = Duration::from_secs(20);

/// Reads until the server closes (or resets) the connection; what arrived before.
async fn read_all(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(GUARD, s.read(&mut buf)).await {
            Err(_) => panic!("the server neither answered nor closed within {GUARD:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status code of a raw HTTP/1.1 response, if one arrived.
fn status(resp: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(resp.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.trim().parse().ok()
}

fn head(addr: SocketAddr, key: &str, extra: &str) -> String {
    format!(
        "POST /api/events HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\n\
         Content-Type: application/json\r\nConnection: close\r\n{extra}\r\n"
    )
}

async fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_all(&mut s).await
}

async fn assert_still_serving(server: &TestServer, key: &str) {
    let r = server.client.event(key, "still.alive", None).await;
    assert_eq!(r.status, 202, "{}", r.text());
}

fn options() -> Options {
    Options {
        server: ServerConfig {
            header_read_timeout: Duration::from_millis(500),
            body_read_timeout: Duration::from_millis(500),
            ..ServerConfig::default()
        },
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_garbled_and_deep_bodies() {
    let server = TestServer::start(options()).await;
    let (addr, key) = (server.addr, server.key("enterprise").await);

    // Declared 100 bytes, sent 20, then silence: 408 after the body timeout.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head(addr, &key, "Content-Length: 100\r\n").as_bytes()).await.unwrap();
    s.write_all(br#"{"type":"t","payload"#).await.unwrap();
    let resp = read_all(&mut s).await;
    assert_eq!(status(&resp), Some(408), "{}", String::from_utf8_lossy(&resp));

    // Declared 100 bytes, sent 20, then the client stops sending: 400 or a closed connection.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head(addr, &key, "Content-Length: 100\r\n").as_bytes()).await.unwrap();
    s.write_all(br#"{"type":"t","payload"#).await.unwrap();
    s.shutdown().await.unwrap();
    let resp = read_all(&mut s).await;
    assert!(matches!(status(&resp), None | Some(400)), "{}", String::from_utf8_lossy(&resp));

    // Complete but truncated JSON, invalid UTF-8, 100 000 nested arrays, broken chunking.
    let bodies: [&[u8]; 4] = [
        br#"{"type":"t","payload":{"a":"#,
        b"{\"type\":\"t\",\"payload\":\"\xff\xfe\"}",
        &[b"{\"type\":\"t\",\"payload\":".as_slice(), &[b'['; 100_000]].concat(),
        b"{\"type\":\"\xc0\xaf\",\"payload\":1}",
    ];
    for body in bodies {
        let mut req = head(addr, &key, &format!("Content-Length: {}\r\n", body.len())).into_bytes();
        req.extend_from_slice(body);
        let resp = send_raw(addr, &req).await;
        assert_eq!(status(&resp), Some(400), "{}", String::from_utf8_lossy(&resp));
        assert!(String::from_utf8_lossy(&resp).contains("malformed_json"));
    }
    let mut req = head(addr, &key, "Transfer-Encoding: chunked\r\n").into_bytes();
    req.extend_from_slice(b"zz\r\nnot a chunk\r\n0\r\n\r\n");
    let resp = send_raw(addr, &req).await;
    assert!(matches!(status(&resp), None | Some(400)), "{}", String::from_utf8_lossy(&resp));

    // Garbage instead of HTTP, and an absurd header.
    let resp = send_raw(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n").await;
    assert!(matches!(status(&resp), None | Some(400)), "{}", String::from_utf8_lossy(&resp));
    let huge = format!("GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(200_000));
    let resp = send_raw(addr, huge.as_bytes()).await;
    assert!(
        matches!(status(&resp), None | Some(400) | Some(431)),
        "{}",
        String::from_utf8_lossy(&resp)
    );

    assert_still_serving(&server, &key).await;
    let inbox = server.client.get("/api/inbox", &key).await.json();
    assert_eq!(
        inbox["events"].as_array().unwrap().len(),
        1,
        "only the last, valid event was stored"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_bodies_are_413() {
    let server = TestServer::start(options()).await;
    let (addr, key) = (server.addr, server.key("enterprise").await);
    let ten_mb = 10 * 1024 * 1024;

    // Declared too large: refused before a byte of the body is read.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head(addr, &key, &format!("Content-Length: {ten_mb}\r\n")).as_bytes())
        .await
        .unwrap();
    let resp = read_all(&mut s).await;
    assert_eq!(status(&resp), Some(413), "{}", String::from_utf8_lossy(&resp));
    assert!(String::from_utf8_lossy(&resp).contains("body_too_large"));

    // Streamed without a length: cut off once the limit is crossed. The client may see the
    // 413 or, if it is still sending, a reset; either way the server stays healthy.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head(addr, &key, "Transfer-Encoding: chunked\r\n").as_bytes()).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let writer = tokio::spawn(async move {
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "x".repeat(64 * 1024));
        let mut sent = 0;
        while sent < ten_mb {
            if wr.write_all(chunk.as_bytes()).await.is_err() {
                return sent;
            }
            sent += 64 * 1024;
        }
        sent
    });
    let mut resp = Vec::new();
    let _ = tokio::time::timeout(GUARD, rd.read_to_end(&mut resp)).await.expect("no answer");
    let sent = writer.await.unwrap();
    assert!(matches!(status(&resp), None | Some(413)), "{}", String::from_utf8_lossy(&resp));
    assert!(sent < ten_mb || status(&resp) == Some(413), "the server read all 10 MB");

    assert_still_serving(&server, &key).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_headers_are_cut_off() {
    let server = TestServer::start(options()).await;
    let addr = server.addr;
    let request =
        format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}\r\n\r\n", "a".repeat(400));
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut closed = false;
    // One byte every 50 ms would take 20+ s; the server's header timeout is 500 ms.
    for b in request.as_bytes() {
        if s.write_all(&[*b]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut probe = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), s.read(&mut probe)).await {
            // EOF, reset, or an error response: the server has given up on us.
            let _ = r;
            closed = true;
            break;
        }
    }
    assert!(closed, "the server waited for the whole slow request");
    // A connection that sends nothing at all is closed too.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let resp = read_all(&mut idle).await;
    assert!(matches!(status(&resp), None | Some(408)), "{}", String::from_utf8_lossy(&resp));
    let r = server.client.send("GET", "/health", None, None).await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_does_not_stop_service() {
    let mut opts = options();
    opts.server.max_connections = 16;
    opts.server.connection_wait = Duration::from_millis(20);
    let server = TestServer::start(opts).await;
    let key = server.key("enterprise").await;
    let mut flood = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = TcpStream::connect(server.addr).await {
            flood.push(s);
        }
    }
    // At the cap the server closes the longest-idle flood connection to make room for each new
    // one (and they time out after the header timeout anyway). A real client gets through
    // (retrying if it must), the cap is never exceeded, and the server never falls over.
    // (Refusals by the per-peer cap are tested in `edge`.)
    let mut served = false;
    for _ in 0..200 {
        let fresh = crate::support::Client::new(server.addr);
        match tokio::time::timeout(Duration::from_secs(2), fresh.event_quiet(&key)).await {
            Ok(Some(202)) => {
                served = true;
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert!(served, "no request got through the flood");
    let metrics = server.client.send("GET", "/metrics", None, None).await.text();
    let open: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("triggers_http_connections "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(open <= 16, "the connection cap held: {metrics}");
    drop(flood);
}
