//! How fast the broker hands a backlog to one consumer that does nothing else: the sink's own
//! consumer (same librdkafka settings, a fresh group), counting the hits each message packs.
//! The ceiling for the sink's backlog drain (docs/benchmarks.md).
//!
//! ```sh
//! cargo run --release -p pixelpipe-bench --example fetch_rate -- BROKERS TOPIC HITS
//! ```

use std::time::Instant;

use pixelpipe_ingest::wire;
use pixelpipe_sink::config::SinkConfig;
use pixelpipe_sink::kafka::{HitConsumer, KafkaConsumer};
use pixelpipe_sink::metrics::Metrics;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, brokers, topic, hits] = args.as_slice() else {
        eprintln!("usage: fetch_rate BROKERS TOPIC HITS");
        std::process::exit(2);
    };
    let want: usize = hits.parse().expect("HITS is a number");
    let mut config = SinkConfig::default();
    config.kafka.brokers = brokers.clone();
    config.kafka.topic = topic.clone();
    config.kafka.group_id = format!("fetch-rate-{}", std::process::id());
    let consumer = KafkaConsumer::new(&config, Metrics::new()).expect("consumer");
    let started = Instant::now();
    let (mut got, mut messages, mut first) = (0usize, 0usize, None);
    while got < want {
        let m = consumer.recv().await.expect("consume");
        first.get_or_insert_with(Instant::now);
        got += wire::hits_in(&m.payload);
        messages += 1;
    }
    let first = first.expect("at least one message");
    let from_first = first.elapsed().as_secs_f64();
    println!(
        "fetched {got} hits in {messages} messages: {:.2} s from start ({:.2} s to the first), {:.0} hits/s after the first",
        started.elapsed().as_secs_f64(),
        (first - started).as_secs_f64(),
        got as f64 / from_first
    );
}
