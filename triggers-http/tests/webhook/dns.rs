//! Named webhook hosts, looked up at a DNS server of the test's own on 127.0.0.1
//! (`WebhookConfig::dns_servers`): answers are cached for their TTL, a server that never
//! answers costs an attempt the connect timeout and nothing more, and every address an
//! answer names is checked by the SSRF policy.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use triggers_core::{Deliverer, EventStatus, Outcome, Secret, Tier};
use triggers_http::{WebhookConfig, WebhookDeliverer};

use super::e2e::{until, world};
use super::support::*;

/// What the test server answers for a name.
#[derive(Clone)]
enum Answer {
    /// These addresses, with this TTL (seconds); no address of the other family.
    Addrs(Vec<IpAddr>, u32),
    /// Nothing, ever (a black hole).
    Silent,
    /// This IPv4 address; AAAA questions are never answered.
    V4Only(std::net::Ipv4Addr),
    /// A CNAME to this name, with its answer (as a recursive resolver gives it).
    Alias(&'static str),
    /// No such name.
    NxDomain,
    /// The name's servers failed (SERVFAIL).
    ServFail,
}

/// A DNS server on 127.0.0.1 (UDP, and TCP on the same port) that answers from a fixed table
/// and counts the questions it is asked per name.
struct DnsServer {
    addr: SocketAddr,
    asked: Arc<Mutex<HashMap<String, usize>>>,
}

impl DnsServer {
    async fn start(table: &[(&str, Answer)]) -> Self {
        let table: Arc<HashMap<String, Answer>> =
            Arc::new(table.iter().map(|(name, a)| (format!("{name}."), a.clone())).collect());
        let asked = Arc::new(Mutex::new(HashMap::new()));
        // A client falls back to TCP on the same port; there it finds the same table. (The
        // port UDP got may be taken for TCP, by another test's connection: then again.)
        let (udp, tcp, addr) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            if let Ok(tcp) = TcpListener::bind(addr).await {
                break (udp, tcp, addr);
            }
        };
        let (t, a) = (table.clone(), asked.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, peer)) = udp.recv_from(&mut buf).await else { return };
                if let Some(reply) = answer(&t, &a, &buf[..n], true) {
                    let _ = udp.send_to(&reply, peer).await;
                }
            }
        });
        let (t, a) = (table, asked.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = tcp.accept().await else { return };
                let (t, a) = (t.clone(), a.clone());
                tokio::spawn(async move {
                    loop {
                        let Ok(len) = socket.read_u16().await else { return };
                        let mut query = vec![0u8; usize::from(len)];
                        if socket.read_exact(&mut query).await.is_err() {
                            return;
                        }
                        match answer(&t, &a, &query, false) {
                            Some(reply) => {
                                let len = u16::try_from(reply.len()).unwrap();
                                let _ = socket.write_u16(len).await;
                                let _ = socket.write_all(&reply).await;
                            }
                            // Silent: hold the connection open and never answer.
                            None => std::future::pending::<()>().await,
                        }
                    }
                });
            }
        });
        Self { addr, asked }
    }

    /// Questions asked about `name` so far (any record type, both transports).
    fn asked(&self, name: &str) -> usize {
        self.asked.lock().unwrap().get(&format!("{name}.")).copied().unwrap_or(0)
    }

    /// Loopback receivers allowed, hosts looked up here, connections within `connect`.
    fn config(&self, connect: Duration) -> WebhookConfig {
        WebhookConfig { dns_servers: vec![self.addr], connect_timeout: connect, ..local_config() }
    }
}

/// Addresses a UDP answer carries at most here: a longer one is sent truncated (no records,
/// the TC bit set), so the client asks again over TCP, as with a real server's size limit.
const UDP_ADDRESSES: usize = 8;

