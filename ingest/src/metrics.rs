//! Every metric the edge exports, declared in one place, and the shutdown [`Report`] read from
//! them.
//!
//! Names follow `pixelpipe_ingest_<noun>_<unit>[_total]`; every label comes from an enum (routes,
//! reasons, transports, signature outcomes) or a small fixed set (statuses, broker names), so
//! cardinality cannot grow with traffic. Each [`Metrics`] owns its registry, so tests and benches
//! run side by side without sharing counters. Every hit that is not delivered to Kafka is counted
//! here under exactly one reason. The fields are private: callers say what happened through a
//! method, and this module alone knows which series that touches.

use std::time::Duration;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use pixelpipe_common::http::ConnectionMetrics;

use crate::hit::{CutReason, Cuts, DropReason, InvalidReason};
use crate::links::ClickRefusal;
use crate::produce::DeliveryFailure;
use crate::redirect::TargetError;
use crate::wire::{Signature, Transport};

/// The edge's routes, as the `route` label of `pixelpipe_ingest_requests_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/p.gif`.
    Pixel,
    /// `/c`.
    Click,
    /// `/collect`.
    Collect,
    /// `/px.js`.
    Script,
    /// `/healthz`.
    Healthz,
    /// `/readyz`.
    Readyz,
    /// `/optout`.
    Optout,
    /// `/optin`.
    Optin,
    /// Any other path.
    Other,
}

impl Route {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Pixel => "pixel",
            Route::Click => "click",
            Route::Collect => "collect",
            Route::Script => "script",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Optout => "optout",
            Route::Optin => "optin",
            Route::Other => "other",
        }
    }
}

/// What became of the hits during the edge's life, as logged at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Hits accepted (into the channel, or spilled to the spool).
    pub accepted: u64,
    /// Hits Kafka confirmed.
    pub delivered: u64,
    /// Hits Kafka did not take (timed out, purged at exit, rejected).
    pub failed: u64,
    /// Valid hits lost for good (spool full or unwritable, too large for Kafka) or dropped by
    /// a privacy policy.
    pub dropped: u64,
    /// Hits not stored because they were invalid.
    pub invalid: u64,
    /// Hits left in the spool, replayed at the next start.
    pub spooled: u64,
}

/// The edge's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    hits_accepted: IntCounterVec,
    hits_invalid: IntCounterVec,
    hits_dropped: IntCounterVec,
    queue_depth: IntGauge,
    ready: IntGauge,
    batch_size: Histogram,
    message_hits: Histogram,
    delivered: IntCounter,
    delivery_failed: IntCounterVec,
    delivery_latency: Histogram,
    producer_queue: IntGauge,
    topic_partitions: IntGauge,
    broker_rtt: GaugeVec,
    connections_open: IntGauge,
    connections_rejected: IntCounter,
    handler_panics: IntCounter,
    forwarding_ignored: IntCounter,
    signatures: IntCounterVec,
    clicks_refused: IntCounterVec,
    geoip_reloads: IntCounterVec,
    spool: SpoolMetrics,
    hot: Hot,
}

/// The spool's series.
#[derive(Clone)]
struct SpoolMetrics {
    bytes: IntGauge,
    records: IntGauge,
    oldest_age: Gauge,
    appended: IntCounter,
    replayed: IntCounter,
    corrupt: IntCounter,
    spilled: IntCounter,
    write_ahead_skipped: IntCounter,
}

