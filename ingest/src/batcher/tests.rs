//! The batchers with a recording producer: every hit produced once, message keys, the
//! stop-and-drain rule, and privacy applied exactly once.

use super::*;
use crate::privacy::{visitor_id, IpMode, PrivacyConfig, SignalPolicy};
use crate::produce::testing::RecordingProducer;
use crate::queue::HitQueue;
use crate::wire::testing::sample_hit;
use std::sync::atomic::Ordering;

fn settings(key: MessageKey) -> BatcherSettings {
    BatcherSettings {
        threads: 2,
        batch_max_hits: 8,
        message_key: key,
        drain_timeout: Duration::from_millis(200),
        // Full IPs and ignored signals: these tests are about keys and delivery.
        privacy: Privacy::new(PrivacyConfig {
            ip_mode: IpMode::Full,
            gpc: SignalPolicy::Ignore,
            dnt: SignalPolicy::Ignore,
            optout: SignalPolicy::Ignore,
            ..PrivacyConfig::default()
        }),
        geo: Arc::new(Geo::none()),
    }
}

#[test]
fn every_queued_hit_is_produced_once_and_decodes() {
    let metrics = Metrics::new();
    let (q, rx) = HitQueue::new(1000, 80, metrics.clone());
    let producer = Arc::new(RecordingProducer::default());
    let b = Batchers::spawn(
        rx,
        producer.clone(),
        settings(MessageKey::Visitor),
        metrics.clone(),
    )
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..500 {
        let mut h = sample_hit();
        h.event_id = uuid::Uuid::from_u128(i);
        ids.push(h.event_id);
        q.offer(h);
    }
    b.stop_and_drain();
    let sent = producer.sent.lock().unwrap();
    let mut got: Vec<_> = sent
        .iter()
        .map(|(_, p)| wire::decode(p).unwrap().event_id)
        .collect();
    got.sort();
    assert_eq!(got, ids);
    assert_eq!(
        sent[0].0.as_deref(),
        Some(&b"u-42"[..]),
        "visitor key is the uid"
    );
}

#[test]
fn message_keys() {
    for (mode, uid, want) in [
        (MessageKey::Site, Some("u"), Some(b"shop".to_vec())),
        (MessageKey::Visitor, None, Some(b"2001:db8::1".to_vec())),
        (MessageKey::None, Some("u"), None),
    ] {
        let metrics = Metrics::new();
        let (q, rx) = HitQueue::new(10, 80, metrics.clone());
        let producer = Arc::new(RecordingProducer::default());
        let b = Batchers::spawn(rx, producer.clone(), settings(mode), metrics).unwrap();
        let mut h = sample_hit();
        h.user_id = uid.map(str::to_owned);
        q.offer(h);
        b.stop_and_drain();
        assert_eq!(producer.sent.lock().unwrap()[0].0, want, "{mode:?}");
    }
}

#[test]
fn a_full_producer_at_shutdown_is_counted_not_hidden() {
    let metrics = Metrics::new();
    let (q, rx) = HitQueue::new(100, 80, metrics.clone());
    let producer = Arc::new(RecordingProducer::default());
    producer.full.store(true, Ordering::SeqCst);
    let b = Batchers::spawn(
        rx,
        producer.clone(),
        settings(MessageKey::None),
        metrics.clone(),
    )
    .unwrap();
    for _ in 0..10 {
        q.offer(sample_hit());
    }
    // Let a batcher take the first batch and start retrying against the full producer.
    while producer.refused.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    b.stop_and_drain();
    assert!(producer.sent.lock().unwrap().is_empty());
    let text = metrics.render();
    assert!(
        text.contains("pixelpipe_ingest_hits_dropped_total{reason=\"shutdown\"} 10"),
        "{text}"
    );
}

/// A hit whose send was interrupted by stop goes through the drain; its place and privacy
/// must not be computed again from the already minimised address.
#[test]
fn a_hit_retried_in_the_drain_is_prepared_once() {
    let metrics = Metrics::new();
    let (q, rx) = HitQueue::new(10, 80, metrics.clone());
    let producer = Arc::new(RecordingProducer::default());
    producer.full.store(true, Ordering::SeqCst);
    let privacy = PrivacyConfig {
        hash_secret: "0123456789abcdef".into(),
        ..PrivacyConfig::default()
    };
    let settings = BatcherSettings {
        threads: 1,
        batch_max_hits: 8,
        message_key: MessageKey::None,
        drain_timeout: Duration::from_secs(5),
        privacy: Privacy::new(privacy),
        geo: Arc::new(Geo::none()),
    };
    let b = Batchers::spawn(rx, producer.clone(), settings, metrics).unwrap();
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
    q.offer(hit);
    while producer.refused.load(Ordering::SeqCst) == 0 {
        std::thread::yield_now();
    }
    let stopping = std::thread::spawn(move || b.stop_and_drain());
    std::thread::sleep(Duration::from_millis(50));
    producer.full.store(false, Ordering::SeqCst);
    stopping.join().unwrap();
    let sent = producer.sent.lock().unwrap();
    assert_eq!(sent.len(), 1);
    let got = wire::decode(&sent[0].1).unwrap();
    assert_eq!(got.client_ip, Some("203.0.113.0".parse().unwrap()));
    assert_eq!(
        got.visitor_id.as_deref(),
        Some(expected.as_str()),
        "computed once, from the full address"
    );
}
