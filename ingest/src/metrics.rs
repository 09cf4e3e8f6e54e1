//! Every metric the edge exports, declared in one place.
//!
//! Names follow `pixelpipe_ingest_<noun>_<unit>[_total]`; every label has a fixed, small set of
//! values (routes, statuses, reasons, broker names), so cardinality cannot grow with traffic. Each
//! [`Metrics`] owns its registry, so tests and benches run side by side without sharing counters.
//! Every hit that is not delivered to Kafka is counted here under exactly one reason.

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::hit::{CutReason, Cuts, InvalidReason};
use crate::wire::Transport;

/// The `transport` label of a hit.
pub fn transport_label(t: Transport) -> &'static str {
    match t {
        Transport::Pixel => "pixel",
        Transport::Beacon => "beacon",
    }
}

/// Routes as metric labels.
pub const ROUTES: [&str; 10] = [
    "pixel", "click", "collect", "script", "healthz", "readyz", "optout", "optin", "other",
    "metrics",
];

/// Reasons `GET /c` refused to redirect: the target's syntax (see `redirect::TargetError`), a
/// host not on the allowlist, a bad signature, an unreadable query, or a click that is not a
/// valid hit (no site).
pub const CLICK_REFUSED_REASONS: [&str; 11] = [
    "missing",
    "too_long",
    "bad_character",
    "not_http",
    "userinfo",
    "bad_host",
    "bad_port",
    "not_allowed",
    "bad_signature",
    "query_too_long",
    "invalid_hit",
];

/// Reasons a valid hit was dropped before reaching Kafka's client: the queue was full, it was
/// still queued when shutdown ran out of time, or the site's policy drops hits with that privacy
/// signal (`gpc`, `dnt`, `no_consent`, `optout`), or drops conversions that are not validly
/// signed (`unsigned_conversion`).
pub const DROP_REASONS: [&str; 7] = [
    "queue_full",
    "shutdown",
    "gpc",
    "dnt",
    "no_consent",
    "optout",
    "unsigned_conversion",
];

/// The edge's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    hits_accepted: IntCounterVec,
    hits_invalid: IntCounterVec,
    /// Valid hits lost before the producer, by reason (see [`DROP_REASONS`]).
    pub hits_dropped: IntCounterVec,
    /// Hits waiting in the channel.
    pub queue_depth: IntGauge,
    /// Hits per batcher wake-up.
    pub batch_size: Histogram,
    /// Hits confirmed by Kafka.
    pub delivered: IntCounter,
    /// Hits Kafka did not take, by librdkafka error code.
    pub delivery_failed: IntCounterVec,
    /// From hand-over to the producer until Kafka confirmed it.
    pub delivery_latency: Histogram,
    /// Messages in librdkafka's queue (from its statistics).
    pub producer_queue: IntGauge,
    /// Broker round-trip time, average over the last statistics window, by broker.
    pub broker_rtt: GaugeVec,
    /// Connections open now.
    pub connections_open: IntGauge,
    /// Connections closed at once because `http.max_connections` were open.
    pub connections_rejected: IntCounter,
    /// Signed URLs checked, by result (`valid`, `invalid`, `expired`, `unknown_key`).
    signatures: IntCounterVec,
    /// `GET /c` requests refused, by reason (see [`CLICK_REFUSED_REASONS`]).
    clicks_refused: IntCounterVec,
    /// GeoIP database reloads, by result (`ok`, `failed`: the old database stayed in use).
    pub geoip_reloads: IntCounterVec,
    hot: Hot,
}