/// The reply to one query (over UDP if `udp`), or `None` to stay silent.
fn answer(
    table: &HashMap<String, Answer>,
    asked: &Mutex<HashMap<String, usize>>,
    query: &[u8],
    udp: bool,
) -> Option<Vec<u8>> {
    let query = Message::from_vec(query).ok()?;
    let question = query.queries().first()?.clone();
    let name = question.name().to_ascii().to_ascii_lowercase();
    *asked.lock().unwrap().entry(name.clone()).or_default() += 1;
    let mut reply = Message::new();
    reply
        .set_id(query.id())
        .set_message_type(MessageType::Response)
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true)
        .add_query(question.clone());
    let mut owner = question.name().clone();
    // Negative answers carry a zone's SOA, so resolvers may keep them for its minimum TTL.
    let soa = |ttl: u32| {
        let zone = Name::from_ascii("test.").unwrap();
        let rdata = SOA::new(zone.clone(), zone.clone(), 1, 60, 60, 60, ttl);
        Record::from_rdata(zone, ttl, RData::SOA(rdata))
    };
    let mut entry = table.get(&name).cloned().unwrap_or(Answer::NxDomain);
    if let Answer::Alias(target) = entry {
        let target = Name::from_ascii(format!("{target}.")).unwrap();
        let cname = RData::CNAME(CNAME(target.clone()));
        reply.add_answer(Record::from_rdata(owner.clone(), 300, cname));
        entry = table.get(&target.to_ascii()).cloned().unwrap_or(Answer::NxDomain);
        owner = target;
    }
    match entry {
        Answer::Silent => return None,
        Answer::Alias(_) => return None,
        Answer::Addrs(ips, _) if udp && ips.len() > UDP_ADDRESSES => {
            reply.set_truncated(true);
        }
        Answer::V4Only(_) if question.query_type() != RecordType::A => return None,
        Answer::V4Only(v4) => {
            reply.add_answer(Record::from_rdata(owner.clone(), 300, RData::A(A(v4))));
        }
        Answer::NxDomain => {
            reply.set_response_code(ResponseCode::NXDomain).add_name_server(soa(60));
        }
        Answer::ServFail => {
            reply.set_response_code(ResponseCode::ServFail);
        }
        Answer::Addrs(ips, ttl) => {
            let mut any = false;
            for ip in ips {
                let rdata = match (ip, question.query_type()) {
                    (IpAddr::V4(v4), RecordType::A) => RData::A(A(v4)),
                    (IpAddr::V6(v6), RecordType::AAAA) => RData::AAAA(AAAA(v6)),
                    _ => continue,
                };
                reply.add_answer(Record::from_rdata(owner.clone(), ttl, rdata));
                any = true;
            }
            if !any {
                reply.add_name_server(soa(ttl));
            }
        }
    }
    reply.to_vec().ok()
}

fn localhost() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// A receiver, a DNS server naming it `name` (127.0.0.1, with `ttl`), a deliverer asking
/// that server, and the receiver's URL by that name.
async fn named(name: &str, ttl: u32) -> (Receiver, DnsServer, WebhookDeliverer, String) {
    let receiver = Receiver::answering(200).await;
    let dns = DnsServer::start(&[(name, Answer::Addrs(vec![localhost()], ttl))]).await;
    let d = deliverer(dns.config(Duration::from_secs(5)));
    let url = format!("http://{name}:{}/hook", receiver.addr.port());
    (receiver, dns, d, url)
}

/// Four deliveries to one named host ask its server once (an A and an AAAA question): the
/// deliverer's check and the connector share the cached answer while its TTL lasts.
#[tokio::test]
async fn a_named_host_is_asked_for_once_while_its_answer_is_fresh() {
    let (receiver, dns, d, url) = named("hooks.test", 300).await;

    let first = d.deliver(&delivery(&url, vec![Secret::generate()])).await;
    assert_eq!(first.outcome, Outcome::Delivered, "{first:?}");
    let asked = dns.asked("hooks.test");
    assert!((1..=2).contains(&asked), "one question per record type, got {asked}");
    for _ in 0..3 {
        let a = d.deliver(&delivery(&url, vec![Secret::generate()])).await;
        assert_eq!(a.outcome, Outcome::Delivered, "{a:?}");
    }
    assert_eq!(receiver.seen().len(), 4);
    assert_eq!(dns.asked("hooks.test"), asked, "answered from the cache");
}

