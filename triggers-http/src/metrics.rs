//! Prometheus metrics (through the `prometheus-client` crate), served at `GET /metrics`.
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `triggers_ingest_events_total` | counter | `outcome`: accepted, duplicate, invalid, rate_limited, overloaded, error |
//! | `triggers_ingest_duration_seconds` | histogram | `route`: single, batch |
//! | `triggers_deliveries_total` | counter | `outcome`: delivered, retried, failed, stale |
//! | `triggers_delivery_duration_seconds` | histogram | — |
//! | `triggers_queue_depth` | gauge | — (outstanding deliveries, read from the store at scrape time) |
//! | `triggers_announcements_waiting` | gauge | — (endpoint announcements recorded but not yet in their stream, read from the store at scrape time; PostgreSQL's outbox, normally 0) |
//! | `triggers_announcements_oldest_age_seconds` | gauge | — (how long the oldest of them has waited; 0 when none) |
//! | `triggers_rate_limited_requests_total` | counter | — |
//! | `triggers_http_responses_total` | counter | `status` |
//! | `triggers_http_connections` | gauge | — (open connections) |
//! | `triggers_http_connections_rejected_total` | counter | — (over the connection cap) |
//! | `triggers_log_lines_lost_total` | counter | — (log lines that could not be written, e.g. disk full; see [`crate::logging`]) |

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use triggers_core::store::operational::AnnouncementBacklog;
use triggers_core::store::EventStore;
use triggers_core::{Deliverer, DeliveryResult, Ingestor, Observer};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Status {
    status: u16,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs … ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The server's metrics. Pass it as `IngestorConfig::observer` to count deliveries, and to
/// [`Server::with_metrics`](crate::Server::with_metrics) or `ServiceConfig::metrics` to serve
/// it; [`register_into`](Self::register_into) adds it to an application's own registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    ingest: Family<Outcome, Counter>,
    ingest_latency: HistogramFamily<RouteLabel>,
    deliveries: Family<Outcome, Counter>,
    delivery_latency: Histogram,
    queue_depth: Gauge,
    announcements_waiting: Gauge,
    announcements_oldest_age: Gauge,
    rate_limited: Counter,
    http: Family<Status, Counter>,
    connections: Gauge,
    rejected: Counter,
    log_lost: Counter,
    log_lost_seen: std::sync::atomic::AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh set of metrics, all zero.
    pub fn new() -> Self {
        let mut metrics = Self {
            registry: Registry::default(),
            ingest: Family::default(),
            ingest_latency: Family::new_with_constructor(latency_histogram),
            deliveries: Family::default(),
            delivery_latency: latency_histogram(),
            queue_depth: Gauge::default(),
            announcements_waiting: Gauge::default(),
            announcements_oldest_age: Gauge::default(),
            rate_limited: Counter::default(),
            http: Family::default(),
            connections: Gauge::default(),
            rejected: Counter::default(),
            log_lost: Counter::default(),
            log_lost_seen: std::sync::atomic::AtomicU64::new(0),
        };
        let mut registry = Registry::default();
        metrics.register_into(&mut registry);
        metrics.registry = registry;
        metrics
    }

    /// Registers every metric, under the prefix `triggers_`, into an application's own
    /// `prometheus-client` registry (use [`prometheus_client`](crate::prometheus_client), the
    /// version this crate re-exports), so one scrape of the application's endpoint has them
    /// all. They stay shared with this `Metrics`: the API and the delivery workers keep
    /// counting into them. `triggers_queue_depth` is read from the store when the API's own
    /// `GET /metrics` is served, or by [`ApiService::refresh_metrics`](crate::ApiService::refresh_metrics).
    ///
    /// ```
    /// use triggers_http::prometheus_client::registry::Registry;
    /// let mut registry = Registry::default();
    /// let metrics = triggers_http::Metrics::new();
    /// metrics.register_into(&mut registry);
    /// let mut text = String::new();
    /// triggers_http::prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    /// assert!(text.contains("triggers_queue_depth 0"));
    /// ```
    pub fn register_into(&self, registry: &mut Registry) {
        let registry = registry.sub_registry_with_prefix("triggers");
        registry.register("ingest_events", "Events submitted, by outcome", self.ingest.clone());
        registry.register_with_unit(
            "ingest_duration",
            "Time to validate, rate-limit, dedup and durably store a request's events",
            Unit::Seconds,
            self.ingest_latency.clone(),
        );
        registry.register("deliveries", "Delivery attempts, by outcome", self.deliveries.clone());
        registry.register_with_unit(
            "delivery_duration",
            "Duration of delivery attempts",
            Unit::Seconds,
            self.delivery_latency.clone(),
        );
        registry.register("queue_depth", "Outstanding deliveries", self.queue_depth.clone());
        registry.register(
            "announcements_waiting",
            "Endpoint announcements recorded with their change but not yet in their stream",
            self.announcements_waiting.clone(),
        );
        registry.register_with_unit(
            "announcements_oldest_age",
            "How long the oldest waiting endpoint announcement has waited (0: none waits)",
            Unit::Seconds,
            self.announcements_oldest_age.clone(),
        );
        registry.register(
            "rate_limited_requests",
            "Requests refused with 429",
            self.rate_limited.clone(),
        );
        registry.register("http_responses", "HTTP responses, by status", self.http.clone());
        registry.register("http_connections", "Open HTTP connections", self.connections.clone());
        registry.register(
            "http_connections_rejected",
            "Connections closed at once because the connection cap was reached",
            self.rejected.clone(),
        );
        registry.register(
            "log_lines_lost",
            "Log lines that could not be written (for example because the disk is full)",
            self.log_lost.clone(),
        );
    }

    /// Reads what the gauges of the store show (`triggers_queue_depth`,
    /// `triggers_announcements_*`) from `ingestor`'s store; a gauge whose read fails keeps
    /// its value (and the failure is logged).
    pub(crate) async fn read_store<S: EventStore, D: Deliverer>(&self, ingestor: &Ingestor<S, D>) {
        match ingestor.queue_depth().await {
            Ok(depth) => {
                self.queue_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::warn!(error = %e, "reading the queue depth failed"),
        }
        match ingestor.announcement_backlog().await {
            Ok(backlog) => self.set_announcements(backlog),
            Err(e) => tracing::warn!(error = %e, "reading the announcement backlog failed"),
        }
    }

    /// Sets `triggers_announcements_*` from `backlog`.
    fn set_announcements(&self, backlog: AnnouncementBacklog) {
        self.announcements_waiting.set(i64::try_from(backlog.waiting).unwrap_or(i64::MAX));
        let age = backlog.oldest_waited.map_or(0, |d| d.as_secs());
        self.announcements_oldest_age.set(i64::try_from(age).unwrap_or(i64::MAX));
    }

    /// Counts `n` submitted events with this outcome.
    pub(crate) fn ingested(&self, outcome: &'static str, n: u64) {
        self.ingest.get_or_create(&Outcome { outcome }).inc_by(n);
    }

    /// Records how long an ingest request took (`route`: single or batch).
    pub(crate) fn ingest_latency(&self, route: &'static str, d: Duration) {
        self.ingest_latency.get_or_create(&RouteLabel { route }).observe(d.as_secs_f64());
    }

    /// Counts a response.
    pub(crate) fn response(&self, status: u16) {
        self.http.get_or_create(&Status { status }).inc();
        if status == 429 {
            self.rate_limited.inc();
        }
    }

    /// A connection opened (`+1`) or closed (`-1`).
    pub(crate) fn connection(&self, delta: i64) {
        self.connections.inc_by(delta);
    }

    /// A connection was refused over the cap.
    pub(crate) fn rejected_connection(&self) {
        self.rejected.inc();
    }

    /// The exposition text (the store's gauges as [`read_store`](Self::read_store) last
    /// set them).
    pub(crate) fn encode(&self) -> String {
        let lost = crate::logging::lost_lines();
        let seen = self.log_lost_seen.swap(lost, std::sync::atomic::Ordering::Relaxed);
        self.log_lost.inc_by(lost.saturating_sub(seen));
        let mut out = String::with_capacity(4096);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

impl Observer for Metrics {
    fn delivery(&self, result: DeliveryResult, latency: Duration) {
        self.deliveries.get_or_create(&Outcome { outcome: result.as_str() }).inc();
        // A deferral did not talk to the target: its time is waiting, not delivery latency.
        if result != DeliveryResult::Deferred {
            self.delivery_latency.observe(latency.as_secs_f64());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_family() {
        let m = Metrics::new();
        m.ingested("accepted", 3);
        m.ingest_latency("single", Duration::from_micros(300));
        m.delivery(DeliveryResult::Delivered, Duration::from_millis(2));
        m.response(202);
        m.response(429);
        m.connection(1);
        m.queue_depth.set(7);
        let oldest_waited = Some(Duration::from_secs(90));
        m.set_announcements(AnnouncementBacklog { waiting: 2, oldest_waited });
        let text = m.encode();
        for line in [
            "triggers_ingest_events_total{outcome=\"accepted\"} 3",
            "triggers_deliveries_total{outcome=\"delivered\"} 1",
            "triggers_queue_depth 7",
            "triggers_announcements_waiting 2",
            "triggers_announcements_oldest_age_seconds 90",
            "triggers_rate_limited_requests_total 1",
            "triggers_http_responses_total{status=\"202\"} 1",
            "triggers_http_connections 1",
            "triggers_ingest_duration_seconds_count{route=\"single\"} 1",
            "triggers_delivery_duration_seconds_count 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }

    /// The age falls back to 0 once none waits (a gauge an alarm can use as it is).
    #[test]
    fn no_waiting_announcement_is_age_zero() {
        let m = Metrics::new();
        let oldest_waited = Some(Duration::from_secs(30));
        m.set_announcements(AnnouncementBacklog { waiting: 1, oldest_waited });
        m.set_announcements(AnnouncementBacklog::default());
        let text = m.encode();
        assert!(text.contains("triggers_announcements_waiting 0"), "{text}");
        assert!(text.contains("triggers_announcements_oldest_age_seconds 0"), "{text}");
    }

    #[test]
    fn an_applications_registry_shares_the_counts() {
        let m = Metrics::new();
        let mut app = Registry::with_prefix("app");
        m.register_into(&mut app);
        m.response(503);
        m.delivery(DeliveryResult::Failed, Duration::from_millis(1));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &app).unwrap();
        for line in [
            "app_triggers_http_responses_total{status=\"503\"} 1",
            "app_triggers_deliveries_total{outcome=\"failed\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        // The server's own exposition is unchanged by the extra registration.
        assert!(m.encode().contains("\ntriggers_http_responses_total{status=\"503\"} 1"));
    }
}
