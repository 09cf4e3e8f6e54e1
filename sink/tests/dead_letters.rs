//! `pixelpipe-sink replay-dead-letters` against the real broker: every message on the dead-letter
//! topic is copied onto the hits topic as it is, and the dead-letter topic is left
//! as it was.

// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;

use common::kafka::unique_topic;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn replay_copies_every_dead_letter_onto_the_hits_topic_and_keeps_them() {
    let topic = unique_topic("replay");
    create_topics(&topic, 2).await;
    let dlq = format!("{topic}.dlq");
    let bodies: Vec<Vec<u8>> = (0..25)
        .map(|i| format!("dead letter {i}").into_bytes())
        .collect();
    let (d, b) = (dlq.clone(), bodies.clone());
    tokio::task::spawn_blocking(move || {
        let payloads: Vec<Option<&[u8]>> = b.iter().map(|p| Some(p.as_slice())).collect();
        produce_payloads(&d, &payloads, &[]);
    })
    .await
    .unwrap();

    let config = sink_config(&topic, "unused_");
    let copied = pixelpipe_sink::replay::replay_dead_letters(&config)
        .await
        .unwrap();
    assert_eq!(copied, bodies.len() as u64);

    let want: BTreeSet<Vec<u8>> = bodies.iter().cloned().collect();
    let on_hits = tokio::task::spawn_blocking(move || read_raw(&topic, want.len()))
        .await
        .unwrap();
    let got: BTreeSet<Vec<u8>> = on_hits.into_iter().map(|(payload, _)| payload).collect();
    assert_eq!(got, bodies.iter().cloned().collect(), "every payload");
    let still = tokio::task::spawn_blocking(move || read_raw(&dlq, 25))
        .await
        .unwrap();
    assert_eq!(still.len(), 25, "the dead-letter topic keeps its messages");
}