/// A name whose server never answers ends its attempt at the connect timeout, as a retry
/// naming the lookup, long before the attempt's own timeout; meanwhile a clone of the same
/// deliverer delivers to a name that resolves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_whose_server_never_answers_costs_the_connect_timeout_only() {
    let receiver = Receiver::answering(200).await;
    let dns = DnsServer::start(&[
        ("blackhole.test", Answer::Silent),
        ("hooks.test", Answer::Addrs(vec![localhost()], 300)),
    ])
    .await;
    let d = deliverer(WebhookConfig {
        timeout: Duration::from_secs(120),
        ..dns.config(Duration::from_millis(400))
    });
    let port = receiver.addr.port();
    let hole = delivery(&format!("http://blackhole.test:{port}/hook"), vec![Secret::generate()]);
    let stuck = tokio::spawn({
        let d = d.clone();
        async move { d.deliver(&hole).await }
    });
    let good = delivery(&format!("http://hooks.test:{port}/hook"), vec![Secret::generate()]);
    assert_eq!(d.deliver(&good).await.outcome, Outcome::Delivered);
    assert!(!stuck.is_finished(), "delivered while the other lookup was still waiting");

    // Far below the attempt's 120 s: had the lookup not ended, this would give up first.
    let a = tokio::time::timeout(Duration::from_secs(30), stuck).await.unwrap().unwrap();
    assert!(retry_reason(&a).contains("dns lookup got no answer within 400ms"), "{a:?}");
    assert!(dns.asked("blackhole.test") >= 1, "the question was sent");
    assert_eq!(receiver.seen().len(), 1, "only the resolvable host was reached");
}

/// Every address an answer names is checked: one private address among allowed ones refuses
/// the host before any connection, and so does a CNAME to a private name (an alias of an
/// allowed one is delivered); a name that does not exist is retried.
#[tokio::test]
async fn answers_are_checked_by_the_address_policy_and_missing_names_retried() {
    let receiver = Receiver::answering(200).await;
    let dns = DnsServer::start(&[
        ("inside.test", Answer::Addrs(vec![IpAddr::from([10, 0, 0, 5])], 300)),
        ("mixed.test", Answer::Addrs(vec![localhost(), "fd00::5".parse().unwrap()], 300)),
        ("alias.test", Answer::Alias("inside.test")),
        ("hooks.test", Answer::Addrs(vec![localhost()], 300)),
        ("www.hooks.test", Answer::Alias("hooks.test")),
    ])
    .await;
    let d = deliverer(dns.config(Duration::from_secs(5)));
    let port = receiver.addr.port();
    let at = |host: &str| delivery(&format!("http://{host}:{port}/hook"), vec![Secret::generate()]);

    let a = d.deliver(&at("inside.test")).await;
    assert!(permanent_reason(&a).contains("10.0.0.5 is a private address"), "{a:?}");
    let a = d.deliver(&at("mixed.test")).await;
    assert!(permanent_reason(&a).contains("fd00::5 is a unique-local"), "{a:?}");
    let a = d.deliver(&at("alias.test")).await;
    assert!(permanent_reason(&a).contains("10.0.0.5 is a private address"), "{a:?}");
    let a = d.deliver(&at("missing.test")).await;
    assert_eq!(retry_reason(&a), "dns lookup found no address: no such name");
    assert!(receiver.seen().is_empty(), "nothing may reach a refused or missing host");
    assert_eq!(d.deliver(&at("www.hooks.test")).await.outcome, Outcome::Delivered);
}

/// Through the Ingestor's workers: one organization's eight endpoints at names whose server
/// never answers keep their lookups waiting, and another organization's named endpoint is
/// delivered to meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn black_hole_names_of_one_organization_delay_no_other() {
    let receiver = Receiver::answering(200).await;
    let mut table: Vec<(String, Answer)> =
        (0..8).map(|i| (format!("hole{i}.test"), Answer::Silent)).collect();
    table.push(("hooks.test".into(), Answer::Addrs(vec![localhost()], 300)));
    let table: Vec<(&str, Answer)> = table.iter().map(|(n, a)| (n.as_str(), a.clone())).collect();
    let dns = DnsServer::start(&table).await;
    let w = world(&[0, 5], dns.config(Duration::from_secs(10))).await;
    let port = receiver.addr.port();
    for i in 0..8 {
        let url = format!("http://hole{i}.test:{port}/hook");
        w.ingestor.create_endpoint(&w.org, &url, None).await.unwrap();
    }
    for _ in 0..3 {
        w.ingest("noisy").await;
    }
    until("the black-hole lookups", || async { (dns.asked("hole0.test") > 0).then_some(()) }).await;

    let (other, _key) = w.ingestor.create_organization("other", Tier::Enterprise).await.unwrap();
    let url = format!("http://hooks.test:{port}/hook");
    w.ingestor.create_endpoint(&other, &url, None).await.unwrap();
    let event = triggers_core::NewEvent::new("quiet", &serde_json::json!({"n": 1}));
    let id = w.ingestor.ingest(&other, event).await.unwrap().id;
    until("the other organization's delivery", || async {
        let detail = w.ingestor.event(&other, id).await.unwrap();
        (detail.event.status == EventStatus::Delivered).then_some(())
    })
    .await;
    assert_eq!(receiver.seen().len(), 1, "no black-hole endpoint was reached");
    w.ingestor.shutdown().await;
}

