//! Every metric the sink exports, declared in one place: `pixelpipe_sink_<noun>_<unit>[_total]`,
//! bounded labels (reasons, partition numbers), one registry per [`Metrics`].

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::enrich::CLASSES;
use crate::row::BAD_REASONS;

/// The sink's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Messages read from Kafka.
    pub consumed: IntCounter,
    /// Hit rows ClickHouse accepted.
    pub rows_inserted: IntCounter,
    /// Messages dead-lettered, by reason.
    pub dead_lettered: IntCounterVec,
    /// Rows per written batch.
    pub batch_rows: Histogram,
    /// Kafka payload bytes per written batch.
    pub batch_bytes: Histogram,
    /// Time to write one batch (dead letters and rows), per attempt that succeeded.
    pub insert_seconds: Histogram,
    /// Failed write attempts that were retried.
    pub retries: IntCounter,
    /// Batches given up at shutdown without committing (read again by the next owner).
    pub batches_abandoned: IntCounter,
    /// Offsets committed (one per partition per batch).
    pub commits: IntCounter,
    /// Consumer lag per partition, from librdkafka statistics.
    pub consumer_lag: IntGaugeVec,
    /// Hits decoded, by traffic class (`enrich::CLASSES`).
    pub classified: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        }
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
        let m = Metrics {
            consumed: counter(
                "pixelpipe_sink_messages_consumed_total",
                "Messages read from Kafka.",
            ),
            rows_inserted: counter(
                "pixelpipe_sink_rows_inserted_total",
                "Hit rows ClickHouse accepted.",
            ),
            dead_lettered: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pixelpipe_sink_dead_lettered_total",
                        "Messages dead-lettered, by reason.",
                    ),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            batch_rows: histogram(
                "pixelpipe_sink_batch_rows",
                "Rows per written batch.",
                vec![1.0, 10.0, 100.0, 1000.0, 10_000.0, 50_000.0, 100_000.0],
            ),
            batch_bytes: histogram(
                "pixelpipe_sink_batch_bytes",
                "Kafka payload bytes per written batch.",
                prometheus::exponential_buckets(1024.0, 4.0, 10).expect("valid buckets"),
            ),
            insert_seconds: histogram(
                "pixelpipe_sink_insert_seconds",
                "Time to write one batch.",
                vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ],
            ),
            retries: counter(
                "pixelpipe_sink_insert_retries_total",
                "Failed batch writes that were retried.",
            ),
            batches_abandoned: counter(
                "pixelpipe_sink_batches_abandoned_total",
                "Batches given up at shutdown without committing.",
            ),
            commits: counter(
                "pixelpipe_sink_offsets_committed_total",
                "Offsets committed, one per partition per batch.",
            ),
            consumer_lag: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        "pixelpipe_sink_consumer_lag_messages",
                        "Consumer lag per partition.",
                    ),
                    &["partition"],
                )
                .expect("valid metric"),
            ),
            classified: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pixelpipe_sink_hits_classified_total",
                        "Hits decoded, by traffic class.",
                    ),
                    &["class"],
                )
                .expect("valid metric"),
            ),
            registry,
        };
        for r in BAD_REASONS {
            m.dead_lettered.with_label_values(&[r]);
        }
        for c in CLASSES {
            m.classified.with_label_values(&[c]);
        }
        m
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        pixelpipe_ingest::metrics::render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
