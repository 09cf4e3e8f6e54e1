//! pixelpipe's sink: a Kafka consumer group that reads hits in bulk and stores them in ClickHouse,
//! committing offsets only after ClickHouse has the rows.
//!
//! ```text
//! Kafka topic ─► consumer (StreamConsumer, manual commits) ─► row::decode (via common::wire, enrich)
//!                  │                                             ├─ HitRow ─► batch ─► store (ClickHouse, RowBinary+LZ4)
//!                  │                                             └─ BadMessage ─► batch ─► dlq (<topic>.dlq) + bad_hits
//!                  └─ commit last+1 per partition after the batch is stored
//! ```
//!
//! [`run`] wires the parts; `main.rs` parses the configuration and calls it or [`migrate`].

#![forbid(unsafe_code)]

pub mod batch;
pub mod config;
pub mod consumer;
pub mod dlq;
pub mod enrich;
pub mod error;
pub mod kafka;
pub mod metrics;
pub mod replay;
pub mod retention;
pub mod row;
pub mod schema;
pub mod store;

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

pub use config::SinkConfig;
pub use error::{Error, Result};

use consumer::Sink;
use dlq::KafkaDeadLetters;
use kafka::KafkaConsumer;
use metrics::Metrics;
use schema::Flavour;
use store::ClickHouse;

/// Applies pending migrations and brings table TTLs in line with the configuration; returns the
/// migration versions applied.
pub async fn migrate(config: &SinkConfig) -> Result<Vec<u32>> {
    let client = store::client(&config.clickhouse);
    let flavour = Flavour::detect(&client).await?;
    migrate_with(&client, config, flavour).await
}

async fn migrate_with(
    client: &clickhouse::Client,
    config: &SinkConfig,
    flavour: Flavour,
) -> Result<Vec<u32>> {
    let applied = schema::migrate(client, &config.clickhouse, flavour).await?;
    retention::sync_ttl(client, &config.clickhouse, flavour).await?;
    Ok(applied)
}

/// Deletes rows past each table's retention (`pixelpipe-sink retention`, for servers without
/// TTL); returns the statements sent.
pub async fn delete_expired(config: &SinkConfig) -> Result<Vec<String>> {
    let client = store::client(&config.clickhouse);
    let flavour = Flavour::detect(&client).await?;
    retention::delete_expired(&client, &config.clickhouse, flavour).await
}

/// Runs the sink until `shutdown` completes. ClickHouse being unreachable at start is waited
/// out (with backoff), like an outage later on.
pub async fn run(
    config: SinkConfig,
    admin: std::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let metrics = Metrics::new();
    let enricher = enrich::Enricher::new(&config.enrich)?;
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let admin_task = {
        let m = metrics.clone();
        tokio::spawn(pixelpipe_common::admin::serve_metrics(
            admin,
            move || m.render(),
            Duration::from_secs(2),
            stop.clone(),
        ))
    };

    let Some(flavour) = wait_for_clickhouse(&config, &stop).await else {
        return Ok(());
    };
    if config.clickhouse.migrate_on_start {
        migrate_with(&store::client(&config.clickhouse), &config, flavour).await?;
    }
    let writer = ClickHouse::new(&config.clickhouse, flavour);
    let dead_letters = KafkaDeadLetters::new(&config)?;
    dead_letters.check_topic().await?;
    let consumer = KafkaConsumer::new(&config, metrics.clone())?;
    tracing::info!(topic = %config.kafka.topic, group = %config.kafka.group_id, ?flavour, "sink consuming");
    let result = Sink::new(
        consumer,
        writer,
        dead_letters,
        config,
        metrics,
        enricher,
        stop,
    )
    .run()
    .await;
    let _ = admin_task.await;
    result
}

/// Detects the server flavour, retrying while the server is unreachable or does not answer
/// within `clickhouse.insert_timeout_ms`; `None` if stopped first.
async fn wait_for_clickhouse(config: &SinkConfig, stop: &watch::Receiver<bool>) -> Option<Flavour> {
    let client = store::client(&config.clickhouse);
    let timeout = Duration::from_millis(config.clickhouse.insert_timeout_ms);
    let mut attempt = 0;
    loop {
        let mut stopped = stop.clone();
        let detected = tokio::select! {
            d = tokio::time::timeout(timeout, Flavour::detect(&client)) => {
                d.unwrap_or(Err(Error::ClickHouse(clickhouse::error::Error::TimedOut)))
            }
            _ = stopped.wait_for(|s| *s) => return None,
        };
        match detected {
            Ok(f) => return Some(f),
            Err(e) if !e.retryable() => {
                tracing::error!(error = %e, "cannot use this ClickHouse server");
                return None;
            }
            Err(e) => {
                attempt += 1;
                let wait = consumer::backoff(
                    attempt,
                    config.retry.initial_backoff_ms,
                    config.retry.max_backoff_ms,
                );
                tracing::warn!(error = %e, attempt, "ClickHouse not reachable yet; waiting");
                let mut stop = stop.clone();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return None,
                }
            }
        }
    }
}