/// What resolvers serve resolves: a label with an underscore (refused by IDNA rules, served
/// by DNS), and a name whose server never answers AAAA — its A answer arrives within the
/// limit, as each question is asked for a quarter of it.
#[tokio::test]
async fn underscores_and_names_without_aaaa_answers_resolve() {
    let receiver = Receiver::answering(200).await;
    let dns = DnsServer::start(&[
        ("my_hooks.test", Answer::Addrs(vec![localhost()], 300)),
        ("v4only.test", Answer::V4Only([127, 0, 0, 1].into())),
    ])
    .await;
    let d = deliverer(WebhookConfig {
        timeout: Duration::from_secs(120),
        ..dns.config(Duration::from_millis(800))
    });
    let port = receiver.addr.port();
    for host in ["my_hooks.test", "v4only.test"] {
        let d1 = delivery(&format!("http://{host}:{port}/hook"), vec![Secret::generate()]);
        assert_eq!(d.deliver(&d1).await.outcome, Outcome::Delivered, "{host}");
    }
    assert!(dns.asked("v4only.test") >= 2, "A and AAAA were asked");
    assert_eq!(receiver.seen().len(), 2);
}

/// An answer is kept for its TTL only: after it ends, the next delivery asks again.
#[tokio::test]
async fn an_answer_is_asked_for_again_once_its_ttl_ends() {
    let (_receiver, dns, d, url) = named("short.test", 1).await;
    assert_eq!(
        d.deliver(&delivery(&url, vec![Secret::generate()])).await.outcome,
        Outcome::Delivered
    );
    let asked = dns.asked("short.test");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        d.deliver(&delivery(&url, vec![Secret::generate()])).await.outcome,
        Outcome::Delivered
    );
    assert!(dns.asked("short.test") > asked, "the expired answer was asked for again");
}

/// Of a long answer, only the first `MAX_ADDRESSES` (32) addresses are kept, checked and
/// connected to: the cache stays small whatever a tenant's name server answers, and what
/// lies past them is never reached (here a private address that would refuse the host).
#[tokio::test]
async fn only_the_first_32_addresses_of_an_answer_count() {
    let receiver = Receiver::answering(200).await;
    // 127.0.0.1 first (the receiver), then other loopback addresses, then a private one.
    let loopback = |n: u8| (1..=n).map(|i| IpAddr::from([127, 0, 0, i]));
    let long: Vec<IpAddr> = loopback(32).chain([IpAddr::from([10, 0, 0, 9])]).collect();
    let within: Vec<IpAddr> = loopback(31).chain([IpAddr::from([10, 0, 0, 9])]).collect();
    let dns = DnsServer::start(&[
        ("long.test", Answer::Addrs(long, 300)),
        ("within.test", Answer::Addrs(within, 300)),
    ])
    .await;
    let d = deliverer(dns.config(Duration::from_secs(5)));
    let port = receiver.addr.port();
    let at = |host: &str| delivery(&format!("http://{host}:{port}/hook"), vec![Secret::generate()]);
    assert_eq!(d.deliver(&at("long.test")).await.outcome, Outcome::Delivered);
    let a = d.deliver(&at("within.test")).await;
    assert!(permanent_reason(&a).contains("10.0.0.9 is a private address"), "{a:?}");
}

/// An answer too long for the server's datagrams comes truncated over UDP; the resolver asks
/// again over TCP and gets all of it.
#[tokio::test]
async fn a_truncated_answer_is_asked_for_again_over_tcp() {
    let receiver = Receiver::answering(200).await;
    let many: Vec<IpAddr> = (1..=12).map(|i| IpAddr::from([127, 0, 0, i])).collect();
    let dns = DnsServer::start(&[("many.test", Answer::Addrs(many, 300))]).await;
    let d = deliverer(dns.config(Duration::from_secs(5)));
    let url = format!("http://many.test:{}/hook", receiver.addr.port());
    let a = d.deliver(&delivery(&url, vec![Secret::generate()])).await;
    assert_eq!(a.outcome, Outcome::Delivered, "{a:?}");
    // A over UDP (truncated) and TCP, AAAA over UDP at least.
    assert!(dns.asked("many.test") >= 3, "asked {} times", dns.asked("many.test"));
}

