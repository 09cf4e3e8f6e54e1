//! The sink against the real broker and the real ClickHouse server over loopback.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::kafka::unique_topic;
use common::*;
use pixelpipe_sink::SinkConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs ClickHouse: deploy/local/test.sh starts it"
)]
async fn migrations_apply_once() {
    let prefix = unique("mig");
    let config = sink_config("unused", &format!("{prefix}_"));
    let all: Vec<u32> = pixelpipe_sink::schema::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(pixelpipe_sink::migrate(&config).await.unwrap(), all);
    assert_eq!(
        pixelpipe_sink::migrate(&config).await.unwrap(),
        Vec::<u32>::new(),
        "already migrated: a no-op"
    );
    let url = clickhouse_url();
    let tables = number(&url, &format!(
        "SELECT count() FROM system.tables WHERE database = 'pixelpipe' AND name LIKE '{prefix}\\_%'")).await;
    assert_eq!(tables, 3, "hits, bad_hits, schema_migrations");
    let recorded = number(
        &url,
        &format!("SELECT count() FROM pixelpipe.{prefix}_schema_migrations"),
    )
    .await;
    assert_eq!(recorded, all.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs ClickHouse: deploy/local/test.sh starts it"
)]
async fn a_database_at_version_1_is_upgraded_in_place() {
    use pixelpipe_sink::schema::{Flavour, Step, Tables, MIGRATIONS};
    let prefix = format!("{}_", unique("upgrade"));
    let config = sink_config("unused", &prefix);
    let client = pixelpipe_sink::store::client(&config.clickhouse);
    let tables = Tables::new(&config.clickhouse);
    // What a sink of the first release left behind: version 1 applied and recorded.
    client
        .query("CREATE DATABASE IF NOT EXISTS pixelpipe")
        .execute()
        .await
        .unwrap();
    for step in (MIGRATIONS[0].steps)(&tables, Flavour::Legacy, 0) {
        let Step::Sql(sql) = step else {
            panic!("version 1 is plain SQL")
        };
        client.query(&sql).execute().await.unwrap();
    }
    client
        .query(&format!(
            "CREATE TABLE {} (version UInt32, name String, applied_at DateTime('UTC') DEFAULT now()) ENGINE = ReplacingMergeTree() ORDER BY version",
            tables.migrations()
        ))
        .execute()
        .await
        .unwrap();
    client
        .query(&format!(
            "INSERT INTO {} (version, name) VALUES (1, 'v1')",
            tables.migrations()
        ))
        .execute()
        .await
        .unwrap();

    let later: Vec<u32> = MIGRATIONS
        .iter()
        .map(|m| m.version)
        .filter(|v| *v > 1)
        .collect();
    assert_eq!(pixelpipe_sink::migrate(&config).await.unwrap(), later);
    let url = clickhouse_url();
    let added = number(&url, &format!(
        "SELECT count() FROM system.columns WHERE database = 'pixelpipe' AND table = '{prefix}hits' AND name IN ('ip_hash', 'anonymized')")).await;
    assert_eq!(added, 2);
    assert_eq!(
        pixelpipe_sink::migrate(&config).await.unwrap(),
        Vec::<u32>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn a_poison_message_is_dead_lettered_and_the_partition_keeps_flowing() {
    let topic = unique_topic("poison");
    create_topics(&topic, 1).await;
    let prefix = format!("{}_", unique("poison"));
    let url = clickhouse_url();
    let mut payloads: Vec<Vec<u8>> = (0..10).map(|i| encoded_hit("s", i)).collect();
    payloads.insert(4, b"\xff\xfe not a hit".to_vec());
    payloads.insert(8, br#"{"schema_version":7,"whatever":true}"#.to_vec());
    payloads.extend((10..20).map(|i| encoded_hit("s", i)));
    produce(&topic, &payloads);
    let sink = RunningSink::start(sink_config(&topic, &prefix));

    let hits = wait_for(
        &url,
        &format!("SELECT count() FROM pixelpipe.{prefix}hits"),
        20,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        hits, 20,
        "the good messages after the poison ones are stored"
    );
    let bad = number(
        &url,
        &format!("SELECT count() FROM pixelpipe.{prefix}bad_hits FINAL"),
    )
    .await;
    assert_eq!(bad, 2);
    let reasons: Vec<(String, i64)> = ch(&url)
        .query(&format!("SELECT reason, kafka_offset FROM pixelpipe.{prefix}bad_hits FINAL ORDER BY kafka_offset"))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        reasons,
        vec![
            ("undecodable".to_string(), 4),
            ("unsupported_version".to_string(), 8)
        ]
    );
    assert_eq!(
        sink.wait_metric(
            "pixelpipe_sink_dead_lettered_total{reason=\"undecodable\"}",
            1.0
        )
        .await,
        1.0
    );
    assert_eq!(
        sink.wait_metric(
            "pixelpipe_sink_dead_lettered_total{reason=\"unsupported_version\"}",
            1.0
        )
        .await,
        1.0
    );

    // The dead-letter topic has the original bytes and says where they came from.
    let dlq = format!("{topic}.dlq");
    let messages = tokio::task::spawn_blocking(move || read_raw(&dlq, 2))
        .await
        .unwrap();
    assert_eq!(messages.len(), 2);
    assert_eq!(messages[0].0, b"\xff\xfe not a hit".to_vec());
    let headers = &messages[0].1;
    assert!(
        headers.contains(&("pixelpipe.reason".into(), "undecodable".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("pixelpipe.source.offset".into(), "4".into())),
        "{headers:?}"
    );
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn two_sinks_in_one_group_store_every_row_once() {
    let topic = unique_topic("group");
    create_topics(&topic, 4).await;
    let prefix = format!("{}_", unique("group"));
    let url = clickhouse_url();
    let config: SinkConfig = sink_config(&topic, &prefix);
    pixelpipe_sink::migrate(&config).await.unwrap();
    let a = RunningSink::start(config.clone());
    let b = RunningSink::start(config);
    let payloads: Vec<Vec<u8>> = (0..400).map(|i| encoded_hit("g", i)).collect();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || produce(&t, &payloads))
        .await
        .unwrap();
    let table = format!("pixelpipe.{prefix}hits");
    let n = wait_for(
        &url,
        &format!("SELECT uniqExact(event_id) FROM {table}"),
        400,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(n, 400);
    assert_eq!(
        number(&url, &format!("SELECT count() FROM {table} FINAL")).await,
        400
    );
    let consumed = a.metric("pixelpipe_sink_messages_consumed_total").await
        + b.metric("pixelpipe_sink_messages_consumed_total").await;
    assert!(consumed >= 400.0, "{consumed}");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn a_missing_dead_letter_topic_stops_the_sink_at_start_naming_the_setting() {
    let topic = unique_topic("nodlq");
    common::kafka::create_topic(&topic, 1).await;
    let prefix = format!("{}_", unique("nodlq"));
    let admin = pixelpipe_common::http::bind("127.0.0.1:0".parse().unwrap(), 1, "admin")
        .unwrap()
        .remove(0);
    let err = pixelpipe_sink::run(sink_config(&topic, &prefix), admin, std::future::pending())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("kafka.dead_letter_topic") && text.contains(&format!("{topic}.dlq")),
        "{text}"
    );
}
