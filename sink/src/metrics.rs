//! Every metric the sink exports, declared in one place: `pixelpipe_sink_<noun>_<unit>[_total]`,
//! labels from enums (bad-message reasons, retry causes, traffic classes) or partition numbers,
//! one registry per [`Metrics`]. The fields are private: callers say what happened through a
//! method.

use std::time::Duration;

use pixelpipe_common::classes::TrafficClass;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use crate::error::RetryCause;
use crate::row::BadReason;

/// The sink's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    consumed: IntCounter,
    rows_inserted: IntCounter,
    dead_lettered: IntCounterVec,
    batch_rows: Histogram,
    batch_bytes: Histogram,
    insert_seconds: Histogram,
    retries: IntCounterVec,
    batches_abandoned: IntCounter,
    commits: IntCounter,
    consumer_lag: IntGaugeVec,
    classified: IntCounterVec,
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
            retries: reg(
                &registry,
                IntCounterVec::new(
                    Opts::new(
                        "pixelpipe_sink_insert_retries_total",
                        "Failed batch writes that were retried, by cause.",
                    ),
                    &["cause"],
                )
                .expect("valid metric"),
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
        // Every label exists from the start (at zero), so alerts see the series before the event.
        for r in BadReason::ALL {
            m.dead_lettered.with_label_values(&[r.as_str()]);
        }
        for c in RetryCause::ALL {
            m.retries.with_label_values(&[c.as_str()]);
        }
        for c in TrafficClass::ALL {
            m.classified.with_label_values(&[c.as_str()]);
        }
        m
    }

    /// Counts a message read from Kafka.
    pub fn consumed(&self) {
        self.consumed.inc();
    }

    /// Counts a decoded hit by its traffic class.
    pub fn classified(&self, class: TrafficClass) {
        self.classified.with_label_values(&[class.as_str()]).inc();
    }

    /// Records a batch written in `took`: `rows` in all (hits and bad messages), of which
    /// `hits` went to the hits table, from `payload_bytes` of Kafka payload.
    pub fn stored(&self, rows: usize, hits: usize, payload_bytes: usize, took: Duration) {
        self.insert_seconds.observe(took.as_secs_f64());
        self.batch_rows.observe(rows as f64);
        self.batch_bytes.observe(payload_bytes as f64);
        self.rows_inserted.inc_by(hits as u64);
    }

    /// Counts a message sent to the dead-letter topic.
    pub fn dead_lettered(&self, reason: BadReason) {
        self.dead_lettered
            .with_label_values(&[reason.as_str()])
            .inc();
    }

    /// Counts a failed batch write that will be retried, by why it failed.
    pub fn retried(&self, cause: RetryCause) {
        self.retries.with_label_values(&[cause.as_str()]).inc();
    }

    /// Counts a batch given up at shutdown without committing.
    pub fn abandoned(&self) {
        self.batches_abandoned.inc();
    }

    /// Counts offsets committed, one per partition.
    pub fn committed(&self, partitions: usize) {
        self.commits.inc_by(partitions as u64);
    }

    /// Records a partition's consumer lag, in messages.
    pub fn consumer_lag(&self, partition: i32, lag: i64) {
        self.consumer_lag
            .with_label_values(&[&partition.to_string()])
            .set(lag);
    }

    /// Drops a revoked partition's lag: another sink reports it now, and a stale value here
    /// would be counted twice by a sum over the group.
    pub fn forget_partition(&self, partition: i32) {
        let _ = self
            .consumer_lag
            .remove_label_values(&[&partition.to_string()]);
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        pixelpipe_common::admin::render(&self.registry)
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
    fn names_follow_the_convention_and_every_label_starts_at_zero() {
        let text = Metrics::new().render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let name = line.split_whitespace().nth(2).unwrap();
            assert!(name.starts_with("pixelpipe_sink_"), "{name}");
        }
        for r in BadReason::ALL {
            let series = format!(
                "pixelpipe_sink_dead_lettered_total{{reason=\"{}\"}} 0",
                r.as_str()
            );
            assert!(text.contains(&series), "{series}");
        }
        for c in RetryCause::ALL {
            let series = format!(
                "pixelpipe_sink_insert_retries_total{{cause=\"{}\"}} 0",
                c.as_str()
            );
            assert!(text.contains(&series), "{series}");
        }
        for c in TrafficClass::ALL {
            let series = format!(
                "pixelpipe_sink_hits_classified_total{{class=\"{}\"}} 0",
                c.as_str()
            );
            assert!(text.contains(&series), "{series}");
        }
    }
}
