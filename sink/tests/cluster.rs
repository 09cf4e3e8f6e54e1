//! The sink against a replicated ClickHouse cluster: ZooKeeper and two ClickHouse servers, one
//! shard with two replicas (`deploy/local/clickhouse-cluster.sh start`; `TEST_CLICKHOUSE_CLUSTER`
//! names the cluster, `TEST_CLICKHOUSE_REPLICAS` the replicas' HTTP URLs). Real broker, real
//! servers, over loopback.
//!
//! The rollups (migration 7) are checked here too: views on every replica, a backfill through the
//! `Distributed` tables, and a batch written twice counted once.
//!
//! The tests run one at a time: one of them stops a replica, and `ON CLUSTER` DDL waits for every
//! replica, so a migration running beside it would wait for the restart.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::kafka::unique_topic;
use common::rollups::*;
use common::*;
use pixelpipe_sink::batch::Batch;
use pixelpipe_sink::config::EnrichConfig;
use pixelpipe_sink::enrich::Enricher;
use pixelpipe_sink::row::{decode_message, Decoded};
use pixelpipe_sink::schema::Flavour;
use pixelpipe_sink::store::{ClickHouse, RowWriter};
use pixelpipe_sink::SinkConfig;
use tokio::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

fn cluster() -> String {
    std::env::var("TEST_CLICKHOUSE_CLUSTER").unwrap_or_else(|_| "pixelpipe".into())
}

