//! The batchers with a recording producer: every hit handed over once, message keys, hits the
//! producer cannot take spooled (never dropped, never waited for), disk durability, and privacy
//! applied exactly once, before anything reaches the spool.

use super::*;
use crate::config::MessageKey;
use crate::privacy::{visitor_id, PrivacyConfig};
use crate::queue::HitQueue;
use crate::spool::{scan, Durability};
use crate::testing::RecordingProducer;
use crate::testing::{raw_privacy, TempLedger};
use crate::wire::{self, testing::sample_hit};
use std::sync::atomic::Ordering;
use std::sync::Arc;

fn settings(outbound: Outbound, durability: Durability) -> BatcherSettings {
    BatcherSettings {
        threads: 2,
        batch_max_hits: 8,
        linger: std::time::Duration::ZERO,
        durability,
        outbound,
    }
}

fn run(
    t: &TempLedger,
    outbound: Outbound,
    durability: Durability,
    producer: &Arc<RecordingProducer>,
    hits: impl IntoIterator<Item = Hit>,
) {
    producer.report_to(t.ledger());
    let (q, rx) = HitQueue::new(1000, 80, outbound.clone());
    let b = Batchers::spawn(
        rx,
        producer.clone(),
        settings(outbound, durability),
        t.metrics().clone(),
    )
    .unwrap();
    for h in hits {
        q.offer(Box::new(h));
    }
    b.stop_and_drain();
}

fn numbered(n: u128) -> Vec<Hit> {
    (0..n)
        .map(|i| {
            let mut h = sample_hit();
            h.event_id = uuid::Uuid::from_u128(i);
            h
        })
        .collect()
}

fn sorted_ids<'a>(payloads: impl Iterator<Item = &'a [u8]>) -> Vec<uuid::Uuid> {
    let mut ids: Vec<_> = payloads
        .map(|p| wire::decode(p).unwrap().event_id)
        .collect();
    ids.sort();
    ids
}

/// With a linger, the first hit of a quiet spell is taken at once, and a stop while the batcher
/// sleeps still hands every hit over.
#[test]
fn a_lingering_batcher_takes_what_gathered_and_drains_on_stop() {
    let t = TempLedger::new();
    let producer = Arc::new(RecordingProducer::default());
    producer.report_to(t.ledger());
    let outbound = t.outbound();
    let (q, rx) = HitQueue::new(1000, 80, outbound.clone());
    let mut s = settings(outbound, Durability::Memory);
    (s.threads, s.batch_max_hits) = (1, 1000);
    s.linger = std::time::Duration::from_millis(300);
    let b = Batchers::spawn(rx, producer.clone(), s, t.metrics().clone()).unwrap();
    let hits = numbered(100);
    let ids: Vec<_> = hits.iter().map(|h| h.event_id).collect();
    let mut hits = hits.into_iter();
    q.offer(Box::new(hits.next().unwrap()));
    // The first hit of a quiet spell is taken at once; the batcher then sleeps.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while producer.sent.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "first hit never taken"
        );
        std::thread::yield_now();
    }
    for h in hits {
        q.offer(Box::new(h));
    }
    b.stop_and_drain();
    let sent = producer.sent.lock().unwrap();
    assert_eq!(sorted_ids(sent.iter().map(|(_, p)| p.as_slice())), ids);
}

