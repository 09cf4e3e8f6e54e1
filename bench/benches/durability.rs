//! What `spool.durability = "disk"` costs against `memory`, side by side in one run: a batcher
//! thread taking 1024 hits from the channel, preparing (default privacy, no GeoIP) and encoding
//! them, and handing them to a producer that takes everything; in disk mode each batch is first
//! written to the spool (one write call) and settled on delivery. The fsync runs on the replay
//! thread once a second in the edge, not per batch, so it is not in this figure; it is timed on
//! its own as `append_and_fsync_one_batch`.
//!
//! `cargo bench -p pixelpipe-bench --bench durability`

// Set-up failures in a benchmark should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use pixelpipe_bench::pixel_request;
use pixelpipe_ingest::batcher::{BatcherSettings, Batchers};
use pixelpipe_ingest::config::MessageKey;
use pixelpipe_ingest::privacy::PrivacyConfig;
use pixelpipe_ingest::queue::HitQueue;
use pixelpipe_ingest::spool::{Durability, Entry};
use pixelpipe_ingest::testing::RecordingProducer;
use pixelpipe_ingest::testing::TempLedger;
use pixelpipe_ingest::wire::Hit;
use pixelpipe_ingest::Config;

const BATCH: usize = 1024;

/// Real hits, as the edge builds them from the sample requests.
fn sample_hits() -> Vec<Hit> {
    let spool = TempLedger::new();
    let (edge, rx) = spool.edge(&Config::default(), BATCH);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let peer = "203.0.113.9".parse().unwrap();
    (0..BATCH as u64)
        .map(|i| {
            runtime.block_on(edge.handle(pixel_request(i * 10), peer));
            *rx.try_recv().unwrap()
        })
        .collect()
}

fn durability(c: &mut Criterion) {
    let hits = sample_hits();
    let mut group = c.benchmark_group("durability");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, durability) in [("memory", Durability::Memory), ("disk", Durability::Disk)] {
        let spool = TempLedger::new();
        let producer = Arc::new(RecordingProducer::default());
        producer.report_to(spool.ledger());
        let outbound = spool.outbound_with(MessageKey::Visitor, PrivacyConfig::default());
        group.bench_function(format!("batch_of_1024_{name}"), |b| {
            b.iter_batched(
                || {
                    // Keep the spool from filling: delete settled segments, as the edge's
                    // replay thread does every fsync interval.
                    spool.spool().sync().unwrap();
                    producer.sent.lock().unwrap().clear();
                    let (q, rx) = HitQueue::new(BATCH, 100, outbound.clone());
                    for h in &hits {
                        q.offer(Box::new(h.clone()));
                    }
                    (q, rx)
                },
                |(q, rx)| {
                    let b = Batchers::spawn(
                        rx,
                        producer.clone(),
                        BatcherSettings {
                            threads: 1,
                            batch_max_hits: BATCH,
                            linger: std::time::Duration::ZERO,
                            durability,
                            outbound: outbound.clone(),
                        },
                        spool.metrics().clone(),
                    )
                    .unwrap();
                    b.stop_and_drain();
                    q
                },
                BatchSize::PerIteration,
            )
        });
    }
    let spool = TempLedger::new();
    let payload = vec![b'x'; 600];
    group.bench_function("append_and_fsync_one_batch", |b| {
        b.iter(|| {
            let segment = spool
                .spool()
                .append(
                    (0..BATCH).map(|_| (None, payload.as_slice())),
                    Entry::WrittenAhead,
                )
                .unwrap();
            for _ in 0..BATCH {
                spool.spool().settle(segment, Entry::WrittenAhead);
            }
            spool.spool().sync().unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, durability);
criterion_main!(benches);
