//! The sink against the real broker and the real ClickHouse server over loopback.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::edge::{http, test_config, unique_topic};
use common::*;
use pixelpipe_sink::SinkConfig;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
async fn hits_flow_from_the_edge_into_clickhouse_with_every_field() {
    let Pipeline {
        edge,
        sink,
        url,
        table,
    } = Pipeline::start("e2e", 3, test_config).await;

    let addr = edge.public;
    tokio::task::spawn_blocking(move || {
        for i in 0..30 {
            let target = format!("/p.gif?site=shop&e=open&campaign=spring&variant=B&msg=m{i}&uid=u{i}&seq={i}");
            let r = http(addr, "GET", &target, &[("User-Agent", "Mozilla/5.0 test"), ("DNT", "1")], b"");
            assert_eq!(r.status, 200);
        }
        for i in 0..5 {
            let body = format!(r#"[{{"site":"shop","e":"conversion","value":12.5,"currency":"eur","campaign":"spring","props":{{"order":"o{i}"}}}},{{"site":"blog","url":"https://blog.example/{i}"}}]"#);
            assert_eq!(http(addr, "POST", "/collect", &[], body.as_bytes()).status, 204);
        }
    })
    .await
    .unwrap();

    let n = wait_for(
        &url,
        &format!("SELECT uniqExact(event_id) FROM {table}"),
        40,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(n, 40, "every hit arrives");
    assert_eq!(
        number(&url, &format!("SELECT count() FROM {table} FINAL")).await,
        40,
        "and once"
    );

    #[derive(clickhouse::Row, serde::Deserialize, Debug)]
    struct Checked {
        kind: String,
        site_id: String,
        campaign: String,
        variant: String,
        message_id: String,
        user_id: String,
        ip: String,
        user_agent: String,
        dnt: String,
        edge_id: String,
        transport: String,
        prop: String,
        partition_ok: u8,
    }
    let row: Checked = ch(&url)
        .query(&format!(
            "SELECT kind, site_id, campaign, variant, message_id, user_id, IPv6NumToString(client_ip) AS ip, user_agent, dnt,
                    edge_id, transport, prop_values[indexOf(prop_keys, 'seq')] AS prop, toUInt8(kafka_partition >= 0) AS partition_ok
             FROM {table} WHERE message_id = 'm7'"
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (
            row.kind.as_str(),
            row.site_id.as_str(),
            row.campaign.as_str(),
            row.variant.as_str()
        ),
        ("open", "shop", "spring", "B")
    );
    assert_eq!(
        (
            row.message_id.as_str(),
            row.user_id.as_str(),
            row.prop.as_str()
        ),
        ("m7", "u7", "7")
    );
    assert_eq!(row.ip, "::ffff:127.0.0.1");
    assert_eq!(
        (row.user_agent.as_str(), row.dnt.as_str()),
        ("Mozilla/5.0 test", "1")
    );
    assert_eq!(
        (
            row.edge_id.as_str(),
            row.transport.as_str(),
            row.partition_ok
        ),
        ("it-edge", "pixel", 1)
    );
    let conversions = number(&url, &format!(
        "SELECT toUInt64(ifNull(sum(value), 0) * 10) FROM {table} WHERE kind = 'conversion' AND currency = 'EUR' AND transport = 'beacon'")).await;
    assert_eq!(conversions, 625, "5 conversions of 12.5");
    let received_ok = number(
        &url,
        &format!(
        "SELECT count() FROM {table} WHERE received_at > now() - 600 AND received_at <= now() + 5"),
    )
    .await;
    assert_eq!(received_ok, 40, "received_at is the edge's receive time");

    edge.shutdown().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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
async fn a_missing_dead_letter_topic_stops_the_sink_at_start_naming_the_setting() {
    let topic = unique_topic("nodlq");
    common::edge::create_topic(&topic, 1).await;
    let prefix = format!("{}_", unique("nodlq"));
    let admin = pixelpipe_ingest::server::bind("127.0.0.1:0".parse().unwrap(), 1, "admin")
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_policies_decide_what_reaches_clickhouse() {
    use common::edge::{privacy_config, send_privacy_hits, HASH_SECRET, PRIVACY_CLIENT_IP};
    let Pipeline {
        edge,
        sink,
        url,
        table,
    } = Pipeline::start("privacy", 2, privacy_config).await;
    let addr = edge.public;
    let stored = tokio::task::spawn_blocking(move || send_privacy_hits(addr))
        .await
        .unwrap();
    let n = wait_for(
        &url,
        &format!("SELECT count() FROM {table}"),
        stored.len() as u64,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(n, 7, "every case but the two dropped ones");

    #[derive(clickhouse::Row, serde::Deserialize, Debug)]
    struct Seen {
        case: String,
        ip: String,
        ip_hash: String,
        anonymized: u8,
        user_id: String,
        user_agent: String,
        day: u32,
        place: String,
        visitor_id: String,
    }
    let rows: Vec<Seen> = ch(&url)
        .query(&format!(
            "SELECT prop_values[indexOf(prop_keys, 'case')] AS case, IPv6NumToString(client_ip) AS ip, ip_hash, anonymized,
                    user_id, user_agent, toUInt32(intDiv(toUInt32(received_at), 86400)) AS day,
                    concat(geo_country, '/', geo_region, '/', geo_city, '/', toString(asn), '/', as_org) AS place, visitor_id
             FROM {table} ORDER BY case"
        ))
        .fetch_all()
        .await
        .unwrap();
    let get = |c: &str| {
        rows.iter()
            .find(|r| r.case == c)
            .unwrap_or_else(|| panic!("{c} missing: {rows:?}"))
    };
    let raw: std::net::IpAddr = PRIVACY_CLIENT_IP.parse().unwrap();
    assert_eq!(get("trunc").ip, "::ffff:214.78.120.0");
    assert_eq!(
        (
            get("trunc").user_id.as_str(),
            get("trunc").user_agent.as_str()
        ),
        ("u-1", "UA-test")
    );
    assert_eq!(get("full").ip, format!("::ffff:{PRIVACY_CLIENT_IP}"));
    let hash = get("hash");
    assert_eq!(
        (hash.ip.as_str(), hash.ip_hash.as_str()),
        (
            "::",
            pixelpipe_ingest::privacy::hash_ip(HASH_SECRET, u64::from(hash.day), raw).as_str()
        )
    );
    assert_eq!(
        (get("drop").ip.as_str(), get("drop").ip_hash.as_str()),
        ("::", "")
    );
    for case in ["gpc", "dnt", "noconsent"] {
        let r = get(case);
        assert_eq!(
            (
                r.anonymized,
                r.ip.as_str(),
                r.ip_hash.as_str(),
                r.user_id.as_str(),
                r.user_agent.as_str()
            ),
            (1, "::", "", "", ""),
            "{case}"
        );
    }
    assert!(rows
        .iter()
        .all(|r| r.case != "gpcdrop" && r.case != "optout"));
    for case in ["trunc", "full", "hash", "drop"] {
        assert_eq!(
            get(case).place,
            "US/CA/San Diego/721/DoD Network Information Center",
            "{case}"
        );
    }
    assert_eq!(get("gpc").place, "US///0/", "anonymised: the country only");
    let trunc = get("trunc");
    let want = pixelpipe_ingest::privacy::visitor_id(
        HASH_SECRET,
        u64::from(trunc.day),
        "p-trunc",
        raw,
        "UA-test",
    );
    assert_eq!(trunc.visitor_id, want);
    assert_eq!(
        (
            get("gpc").visitor_id.as_str(),
            get("dnt").visitor_id.as_str()
        ),
        ("", "")
    );
    let report = edge.shutdown().await;
    assert_eq!(report.dropped, 2);
    sink.stop().await;
}
