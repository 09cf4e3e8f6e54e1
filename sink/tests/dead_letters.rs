//! `pixelpipe-sink replay-dead-letters` against the real broker: every message on the dead-letter
//! topic is copied onto the hits topic as it is, once; a second replay copies only what came
//! after the first; the dead-letter topic keeps its messages.

// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::kafka::{create_topic, unique_topic};
use common::*;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;

/// Produces `bodies` to `partition` of `topic`, keyed by their own text.
fn produce_to(topic: &str, partition: i32, bodies: &[String]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka::brokers())
        .create()
        .unwrap();
    for body in bodies {
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(partition)
                    .key(body.as_str())
                    .payload(body.as_str()),
            )
            .unwrap();
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn replay_copies_each_dead_letter_once_and_resumes_where_it_ended() {
    let topic = unique_topic("replay");
    let dlq = format!("{topic}.dlq");
    create_topic(&topic, 2).await;
    // Three partitions, the last left empty: its end is reached at offset 0.
    create_topic(&dlq, 3).await;
    let first: Vec<String> = (0..25).map(|i| format!("dead letter {i}")).collect();
    let later: Vec<String> = (25..30).map(|i| format!("dead letter {i}")).collect();
    let (d, f) = (dlq.clone(), first.clone());
    tokio::task::spawn_blocking(move || {
        produce_to(&d, 0, &f[..15]);
        produce_to(&d, 1, &f[15..]);
    })
    .await
    .unwrap();

    let config = sink_config(&topic, "unused_");
    let replay = || pixelpipe_sink::replay::replay_dead_letters(&config);
    assert_eq!(replay().await.unwrap(), 25);
    assert_eq!(replay().await.unwrap(), 0, "nothing new since the first");
    let (d, l) = (dlq.clone(), later.clone());
    tokio::task::spawn_blocking(move || produce_to(&d, 1, &l))
        .await
        .unwrap();
    assert_eq!(replay().await.unwrap(), 5, "only what came after");

    // Exactly the 30, each once: read one more than expected, until the helper's deadline.
    let t = topic.clone();
    let on_hits = tokio::task::spawn_blocking(move || read_raw(&t, 31))
        .await
        .unwrap();
    let mut got: Vec<String> = on_hits
        .into_iter()
        .map(|(payload, _)| String::from_utf8(payload).unwrap())
        .collect();
    got.sort();
    let mut want: Vec<String> = first.iter().chain(&later).cloned().collect();
    want.sort();
    assert_eq!(got, want);
    let still = tokio::task::spawn_blocking(move || read_raw(&dlq, 30))
        .await
        .unwrap();
    assert_eq!(still.len(), 30, "the dead-letter topic keeps its messages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn replay_names_a_missing_dead_letter_topic() {
    let topic = unique_topic("replay_missing");
    create_topic(&topic, 1).await;
    let config = sink_config(&topic, "unused_");
    let error = pixelpipe_sink::replay::replay_dead_letters(&config)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("kafka.dead_letter_topic") && error.contains(".dlq"),
        "{error}"
    );
}