/// Label values resolved once, so the request path increments plain atomics instead of looking
/// a label set up in a map behind a read lock that every request would share.
#[derive(Clone)]
struct Hot {
    pixel_ok: IntCounter,
    collect_ok: IntCounter,
    accepted: [IntCounter; Transport::ALL.len()],
    invalid: [IntCounter; InvalidReason::ALL.len()],
    cut: [IntCounter; CutReason::ALL.len()],
    dropped: [IntCounter; DropReason::ALL.len()],
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            reg(&registry, IntGauge::new(name, help).expect("valid metric"))
        };
        let counter = |name: &str, help: &str| {
            reg(
                &registry,
                IntCounter::new(name, help).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            reg(
                &registry,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                    .expect("valid metric"),
            )
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
            "Hits accepted: into the batcher channel, or into the spool when the channel was full.",
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
            ready: gauge(
                "pixelpipe_ingest_ready",
                "1 when /readyz answers 200, 0 when it answers 503 (its body says why); taken at each scrape.",
            ),
            batch_size: histogram(
                "pixelpipe_ingest_batch_size_hits",
                "Hits taken per batcher wake-up.",
                vec![1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0],
            ),
            message_hits: histogram(
                "pixelpipe_ingest_kafka_message_hits",
                "Hits packed into each Kafka message sent (kafka.pack_max_bytes).",
                vec![1.0, 2.0, 4.0, 16.0, 64.0, 256.0, 1024.0],
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
                "From hand-over to the producer until Kafka confirmed the message (once per message, whatever it packs).",
                latency_buckets,
            ),
            topic_partitions: gauge(
                "pixelpipe_ingest_kafka_topic_partitions",
                "Partitions of the hits topic, as the producer last saw them; 0 until known (hits are packed only once it is known).",
            ),
            producer_queue: gauge(
                "pixelpipe_ingest_kafka_queue_messages",
                "Messages in librdkafka's queue.",
            ),
            broker_rtt: reg(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "pixelpipe_ingest_kafka_broker_rtt_seconds",
                        "Broker round-trip time, librdkafka's average over its last statistics window.",
                    ),
                    &["broker"],
                )
                .expect("valid metric"),
            ),
            connections_open: gauge(
                "pixelpipe_ingest_connections_open",
                "HTTP connections open now.",
            ),
            forwarding_ignored: counter(
                "pixelpipe_ingest_forwarding_ignored_total",
                "Requests whose http.client_ip_header came from a peer not in http.trusted_proxies: ignored, the peer recorded. Near the request rate: the proxy in front is not trusted.",
            ),
            handler_panics: counter(
                "pixelpipe_ingest_handler_panics_total",
                "Requests whose handler panicked; each was answered 500 and the server kept serving.",
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
            spool: SpoolMetrics {
                bytes: gauge(
                    "pixelpipe_ingest_spool_bytes",
                    "Bytes of the spool's segment files.",
                ),
                records: gauge(
                    "pixelpipe_ingest_spool_records",
                    "Spooled hits not yet acknowledged by Kafka (awaiting replay, or in flight).",
                ),
                oldest_age: reg(
                    &registry,
                    Gauge::new(
                        "pixelpipe_ingest_spool_oldest_record_age_seconds",
                        "Age of the oldest spooled hit not yet acknowledged (an upper bound); 0 when none.",
                    )
                    .expect("valid metric"),
                ),
                appended: counter(
                    "pixelpipe_ingest_spool_appended_total",
                    "Hits written to the spool.",
                ),
                replayed: counter(
                    "pixelpipe_ingest_spool_replayed_total",
                    "Spooled hits replayed and acknowledged by Kafka.",
                ),
                corrupt: counter(
                    "pixelpipe_ingest_spool_corrupt_records_total",
                    "Torn or corrupt spool records skipped.",
                ),
                spilled: counter(
                    "pixelpipe_ingest_queue_spilled_total",
                    "Hits the channel could not take, written to the spool by the request handler.",
                ),
                write_ahead_skipped: counter(
                    "pixelpipe_ingest_spool_write_ahead_skipped_total",
                    "Hits durability = disk could not write ahead (spool full or unwritable); sent from memory only.",
                ),
            },
            registry,
            // Resolving a label creates its series at zero, so every reason exists from the
            // start and alerts see the series before the event.
            hot: Hot {
                pixel_ok: requests.with_label_values(&[Route::Pixel.as_str(), "200"]),
                collect_ok: requests.with_label_values(&[Route::Collect.as_str(), "204"]),
                accepted: Transport::ALL.map(|t| hits_accepted.with_label_values(&[t.as_str()])),
                invalid: InvalidReason::ALL.map(|r| hits_invalid.with_label_values(&[r.as_str()])),
                cut: CutReason::ALL.map(|r| fields_cut.with_label_values(&[r.as_str()])),
                dropped: DropReason::ALL.map(|r| hits_dropped.with_label_values(&[r.as_str()])),
            },
            requests,
            hits_accepted,
            hits_invalid,
            hits_dropped,
        };
        for r in DeliveryFailure::ALL {
            m.delivery_failed.with_label_values(&[r.as_str()]);
        }
        for r in ["ok", "failed"] {
            m.geoip_reloads.with_label_values(&[r]);
        }
        for r in TargetError::REASONS
            .iter()
            .chain(&ClickRefusal::POLICY_REASONS)
        {
            m.clicks_refused.with_label_values(&[r]);
        }
        for s in Signature::ALL {
            if s != Signature::Absent {
                m.signatures.with_label_values(&[s.as_str()]);
            }
        }
        m
    }

    /// Counts an answered request.
    pub fn request(&self, route: Route, status: hyper::StatusCode) {
        match (route, status.as_u16()) {
            (Route::Pixel, 200) => self.hot.pixel_ok.inc(),
            (Route::Collect, 204) => self.hot.collect_ok.inc(),
            (route, _) => self
                .requests
                .with_label_values(&[route.as_str(), status.as_str()])
                .inc(),
        }
    }

    /// Counts a request whose forwarding header was ignored because its peer is not a trusted
    /// proxy (`TrustedProxies::ignored_forwarding`).
    pub fn forwarding_ignored(&self) {
        self.forwarding_ignored.inc();
    }

    /// Counts a hit handed to the queue.
    pub fn accepted(&self, transport: Transport) {
        self.hot.accepted[transport as usize].inc();
    }

    /// Counts a hit that was not stored because it was invalid.
    pub fn invalid(&self, reason: InvalidReason) {
        self.hot.invalid[reason as usize].inc();
    }

    /// Counts `hits` invalid hits of one reason.
    pub fn invalid_many(&self, reason: InvalidReason, hits: u64) {
        self.hot.invalid[reason as usize].inc_by(hits);
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

    /// Counts a valid hit that never reached the producer.
    pub fn dropped(&self, reason: DropReason) {
        self.hot.dropped[reason as usize].inc();
    }

    /// Counts a checked URL signature.
    pub fn signature(&self, result: Signature) {
        self.signatures.with_label_values(&[result.as_str()]).inc();
    }

    /// Counts a refused click redirect.
    pub fn click_refused(&self, reason: &ClickRefusal) {
        self.clicks_refused
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Records one batcher wake-up: the hits it took, and the hits still waiting after.
    pub fn batch_taken(&self, hits: usize, still_queued: usize) {
        self.batch_size.observe(hits as f64);
        self.queued(still_queued);
    }

    /// Records whether `/readyz` would answer ready now.
    pub fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    /// Records the hits waiting in the channel now.
    pub fn queued(&self, hits: usize) {
        self.queue_depth.set(hits as i64);
    }

    /// Counts a message of `hits` hits Kafka confirmed, `latency` after it was handed over.
    pub fn delivered(&self, latency: Duration, hits: usize) {
        self.delivered.inc_by(hits as u64);
        self.delivery_latency.observe(latency.as_secs_f64());
    }

    /// Counts `hits` hits the producer did not deliver.
    pub fn delivery_failed(&self, reason: DeliveryFailure, hits: usize) {
        self.delivery_failed
            .with_label_values(&[reason.as_str()])
            .inc_by(hits as u64);
    }

    /// Records a message of `hits` hits handed to the Kafka producer.
    pub fn message_sent(&self, hits: usize) {
        self.message_hits.observe(hits as f64);
    }

    /// Records what the spool holds: bytes of its files, records not yet settled, and the age of
    /// the oldest hit waiting for replay (zero when none).
    pub fn spool(&self, bytes: u64, records: u64, oldest_age: Duration) {
        let m = &self.spool;
        m.bytes.set(i64::try_from(bytes).unwrap_or(i64::MAX));
        m.records.set(i64::try_from(records).unwrap_or(i64::MAX));
        m.oldest_age.set(oldest_age.as_secs_f64());
    }

    /// Counts hits written to the spool.
    pub fn spool_appended(&self, hits: u64) {
        self.spool.appended.inc_by(hits);
    }

    /// Counts a spooled hit Kafka acknowledged after replay.
    pub fn spool_replayed(&self) {
        self.spool.replayed.inc();
    }

    /// Counts torn or corrupt spool records skipped.
    pub fn spool_corrupt(&self, records: u64) {
        self.spool.corrupt.inc_by(records);
    }

    /// Counts hits `disk` durability could not write ahead.
    pub fn write_ahead_skipped(&self, hits: u64) {
        self.spool.write_ahead_skipped.inc_by(hits);
    }

    /// Counts a hit the channel could not take (it goes to the spool).
    pub fn spilled(&self) {
        self.spool.spilled.inc();
    }

    /// Records the messages in librdkafka's queue (from its statistics).
    pub fn producer_queue(&self, messages: i64) {
        self.producer_queue.set(messages);
    }

    /// Records the hits topic's partition count as the producer sees it.
    pub fn topic_partitions(&self, partitions: u32) {
        self.topic_partitions.set(i64::from(partitions));
    }

    /// Records a broker's average round-trip time over the last statistics window.
    pub fn broker_rtt(&self, broker: &str, rtt: Duration) {
        self.broker_rtt
            .with_label_values(&[broker])
            .set(rtt.as_secs_f64());
    }

    /// Counts GeoIP database reloads: `loaded` new versions in use, `failed` ones that could not
    /// be read (the database in use stayed).
    pub fn geoip_reloads(&self, loaded: u32, failed: u32) {
        for (result, n) in [("ok", loaded), ("failed", failed)] {
            self.geoip_reloads
                .with_label_values(&[result])
                .inc_by(u64::from(n));
        }
    }

    /// The connection metrics of the public listener.
    pub fn connections(&self) -> ConnectionMetrics {
        ConnectionMetrics {
            open: self.connections_open.clone(),
            rejected: self.connections_rejected.clone(),
            panics: self.handler_panics.clone(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        pixelpipe_common::admin::render(&self.registry)
    }

    /// Totals over all labels, for the shutdown report.
    pub fn report(&self) -> Report {
        fn sum(v: &IntCounterVec) -> u64 {
            use prometheus::core::Collector;
            v.collect()
                .iter()
                .flat_map(|f| f.get_metric())
                .map(|m| m.get_counter().get_value() as u64)
                .sum()
        }
        Report {
            accepted: sum(&self.hits_accepted),
            delivered: self.delivered.get(),
            failed: sum(&self.delivery_failed),
            dropped: sum(&self.hits_dropped),
            invalid: sum(&self.hits_invalid),
            spooled: u64::try_from(self.spool.records.get()).unwrap_or(0),
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
        m.delivered(Duration::from_millis(3), 1);
        let text = m.render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(name.starts_with("pixelpipe_ingest_"), "{name}");
        }
        assert!(text.contains("pixelpipe_ingest_kafka_delivered_total 1"));
        assert!(text.contains("pixelpipe_ingest_hits_dropped_total{reason=\"spool_full\"} 0"));
        assert!(text.contains("pixelpipe_ingest_kafka_failed_total{reason=\"broker_error\"} 0"));
    }

    #[test]
    fn every_reason_is_a_series_from_the_start() {
        let text = Metrics::new().render();
        for r in DropReason::ALL {
            let series = format!(
                "pixelpipe_ingest_hits_dropped_total{{reason=\"{}\"}} 0",
                r.as_str()
            );
            assert!(text.contains(&series), "{series}");
        }
        for r in TargetError::REASONS
            .iter()
            .chain(&ClickRefusal::POLICY_REASONS)
        {
            let series = format!("pixelpipe_ingest_clicks_refused_total{{reason=\"{r}\"}} 0");
            assert!(text.contains(&series), "{series}");
        }
    }

    #[test]
    fn the_report_sums_every_label() {
        let m = Metrics::new();
        m.accepted(Transport::Pixel);
        m.accepted(Transport::Beacon);
        m.dropped(DropReason::Gpc);
        m.dropped(DropReason::SpoolFull);
        m.delivery_failed(DeliveryFailure::TimedOut, 1);
        m.invalid(InvalidReason::BadSite);
        m.delivered(Duration::ZERO, 1);
        assert_eq!(
            m.report(),
            Report {
                accepted: 2,
                delivered: 1,
                failed: 1,
                dropped: 2,
                invalid: 1,
                spooled: 0,
            }
        );
    }
}