fn replicas() -> Vec<String> {
    std::env::var("TEST_CLICKHOUSE_REPLICAS")
        .unwrap_or_else(|_| "http://127.0.0.1:8124,http://127.0.0.1:8125".into())
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// A sink config for the cluster, talking to the first replica.
fn cluster_config(topic: &str, prefix: &str) -> SinkConfig {
    let mut c = sink_config(topic, prefix).with_clickhouse(&replicas()[0]);
    c.clickhouse.cluster = cluster();
    c
}

/// `deploy/local/clickhouse-cluster.sh ARGS`, which must succeed.
fn cluster_script(args: &[&str]) {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/clickhouse-cluster.sh");
    let out = Command::new(script).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "clickhouse-cluster.sh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rows of `table` on each replica, read from that replica alone.
async fn on_each_replica(sql: &str) -> Vec<u64> {
    let mut counts = Vec::new();
    for url in replicas() {
        counts.push(number(&url, sql).await);
    }
    counts
}

/// Waits until every replica answers `want` (replication is asynchronous).
async fn wait_on_each_replica(sql: &str, want: u64) -> Vec<u64> {
    let mut counts = Vec::new();
    for url in replicas() {
        counts.push(wait_for(&url, sql, want, Duration::from_secs(60)).await);
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and the ClickHouse cluster: deploy/local/test.sh starts them"
)]
async fn migrations_build_replicated_tables_behind_distributed_ones_on_every_replica() {
    let _one = ONE_AT_A_TIME.lock().await;
    let prefix = format!("{}_", unique("cmig"));
    let config = cluster_config("unused", &prefix);
    migrate_all_then_nothing(&config).await;
    for url in replicas() {
        let engines: Vec<(String, String)> = ch(&url)
            .query(&format!(
                "SELECT name, engine FROM system.tables WHERE database = 'pixelpipe' AND name LIKE '{prefix}%' ORDER BY name"
            ))
            .fetch_all()
            .await
            .unwrap();
        let named = |n: &str| format!("{prefix}{n}");
        assert_eq!(
            engines,
            vec![
                (named("bad_hits"), "Distributed".into()),
                (
                    named("bad_hits_local"),
                    "ReplicatedReplacingMergeTree".into()
                ),
                (named("hits"), "Distributed".into()),
                (named("hits_daily"), "Distributed".into()),
                (
                    named("hits_daily_local"),
                    "ReplicatedAggregatingMergeTree".into()
                ),
                (named("hits_daily_mv"), "MaterializedView".into()),
                (named("hits_hourly"), "Distributed".into()),
                (
                    named("hits_hourly_local"),
                    "ReplicatedAggregatingMergeTree".into()
                ),
                (named("hits_hourly_mv"), "MaterializedView".into()),
                (named("hits_local"), "ReplicatedReplacingMergeTree".into()),
                (
                    named("schema_migrations"),
                    "ReplicatedReplacingMergeTree".into()
                ),
            ],
            "on {url}"
        );
        // Every migration's columns reached both tables of the pair, in the same order.
        let columns = |table: String| {
            let url = url.clone();
            async move {
                ch(&url)
                    .query(&format!(
                        "SELECT name FROM system.columns WHERE database = 'pixelpipe' AND table = '{table}'"
                    ))
                    .fetch_all::<String>()
                    .await
                    .unwrap()
            }
        };
        let local = columns(named("hits_local")).await;
        assert!(local.contains(&"kafka_index".to_owned()), "{local:?}");
        assert_eq!(columns(named("hits")).await, local, "on {url}");
        assert_eq!(
            columns(named("bad_hits")).await,
            columns(named("bad_hits_local")).await,
            "on {url}"
        );
        for rollup in ["hits_hourly", "hits_daily"] {
            assert_eq!(
                columns(named(rollup)).await,
                columns(named(&format!("{rollup}_local"))).await,
                "on {url}"
            );
        }
        let recorded = number(
            &url,
            &format!("SELECT count() FROM pixelpipe.{prefix}schema_migrations"),
        )
        .await;
        assert_eq!(
            recorded,
            pixelpipe_sink::schema::MIGRATIONS.len() as u64,
            "migrations recorded on {url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and the ClickHouse cluster: deploy/local/test.sh starts them"
)]
async fn hits_and_dead_letters_reach_both_replicas_and_a_stopped_replica_catches_up() {
    let _one = ONE_AT_A_TIME.lock().await;
    let topic = unique_topic("cluster");
    create_topics(&topic, 2).await;
    let prefix = format!("{}_", unique("cluster"));
    let config = cluster_config(&topic, &prefix);
    pixelpipe_sink::migrate(&config).await.unwrap();
    let sink = RunningSink::start(config);
    let first = &replicas()[0];

    let mut payloads: Vec<Vec<u8>> = (0..100).map(|i| encoded_hit("s", i)).collect();
    payloads.push(b"not a hit".to_vec());
    produce(&topic, &payloads);
    let hits = format!("SELECT count() FROM pixelpipe.{prefix}hits_local FINAL");
    let bad = format!("SELECT count() FROM pixelpipe.{prefix}bad_hits_local");
    assert_eq!(wait_on_each_replica(&hits, 100).await, vec![100, 100]);
    assert_eq!(wait_on_each_replica(&bad, 1).await, vec![1, 1]);

    // One replica goes away mid-stream: the sink keeps storing through the other.
    cluster_script(&["stop-replica", "2"]);
    // And a sink starting now is not held up: with the schema current on its server, it sends
    // no ON CLUSTER statement (each would wait for the stopped replica, 180 s, then fail).
    let restarted = tokio::time::timeout(
        Duration::from_secs(30),
        pixelpipe_sink::migrate(&cluster_config(&topic, &prefix)),
    )
    .await
    .expect("a start with a replica down does not wait for it");
    assert_eq!(restarted.unwrap(), Vec::<u32>::new());
    produce(
        &topic,
        &(100..250).map(|i| encoded_hit("s", i)).collect::<Vec<_>>(),
    );
    assert_eq!(
        wait_for(first, &hits, 250, Duration::from_secs(60)).await,
        250,
        "stored on the replica still up"
    );
    cluster_script(&["start-replica", "2"]);
    // Back, it fetches what it missed from the other replica: nothing lost, nothing twice.
    assert_eq!(wait_on_each_replica(&hits, 250).await, vec![250, 250]);
    // The documented exact count, through the `Distributed` table, on either replica.
    let exact = format!("SELECT count() FROM pixelpipe.{prefix}hits FINAL WHERE site_id = 's'");
    assert_eq!(on_each_replica(&exact).await, vec![250, 250]);
    let distinct = format!("SELECT uniqExact(event_id) FROM pixelpipe.{prefix}hits");
    assert_eq!(on_each_replica(&distinct).await, vec![250, 250]);
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the ClickHouse cluster: deploy/local/test.sh starts it"
)]
async fn a_batch_written_again_after_a_crash_is_counted_once() {
    let _one = ONE_AT_A_TIME.lock().await;
    let prefix = format!("{}_", unique("cdedup"));
    let config = cluster_config("unused", &prefix);
    pixelpipe_sink::migrate(&config).await.unwrap();
    let mut enricher = Enricher::new(&EnrichConfig::default()).unwrap();
    let mut batch = Batch::default();
    for i in 0..40u64 {
        batch.took(0, i as i64, 100);
        let payload = encoded_hit("s", i);
        for decoded in decode_message("t", 0, i as i64, &payload, 1 << 20, &mut enricher) {
            match decoded {
                Decoded::Hit(row) => batch.push_hit(row),
                Decoded::Bad(bad) => panic!("a valid hit was refused: {bad:?}"),
            }
        }
    }
    // A sink that stored this batch and died before committing: its successor reads the same
    // messages and writes the same batch again.
    let writer = ClickHouse::new(&config.clickhouse, Flavour::Legacy);
    let token = batch.dedup_token("t");
    writer.write(&batch, &token).await.unwrap();
    // The successor comes later: `inserted_at` (the server's `now()`) differs, so the second
    // block is not byte for byte the first and ZooKeeper's block dedup does not catch it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    writer.write(&batch, &token).await.unwrap();
    let exact = format!("SELECT count() FROM pixelpipe.{prefix}hits FINAL");
    assert_eq!(wait_on_each_replica(&exact, 40).await, vec![40, 40]);
    let distinct = format!("SELECT uniqExact(event_id) FROM pixelpipe.{prefix}hits");
    assert_eq!(on_each_replica(&distinct).await, vec![40, 40]);

    // Retention on 18.16 drops whole months past it, on every replica: these hits are from
    // September 2026 (`encoded_hit`), entirely past a 30-day retention.
    let mut retention = config.clickhouse.clone();
    retention.retention_days = 30;
    let sent = pixelpipe_sink::retention::delete_expired(
        &pixelpipe_sink::store::client(&retention),
        &retention,
        Flavour::Legacy,
    )
    .await
    .unwrap();
    assert!(
        sent.iter()
            .any(|sql| sql.contains("ON CLUSTER") && sql.contains("DROP PARTITION")),
        "{sent:?}"
    );
    let stored = format!("SELECT count() FROM pixelpipe.{prefix}hits_local");
    assert_eq!(wait_on_each_replica(&stored, 0).await, vec![0, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the ClickHouse cluster: deploy/local/clickhouse-cluster.sh starts it"
)]
async fn the_rollups_count_a_batch_written_twice_once_on_every_replica() {
    let _one = ONE_AT_A_TIME.lock().await;
    let prefix = format!("{}_", unique("crollup"));
    let config = cluster_config("unused", &prefix);
    let client = pixelpipe_sink::store::client(&config.clickhouse);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let base = (now / DAY - 2) * DAY;
    let (before, after, later) = (hits(base, 0, 60), hits(base, 60, 80), hits(base, 80, 90));
    let writer = ClickHouse::new(&config.clickhouse, Flavour::Legacy);

    // Hits stored twice by sinks of the version before the rollups; the successor comes later,
    // so the second block differs in `inserted_at` and ZooKeeper's block dedup does not drop it.
    pixelpipe_sink::schema::migrate_through(&client, &config.clickhouse, Flavour::Legacy, 6)
        .await
        .unwrap();
    let first = batch(&before);
    writer.write(&first, "t").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    writer.write(&first, "t").await.unwrap();

    // The upgrade: views on every replica, then the backfill through the Distributed tables.
    assert_eq!(pixelpipe_sink::migrate(&config).await.unwrap(), vec![7]);
    let through_distributed = questions(&prefix, "");
    let own = questions(&prefix, "_local");
    let want = answers(&before.iter().collect::<Vec<_>>());
    for url in replicas() {
        assert_eq!(
            wait_ask(&url, &own, &want).await,
            want,
            "backfilled, on {url}"
        );
    }

    // Written again after the upgrade, and a new batch twice: both replicas answer the same
    // counts. (Whether the replica that fetches a part runs the view again cannot be seen here:
    // the distinct counts would absorb it. ClickHouse runs views only on the replica that takes
    // the insert; the replicated rollup table carries the result to the other.)
    tokio::time::sleep(Duration::from_millis(1100)).await;
    writer.write(&first, "t").await.unwrap();
    let second = batch(&after);
    writer.write(&second, "t").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    writer.write(&second, "t").await.unwrap();
    let mut all: Vec<&Hit> = before.iter().chain(&after).collect();
    let want = answers(&all);
    for url in replicas() {
        assert_eq!(wait_ask(&url, &own, &want).await, want, "on {url}");
        assert_eq!(
            ask(&url, &through_distributed).await,
            want,
            "for analysts, on {url}"
        );
    }

    // A later migration that adds columns to hits rebuilds its Distributed table (as migration
    // 2's steps end): the views keep counting.
    let rebuild: Vec<String> = pixelpipe_sink::schema::steps(
        &pixelpipe_sink::schema::MIGRATIONS[1],
        &pixelpipe_sink::schema::Tables::new(&config.clickhouse),
        Flavour::Legacy,
        0,
    )
    .into_iter()
    .filter_map(|s| match s {
        pixelpipe_sink::schema::Step::Sql(sql) => Some(sql),
        _ => None,
    })
    .collect();
    assert_eq!(rebuild.len(), 2, "{rebuild:?}");
    for sql in &rebuild {
        client.query(sql).execute().await.unwrap();
    }
    let (through, direct) = later.split_at(5);
    writer.write(&batch(through), "t").await.unwrap();
    // And rows stored on the second replica's own table, as a Distributed insert stores them
    // there: its view counts them, because the views are attached to the storage tables.
    let rows: Vec<String> = direct
        .iter()
        .map(|h| {
            format!(
                "SELECT generateUUIDv4(), toDateTime({}), 's', '{}', '{}', '{}'",
                h.at, h.kind, h.campaign, h.visitor
            )
        })
        .collect();
    ch(&replicas()[1])
        .query(&format!(
            "INSERT INTO pixelpipe.{prefix}hits_local (event_id, received_at, site_id, kind, campaign, visitor_id) {}",
            rows.join(" UNION ALL ")
        ))
        .execute()
        .await
        .unwrap();
    all.extend(&later);
    let want = answers(&all);
    for url in replicas() {
        assert_eq!(
            wait_ask(&url, &own, &want).await,
            want,
            "after a rebuild, on {url}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the ClickHouse cluster: deploy/local/test.sh starts it"
)]
async fn a_single_server_table_under_the_names_is_refused_not_replaced() {
    let _one = ONE_AT_A_TIME.lock().await;
    let prefix = format!("{}_", unique("cconvert"));
    // What a single-server sink left on the server that became the second replica: its hits.
    let mut single = sink_config("unused", &prefix).with_clickhouse(&replicas()[1]);
    single.clickhouse.cluster = String::new();
    pixelpipe_sink::migrate(&single).await.unwrap();
    let old = ch(&replicas()[1]);
    old.query(&format!(
        "INSERT INTO pixelpipe.{prefix}hits (event_id, received_at, site_id, kind) SELECT generateUUIDv4(), now(), 's', 'open'"
    ))
    .execute()
    .await
    .unwrap();
    // A sink of the cluster, talking to the other server, must not replace that table.
    let err = pixelpipe_sink::migrate(&cluster_config("unused", &prefix))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{prefix}bad_hits on "))
            || err.contains(&format!("{prefix}hits on ")),
        "{err}"
    );
    assert!(
        err.contains("not converted to a cluster automatically"),
        "{err}"
    );
    assert_eq!(
        number(
            &replicas()[1],
            &format!("SELECT count() FROM pixelpipe.{prefix}hits")
        )
        .await,
        1,
        "the single-server rows are still there"
    );
    // Nor a sink of the cluster talking to that server itself.
    let mut on_old = cluster_config("unused", &prefix).with_clickhouse(&replicas()[1]);
    on_old.clickhouse.cluster = cluster();
    let err = pixelpipe_sink::migrate(&on_old)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ReplacingMergeTree table, not the cluster layout's"),
        "{err}"
    );
}