/// A full batch means more is waiting: the batcher takes it at once, so a long linger never caps
/// the rate at `batch_max_hits` per linger.
#[test]
fn a_full_batch_is_followed_at_once_whatever_the_linger() {
    let t = TempLedger::new();
    let producer = Arc::new(RecordingProducer::default());
    producer.report_to(t.ledger());
    let outbound = t.outbound();
    let (q, rx) = HitQueue::new(1000, 80, outbound.clone());
    for h in numbered(50) {
        q.offer(Box::new(h));
    }
    let mut s = settings(outbound, Durability::Memory);
    (s.threads, s.batch_max_hits) = (1, 5);
    s.linger = std::time::Duration::from_secs(3600);
    let _b = Batchers::spawn(rx, producer.clone(), s, t.metrics().clone()).unwrap();
    // Ten full batches; a batcher that slept after each would take ten hours.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while producer.sent.lock().unwrap().len() < 50 {
        assert!(std::time::Instant::now() < deadline, "stuck in the linger");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn every_queued_hit_is_produced_once_and_decodes() {
    let t = TempLedger::new();
    let producer = Arc::new(RecordingProducer::default());
    let hits = numbered(500);
    let ids: Vec<_> = hits.iter().map(|h| h.event_id).collect();
    run(&t, t.outbound(), Durability::Memory, &producer, hits);
    let sent = producer.sent.lock().unwrap();
    assert_eq!(sorted_ids(sent.iter().map(|(_, p)| p.as_slice())), ids);
    assert_eq!(
        sent[0].0.as_deref(),
        Some(&b"u-42"[..]),
        "visitor key is the uid"
    );
    assert_eq!(t.spool().stats().records, 0, "memory mode spools nothing");
}

#[test]
fn message_keys() {
    for (mode, uid, want) in [
        (MessageKey::Site, Some("u"), Some(b"shop".to_vec())),
        (MessageKey::Visitor, None, Some(b"2001:db8::1".to_vec())),
        (MessageKey::None, Some("u"), None),
    ] {
        let t = TempLedger::new();
        let producer = Arc::new(RecordingProducer::default());
        let mut h = sample_hit();
        h.user_id = uid.map(str::to_owned);
        let outbound = t.outbound_with(mode, raw_privacy());
        run(&t, outbound, Durability::Memory, &producer, [h]);
        assert_eq!(producer.sent.lock().unwrap()[0].0, want, "{mode:?}");
    }
}

/// A producer whose buffer is full never makes a batcher wait, and never costs a hit: each goes
/// to the spool, whole (key and bytes), for replay.
#[test]
fn hits_the_producer_cannot_take_are_spooled_not_dropped() {
    let t = TempLedger::new();
    let producer = Arc::new(RecordingProducer::default());
    producer.full.store(true, Ordering::SeqCst);
    let hits = numbered(10);
    let ids: Vec<_> = hits.iter().map(|h| h.event_id).collect();
    run(&t, t.outbound(), Durability::Memory, &producer, hits);
    assert!(producer.sent.lock().unwrap().is_empty());
    assert_eq!(t.spool().stats().records, 10);
    let report = t.metrics().report();
    assert_eq!(report.dropped, 0);
    let mut spooled = Vec::new();
    for entry in std::fs::read_dir(t.dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "seg") {
            spooled.push(std::fs::read(path).unwrap());
        }
    }
    let records: Vec<_> = spooled.iter().flat_map(|b| scan(b).0).collect();
    assert!(records
        .iter()
        .all(|r| !r.live && r.key == Some(&b"u-42"[..])));
    assert_eq!(sorted_ids(records.iter().map(|r| r.payload)), ids);
}

/// Disk durability: every hit is in the spool (live) before the producer sees it, and settled
/// when it is delivered; failed ones are appended again for replay.
#[test]
fn disk_durability_spools_first_and_settles_on_delivery() {
    let t = TempLedger::new();
    let producer = Arc::new(RecordingProducer::default());
    run(&t, t.outbound(), Durability::Disk, &producer, numbered(20));
    assert_eq!(producer.sent.lock().unwrap().len(), 20);
    let text = t.metrics().render();
    assert!(
        text.contains("pixelpipe_ingest_spool_appended_total 20"),
        "{text}"
    );
    assert_eq!(t.spool().stats().records, 0, "all delivered, all settled");

    let t = TempLedger::new();
    let producer = Arc::new(RecordingProducer::default());
    producer.failing.store(true, Ordering::SeqCst);
    run(&t, t.outbound(), Durability::Disk, &producer, numbered(20));
    assert_eq!(t.spool().stats().records, 20, "failed: pending replay");
    assert_eq!(t.metrics().report().failed, 20);
    assert!(t
        .metrics()
        .render()
        .contains("pixelpipe_ingest_spool_appended_total 40"));
}

/// The spool sees the hit after the privacy policy: a truncated address on disk, and the
/// visitor id computed once, from the full one.
#[test]
fn privacy_is_applied_once_before_the_spool() {
    let t = TempLedger::new();
    let producer = Arc::new(RecordingProducer::default());
    producer.full.store(true, Ordering::SeqCst);
    let privacy = PrivacyConfig {
        hash_secret: "0123456789abcdef".into(),
        ..PrivacyConfig::default()
    };
    let mut hit = sample_hit();
    hit.client_ip = Some("203.0.113.77".parse().unwrap());
    (
        hit.dnt,
        hit.sec_gpc,
        hit.visitor_id,
        hit.anonymized,
        hit.opted_out,
    ) = (None, None, None, false, false);
    let expected = visitor_id(
        "0123456789abcdef",
        hit.received_at_ms / 86_400_000,
        "shop",
        "203.0.113.77".parse().unwrap(),
        "Mozilla/5.0",
    );
    let outbound = t.outbound_with(MessageKey::None, privacy);
    run(&t, outbound, Durability::Memory, &producer, [hit]);
    let batch = t
        .spool()
        .next_replay()
        .unwrap()
        .expect("one segment to replay");
    let (records, corrupt) = scan(&batch.bytes);
    assert_eq!((records.len(), corrupt), (1, 0));
    let got = wire::decode(records[0].payload).unwrap();
    assert_eq!(got.client_ip, Some("203.0.113.0".parse().unwrap()));
    assert_eq!(
        got.visitor_id.as_deref(),
        Some(expected.as_str()),
        "computed once, from the full address"
    );
}
