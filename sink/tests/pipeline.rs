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
    migrate_all_then_nothing(&config).await;
    let url = clickhouse_url();
    let tables = number(&url, &format!(
        "SELECT count() FROM system.tables WHERE database = 'pixelpipe' AND name LIKE '{prefix}\\_%'")).await;
    assert_eq!(
        tables, 7,
        "hits, bad_hits, schema_migrations, the two rollups and their views"
    );
    let recorded = number(
        &url,
        &format!("SELECT count() FROM pixelpipe.{prefix}_schema_migrations"),
    )
    .await;
    assert_eq!(recorded, pixelpipe_sink::schema::MIGRATIONS.len() as u64);
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

/// Packed messages (several hits per message, as edges write them): every good hit is stored
/// with its place in the message, and each bad one is dead-lettered alone, even two of one
/// message with the same reason (bad_hits sorts, and so folds, by the place too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn each_hit_of_a_packed_message_is_stored_or_dead_lettered_alone() {
    use pixelpipe_common::wire;
    let topic = unique_topic("packed");
    create_topics(&topic, 1).await;
    let prefix = format!("{}_", unique("packed"));
    let url = clickhouse_url();
    let pack = |pieces: &[&[u8]]| {
        let mut message = Vec::new();
        for piece in pieces {
            wire::pack(&mut message, piece);
        }
        message
    };
    let good: Vec<Vec<u8>> = (0..4).map(|i| encoded_hit("s", i)).collect();
    let future = br#"{"schema_version":7,"whatever":true}"#;
    let payloads = vec![
        pack(&[&good[0], b"junk", &good[1], future, &good[2]]),
        good[3].clone(),
        pack(&[b"junk one", b"junk two"]),
    ];
    produce(&topic, &payloads);
    let sink = RunningSink::start(sink_config(&topic, &prefix));

    let stored = wait_for(
        &url,
        &format!("SELECT count() FROM pixelpipe.{prefix}hits"),
        4,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(stored, 4);
    let places: Vec<(i64, u32)> = ch(&url)
        .query(&format!(
            "SELECT kafka_offset, kafka_index FROM pixelpipe.{prefix}hits ORDER BY kafka_offset, kafka_index"
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(places, vec![(0, 0), (0, 2), (0, 4), (1, 0)]);
    assert_eq!(
        sink.wait_metric(
            "pixelpipe_sink_dead_lettered_total{reason=\"undecodable\"}",
            3.0
        )
        .await,
        3.0
    );
    let bad: Vec<(i64, u32, String, String)> = ch(&url)
        .query(&format!(
            "SELECT kafka_offset, kafka_index, reason, payload FROM pixelpipe.{prefix}bad_hits FINAL ORDER BY kafka_offset, kafka_index"
        ))
        .fetch_all()
        .await
        .unwrap();
    let row = |o, i, r: &str, p: &str| (o, i, r.to_string(), p.to_string());
    assert_eq!(
        bad,
        vec![
            row(0, 1, "undecodable", "junk"),
            row(
                0,
                3,
                "unsupported_version",
                std::str::from_utf8(future).unwrap()
            ),
            row(2, 0, "undecodable", "junk one"),
            row(2, 1, "undecodable", "junk two"),
        ]
    );
    // Each dead letter is the hit alone, and says where in its message it was.
    let dlq = format!("{topic}.dlq");
    let mut letters = tokio::task::spawn_blocking(move || read_raw(&dlq, 4))
        .await
        .unwrap();
    letters.sort_by(|a, b| a.0.cmp(&b.0));
    let junk_two = &letters.iter().find(|l| l.0 == b"junk two").unwrap().1;
    assert!(
        junk_two.contains(&("pixelpipe.source.offset".into(), "2".into()))
            && junk_two.contains(&("pixelpipe.source.index".into(), "1".into())),
        "{junk_two:?}"
    );
    assert_eq!(letters.len(), 4);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn empty_null_huge_and_future_messages_are_dead_lettered_each_by_its_reason() {
    use pixelpipe_common::wire;
    let topic = unique_topic("hostile_input");
    create_topics(&topic, 1).await;
    let prefix = format!("{}_", unique("hostile_input"));
    let url = clickhouse_url();
    let config = sink_config(&topic, &prefix);
    // A valid hit of about 900 KB: below what a broker and a producer take by default (1 MB),
    // far above what an edge writes.
    let mut huge = wire::decode(&encoded_hit("s", 100)).unwrap();
    huge.props.push(("blob".into(), "x".repeat(900 * 1024)));
    let mut huge_bytes = Vec::new();
    wire::encode(&huge, &mut huge_bytes);
    assert!(huge_bytes.len() > config.kafka.max_payload_bytes);
    // 2 MiB that lz4 makes small enough for the broker (its limit counts compressed bytes, as the
    // edge's lz4 producer sends them), but more than a producer takes uncompressed by default.
    let mut larger = b"{\"schema_version\":1,\"junk\":\"".to_vec();
    larger.resize(2 * 1024 * 1024, b'y');
    // A whole hit, every field as version 1 has it, that says it is version 99.
    let mut future = wire::decode(&encoded_hit("s", 101)).unwrap();
    future.schema_version = 99;
    let mut future_bytes = Vec::new();
    wire::encode(&future, &mut future_bytes);
    assert!(future_bytes.starts_with(br#"{"schema_version":99,"#));

    let good: Vec<Vec<u8>> = (0..10).map(|i| encoded_hit("s", i)).collect();
    let mut payloads: Vec<Option<&[u8]>> = good[..5].iter().map(|p| Some(p.as_slice())).collect();
    payloads.push(Some(b""));
    payloads.push(None);
    payloads.push(Some(&huge_bytes));
    payloads.push(Some(&larger));
    payloads.push(Some(&future_bytes));
    payloads.extend(good[5..].iter().map(|p| Some(p.as_slice())));
    produce_payloads(
        &topic,
        &payloads,
        &[
            ("compression.type", "lz4"),
            ("message.max.bytes", "10000000"),
        ],
    );
    let sink = RunningSink::start(config);

    let hits = wait_for(
        &url,
        &format!("SELECT count() FROM pixelpipe.{prefix}hits"),
        10,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(hits, 10, "the good messages after the bad ones are stored");
    let bad: Vec<(String, i64, u64)> = ch(&url)
        .query(&format!(
            "SELECT reason, kafka_offset, length(payload) FROM pixelpipe.{prefix}bad_hits FINAL ORDER BY kafka_offset"
        ))
        .fetch_all()
        .await
        .unwrap();
    assert_eq!(
        bad,
        vec![
            ("empty".to_string(), 5, 0),
            ("empty".to_string(), 6, 0),
            (
                "too_large".to_string(),
                7,
                pixelpipe_sink::row::TOO_LARGE_STORED_BYTES as u64
            ),
            (
                "too_large".to_string(),
                8,
                pixelpipe_sink::row::TOO_LARGE_STORED_BYTES as u64
            ),
            (
                "unsupported_version".to_string(),
                9,
                future_bytes.len() as u64
            ),
        ]
    );
    for (reason, want) in [
        ("empty", 2.0),
        ("too_large", 2.0),
        ("unsupported_version", 1.0),
        ("undecodable", 0.0),
    ] {
        let series = format!("pixelpipe_sink_dead_lettered_total{{reason=\"{reason}\"}}");
        assert_eq!(sink.wait_metric(&series, want).await, want, "{series}");
    }

    // The dead-letter topic has every byte, the huge payload included, and each reason.
    let dlq = format!("{topic}.dlq");
    let messages = tokio::task::spawn_blocking(move || read_raw(&dlq, 5))
        .await
        .unwrap();
    let by_offset: std::collections::BTreeMap<String, (usize, String)> = messages
        .iter()
        .map(|(payload, headers)| {
            let header = |k: &str| {
                headers
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            (
                header("pixelpipe.source.offset"),
                (payload.len(), header("pixelpipe.reason")),
            )
        })
        .collect();
    assert_eq!(
        by_offset,
        [
            ("5".to_string(), (0, "empty".to_string())),
            ("6".to_string(), (0, "empty".to_string())),
            ("7".to_string(), (huge_bytes.len(), "too_large".to_string())),
            ("8".to_string(), (larger.len(), "too_large".to_string())),
            (
                "9".to_string(),
                (future_bytes.len(), "unsupported_version".to_string())
            ),
        ]
        .into_iter()
        .collect()
    );
    for original in [&huge_bytes, &larger] {
        assert!(
            messages.iter().any(|(p, _)| p == original),
            "the dead-letter topic has all {} bytes",
            original.len()
        );
    }
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
