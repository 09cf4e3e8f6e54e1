//! Reads hits back from a topic and summarises them: the local demo's proof that hits arrived.
//!
//! `cargo run -p pixelpipe-ingest --example tail -- --topic pixelpipe.hits --count 200`
//! Decodes with the edge's own wire module, like every consumer of the topic must.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use pixelpipe_ingest::wire;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};

/// Print hits from a pixelpipe topic.
#[derive(Parser)]
struct Args {
    /// Bootstrap brokers.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Topic to read from the beginning.
    #[arg(long, default_value = "pixelpipe.hits")]
    topic: String,
    /// Stop after this many hits.
    #[arg(long, default_value_t = 100)]
    count: usize,
    /// Stop after this many seconds even if fewer arrived.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// Print this many hits in full.
    #[arg(long, default_value_t = 2)]
    show: usize,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", format!("pixelpipe-tail-{}", std::process::id()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()?;
    consumer.subscribe(&[&args.topic])?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout_s);
    let mut by_kind_campaign: BTreeMap<(String, String), usize> = BTreeMap::new();
    let (mut read, mut undecodable) = (0, 0);
    while read < args.count && Instant::now() < deadline {
        let Some(msg) = consumer.poll(Duration::from_millis(250)) else {
            continue;
        };
        let msg = msg?;
        match wire::decode(msg.payload().unwrap_or_default()) {
            Ok(hit) => {
                if read < args.show {
                    println!(
                        "hit {} (partition {}, offset {}):",
                        read + 1,
                        msg.partition(),
                        msg.offset()
                    );
                    println!("{}", serde_json::to_string_pretty(&hit)?);
                }
                let campaign = hit.campaign.clone().unwrap_or_else(|| "-".into());
                *by_kind_campaign.entry((hit.kind, campaign)).or_default() += 1;
            }
            Err(e) => {
                undecodable += 1;
                eprintln!("offset {}: {e}", msg.offset());
            }
        }
        read += 1;
    }
    println!(
        "\n{read} hits read from topic {} ({undecodable} undecodable)",
        args.topic
    );
    println!("{:<14} {:<16} {:>6}", "kind", "campaign", "hits");
    for ((kind, campaign), n) in &by_kind_campaign {
        println!("{kind:<14} {campaign:<16} {n:>6}");
    }
    if read < args.count {
        return Err(format!(
            "only {read} of {} hits arrived within {} s",
            args.count, args.timeout_s
        )
        .into());
    }
    Ok(())
}