/// A name answered with TTL 0 is kept for a second anyway, and deliveries that find no fresh
/// answer wait for one lookup together: eight at once to a cold name ask its server once (an
/// A and an AAAA question), and more deliveries one after another ask at most once per
/// second they take, not once per attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_is_asked_once_however_many_deliveries_go_to_it() {
    let (receiver, dns, d, url) = named("zero.test", 0).await;
    let started = std::time::Instant::now();
    let at_once: Vec<_> = (0..8)
        .map(|_| {
            let (d, url) = (d.clone(), url.clone());
            tokio::spawn(async move { d.deliver(&delivery(&url, vec![Secret::generate()])).await })
        })
        .collect();
    for attempt in at_once {
        assert_eq!(attempt.await.unwrap().outcome, Outcome::Delivered);
    }
    // One lookup (two questions) per second elapsed at most, however slow the machine.
    let bound = || 2 * (1 + started.elapsed().as_secs() as usize);
    let asked = dns.asked("zero.test");
    assert!(asked <= bound(), "one lookup for eight deliveries, not {asked} questions");
    // With a trailing dot it is the same name, and the same entry.
    let dotted = url.replacen("zero.test", "zero.test.", 1);
    for i in 0..12 {
        let url = if i % 2 == 0 { &url } else { &dotted };
        let a = d.deliver(&delivery(url, vec![Secret::generate()])).await;
        assert_eq!(a.outcome, Outcome::Delivered, "{a:?}");
    }
    assert_eq!(receiver.seen().len(), 20);
    let asked = dns.asked("zero.test");
    assert!(asked <= bound(), "asked {asked} times in {:?}", started.elapsed());
}

/// "No such name" is kept (for the zone's negative TTL, at most 30 s): an endpoint at a
/// missing name does not send a question per delivery. An answer without addresses (which
/// may be one family's while the other's failed) is kept for a second only, whatever its
/// zone says, and a server failure not at all: the next attempt asks again.
#[tokio::test]
async fn missing_names_are_kept_and_server_failures_asked_again() {
    let dns = DnsServer::start(&[
        ("empty.test", Answer::Addrs(Vec::new(), 300)),
        ("broken.test", Answer::ServFail),
    ])
    .await;
    let d = deliverer(dns.config(Duration::from_secs(5)));
    let at = |host: &str| delivery(&format!("http://{host}:9/hook"), vec![Secret::generate()]);

    let a = d.deliver(&at("missing.test")).await;
    assert_eq!(retry_reason(&a), "dns lookup found no address: no such name");
    let asked = dns.asked("missing.test");
    assert!(asked >= 1);
    for _ in 0..3 {
        let a = d.deliver(&at("missing.test")).await;
        assert_eq!(retry_reason(&a), "dns lookup found no address: no such name");
    }
    assert_eq!(dns.asked("missing.test"), asked, "the negative answer was kept");

    let a = d.deliver(&at("broken.test")).await;
    assert_eq!(retry_reason(&a), "dns lookup found no address: the name's servers failed");
    let asked = dns.asked("broken.test");
    let a = d.deliver(&at("broken.test")).await;
    assert_eq!(retry_reason(&a), "dns lookup found no address: the name's servers failed");
    assert!(dns.asked("broken.test") > asked, "a server failure is asked about again");

    let started = std::time::Instant::now();
    for _ in 0..4 {
        let a = d.deliver(&at("empty.test")).await;
        assert_eq!(retry_reason(&a), "dns lookup found no address: no A or AAAA record");
    }
    // One lookup (two questions) per second elapsed at most: kept for a second ...
    let asked = dns.asked("empty.test");
    assert!(asked <= 2 * (1 + started.elapsed().as_secs() as usize), "asked {asked} times");
    // ... and not for its zone's 300 s.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    d.deliver(&at("empty.test")).await;
    assert!(dns.asked("empty.test") > asked, "asked about again after a second");
}