/// Label values resolved once, so the request path increments plain atomics instead of looking
/// a label set up in a map behind a read lock that every request would share.
#[derive(Clone)]
struct Hot {
    pixel_ok: IntCounter,
    collect_ok: IntCounter,
    accepted: [IntCounter; 2],
    invalid: [IntCounter; InvalidReason::ALL.len()],
    cut: [IntCounter; CutReason::ALL.len()],
    queue_full: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let latency_buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let requests = counter_vec(
            "pixelpipe_ingest_requests_total",
            "Requests answered.",
            &["route", "status"],
        );
        let hits_accepted = counter_vec(
            "pixelpipe_ingest_hits_accepted_total",
            "Hits handed to the batcher queue.",
            &["transport"],
        );
        let hits_invalid = counter_vec(
            "pixelpipe_ingest_hits_invalid_total",
            "Hits not stored because they were invalid.",
            &["reason"],
        );
        let hits_dropped = counter_vec(
            "pixelpipe_ingest_hits_dropped_total",
            "Valid hits lost before the Kafka producer.",
            &["reason"],
        );
        let fields_cut = counter_vec(
            "pixelpipe_ingest_fields_cut_total",
            "Fields dropped or shortened in stored hits.",
            &["reason"],
        );
        let m = Metrics {
            queue_depth: gauge(
                "pixelpipe_ingest_queue_depth_hits",
                "Hits waiting in the batcher queue.",
            ),
            batch_size: histogram(
                "pixelpipe_ingest_batch_size_hits",
                "Hits taken per batcher wake-up.",
                vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0],
            ),
            delivered: counter(
                "pixelpipe_ingest_kafka_delivered_total",
                "Hits confirmed by Kafka.",
            ),
            delivery_failed: counter_vec(
                "pixelpipe_ingest_kafka_failed_total",
                "Hits Kafka did not take.",
                &["reason"],
            ),
            delivery_latency: histogram(
                "pixelpipe_ingest_kafka_delivery_seconds",
                "From hand-over to the producer until Kafka confirmed the hit.",
                latency_buckets.clone(),
            ),
            producer_queue: gauge(
                "pixelpipe_ingest_kafka_queue_messages",
                "Messages in librdkafka's queue.",
            ),
            broker_rtt: {
                let g = GaugeVec::new(
                    Opts::new("pixelpipe_ingest_kafka_broker_rtt_seconds",
                        "Broker round-trip time, librdkafka's average over its last statistics window."),
                    &["broker"],
                ).expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            connections_open: gauge(
                "pixelpipe_ingest_connections_open",
                "HTTP connections open now.",
            ),
            connections_rejected: counter(
                "pixelpipe_ingest_connections_rejected_total",
                "Connections closed at once because http.max_connections were open.",
            ),
            signatures: counter_vec(
                "pixelpipe_ingest_signatures_checked_total",
                "Signed URLs checked, by result.",
                &["result"],
            ),
            clicks_refused: counter_vec(
                "pixelpipe_ingest_clicks_refused_total",
                "GET /c requests answered 400 instead of a redirect, by reason.",
                &["reason"],
            ),
            geoip_reloads: counter_vec(
                "pixelpipe_ingest_geoip_reloads_total",
                "GeoIP database reloads, by result; failed keeps the database in use.",
                &["result"],
            ),
            registry,
            hot: Hot {
                pixel_ok: requests.with_label_values(&["pixel", "200"]),
                collect_ok: requests.with_label_values(&["collect", "204"]),
                accepted: [Transport::Pixel, Transport::Beacon]
                    .map(|t| hits_accepted.with_label_values(&[transport_label(t)])),
                invalid: InvalidReason::ALL.map(|r| hits_invalid.with_label_values(&[r.as_str()])),
                cut: CutReason::ALL.map(|r| fields_cut.with_label_values(&[r.as_str()])),
                queue_full: hits_dropped.with_label_values(&["queue_full"]),
            },
            requests,
            hits_accepted,
            hits_invalid,
            hits_dropped,
        };
        // Every reason exists from the start (at zero), so alerts see the series before the event.
        for r in DROP_REASONS {
            m.hits_dropped.with_label_values(&[r]);
        }
        for r in ["ok", "failed"] {
            m.geoip_reloads.with_label_values(&[r]);
        }
        for r in CLICK_REFUSED_REASONS {
            m.clicks_refused.with_label_values(&[r]);
        }
        for s in crate::signing::Signature::ALL {
            if s != crate::signing::Signature::Absent {
                m.signatures.with_label_values(&[s.as_str()]);
            }
        }
        m
    }

    /// Counts an answered request.
    pub fn request(&self, route: &'static str, status: hyper::StatusCode) {
        match (route, status.as_u16()) {
            ("pixel", 200) => self.hot.pixel_ok.inc(),
            ("collect", 204) => self.hot.collect_ok.inc(),
            (route, _) => self
                .requests
                .with_label_values(&[route, status.as_str()])
                .inc(),
        }
    }

    /// Counts a hit handed to the queue.
    pub fn accepted(&self, transport: Transport) {
        self.hot.accepted[transport as usize].inc();
    }

    /// Counts a hit that was not stored because it was invalid.
    pub fn invalid(&self, reason: InvalidReason) {
        self.hot.invalid[reason as usize].inc();
    }

    /// Counts a checked URL signature.
    pub fn signature(&self, result: crate::signing::Signature) {
        self.signatures.with_label_values(&[result.as_str()]).inc();
    }

    /// Counts a refused click redirect.
    pub fn click_refused(&self, reason: &'static str) {
        self.clicks_refused.with_label_values(&[reason]).inc();
    }

    /// Counts a valid hit dropped because the queue was full.
    pub fn queue_full(&self) {
        self.hot.queue_full.inc();
    }

    /// The connection metrics of the public listener.
    pub fn connections(&self) -> ConnectionMetrics {
        ConnectionMetrics {
            open: self.connections_open.clone(),
            rejected: self.connections_rejected.clone(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        render(&self.registry)
    }

    /// Counts the cut fields of one hit by reason.
    pub fn cuts(&self, cuts: &Cuts) {
        if cuts.total() == 0 {
            return;
        }
        for r in CutReason::ALL {
            let n = cuts.get(r);
            if n > 0 {
                self.hot.cut[r as usize].inc_by(u64::from(n));
            }
        }
    }
}

/// The two connection metrics a listener keeps, so any service (the edge, the sink's admin
/// listener) can hand in its own.
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: prometheus::IntGauge,
    /// Connections closed at once because the cap was reached.
    pub rejected: prometheus::IntCounter,
}

/// The Prometheus text exposition of a registry (every pixelpipe service's `/metrics`).
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding");
    String::from_utf8(out).expect("exposition is UTF-8")
}

impl Metrics {
    /// Totals over all labels, for the shutdown report.
    pub fn report(&self) -> crate::Report {
        fn sum(v: &IntCounterVec) -> u64 {
            use prometheus::core::Collector;
            v.collect()
                .iter()
                .flat_map(|f| f.get_metric())
                .map(|m| m.get_counter().get_value() as u64)
                .sum()
        }
        crate::Report {
            accepted: sum(&self.hits_accepted),
            delivered: self.delivered.get(),
            failed: sum(&self.delivery_failed),
            dropped: sum(&self.hits_dropped),
            invalid: sum(&self.hits_invalid),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_convention_and_render() {
        let m = Metrics::new();
        m.delivered.inc();
        let text = m.render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(name.starts_with("pixelpipe_ingest_"), "{name}");
        }
        assert!(text.contains("pixelpipe_ingest_kafka_delivered_total 1"));
        assert!(text.contains("pixelpipe_ingest_hits_dropped_total{reason=\"queue_full\"} 0"));
    }
}
