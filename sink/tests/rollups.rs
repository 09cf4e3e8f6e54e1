//! The hourly and daily rollups count a hit once however often it reaches them: a batch the sink
//! writes again after a crash, before migration 7 (the backfill reads both copies) and after it
//! (the views see both), the backfill beside the views, and the documented refill run again. On
//! ClickHouse 18.16, and on ClickHouse 26.9 (chDB) under the modern DDL with the same rows.
//!
//! The expected answers are computed from the hits' own description, in Rust.

// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::rollups::*;
use common::*;
use pixelpipe_sink::config::ClickHouseConfig;
use pixelpipe_sink::schema::{self, Flavour, Step, Tables, MIGRATIONS};
use pixelpipe_sink::store::{ClickHouse, RowWriter};

/// The refill statements of docs/operations-sink.md, pointed at the test's tables: they must be
/// exactly what the migration's backfill runs, but for their time range.
fn documented_refills(prefix: &str) -> Vec<String> {
    let doc = include_str!("../../docs/operations-sink.md");
    let refills: Vec<String> = doc
        .split("```sql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .filter(|sql| sql.starts_with("INSERT INTO pixelpipe.hits_"))
        .map(|sql| sql.replace("pixelpipe.", &format!("pixelpipe.{prefix}")))
        .collect();
    let tables = Tables::new(&ClickHouseConfig {
        table_prefix: prefix.to_owned(),
        ..ClickHouseConfig::default()
    });
    let code: Vec<String> = tables
        .rollups()
        .iter()
        .map(|r| {
            format!(
                "INSERT INTO {}\n{}\n",
                r.table,
                r.select(
                    &tables.hits(),
                    Some("received_at >= now() - INTERVAL 7 DAY")
                )
            )
        })
        .collect();
    assert_eq!(refills, code, "docs/operations-sink.md's refills");
    refills
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs ClickHouse and chDB: deploy/local/test.sh starts and installs them"
)]
async fn a_hit_written_twice_counts_once_in_the_rollups_backfilled_or_not() {
    let prefix = format!("{}_", unique("rollup"));
    let config = sink_config("unused", &prefix);
    let url = clickhouse_url();
    let client = pixelpipe_sink::store::client(&config.clickhouse);
    let flavour = Flavour::detect(&client).await.unwrap();
    // Two days ago at midnight: inside the documented refill's last 7 days.
    let base = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / DAY
        - 2)
        * DAY;
    let before = hits(base, 0, 60);
    let after = hits(base, 60, 80);
    let writer = ClickHouse::new(&config.clickhouse, flavour);

    // A sink of the version before the rollups stored a batch, crashed before committing, and
    // its successor stored the batch again.
    assert_eq!(
        schema::migrate_through(&client, &config.clickhouse, flavour, 6)
            .await
            .unwrap(),
        vec![1, 2, 3, 4, 5, 6]
    );
    let first = batch(&before);
    writer.write(&first, "t").await.unwrap();
    writer.write(&first, "t").await.unwrap();

    // The upgrade: the views, then the backfill, which reads both copies.
    assert_eq!(pixelpipe_sink::migrate(&config).await.unwrap(), vec![7]);
    let asked = questions(&prefix, "");
    assert_eq!(
        ask(&url, &asked).await,
        answers(&before.iter().collect::<Vec<_>>()),
        "backfilled, each hit once"
    );

    // The same batch once more (the views see it, and the backfill saw it), and a new one twice.
    writer.write(&first, "t").await.unwrap();
    let second = batch(&after);
    writer.write(&second, "t").await.unwrap();
    writer.write(&second, "t").await.unwrap();
    let all: Vec<&Hit> = before.iter().chain(&after).collect();
    let want = answers(&all);
    assert_eq!(
        ask(&url, &asked).await,
        want,
        "through the views, each hit once"
    );

    // The documented refill, twice: nothing changes.
    let refills = documented_refills(&prefix);
    for sql in refills.iter().chain(&refills) {
        ch(&url).query(sql).execute().await.unwrap();
    }
    assert_eq!(ask(&url, &asked).await, want, "refilled, each hit once");
    // And the rows behind it are the ones `hits` counts exactly.
    let exact = format!(
        "SELECT toStartOfHour(received_at) AS hour, kind, campaign, uniqExact(event_id), uniqExactIf(visitor_id, visitor_id != '')
         FROM pixelpipe.{prefix}hits GROUP BY hour, kind, campaign ORDER BY hour, kind, campaign"
    );
    assert_eq!(ask(&url, &[exact.clone(), exact]).await[0], want[0]);
    assert_eq!(
        pixelpipe_sink::migrate(&config).await.unwrap(),
        Vec::<u32>::new()
    );

    // The same story on a modern server, with the rows `hits` holds now (every copy of both
    // batches): loaded before migration 7 and again after it.
    let tables = Tables::new(&config.clickhouse);
    let (columns, rows) = dump(&url, &tables.hits()).await;
    let modern = |m: &schema::Migration| -> Vec<serde_json::Value> {
        (m.steps)(&tables, Flavour::Modern, config.clickhouse.retention_days)
            .iter()
            .map(|s| chdb::sql(&s.sql()))
            .collect()
    };
    let mut steps: Vec<serde_json::Value> = MIGRATIONS[..6].iter().flat_map(modern).collect();
    // The bytes are identical each time, which block deduplication would drop; a sink's second
    // write differs in `inserted_at` and is not dropped, as here.
    steps.push(chdb::sql("SET insert_deduplicate = 0"));
    steps.push(chdb::load(&tables.hits(), "hits.bin", &columns));
    let v7 = modern(&MIGRATIONS[6]);
    assert!(
        (MIGRATIONS[6].steps)(&tables, Flavour::Modern, 0)
            .iter()
            .any(|s| matches!(s, Step::Backfill { .. })),
        "migration 7 backfills"
    );
    steps.extend(v7);
    steps.push(chdb::load(&tables.hits(), "hits.bin", &columns));
    steps.extend(asked.iter().map(|q| chdb::query(q)));
    steps.extend(refills.iter().map(|q| chdb::sql(q)));
    steps.extend(asked.iter().map(|q| chdb::query(q)));
    let got = chdb::run_plan(&steps, &[("hits.bin".into(), rows)]);
    assert_eq!(got[..2], want, "modern: loaded twice around the migration");
    assert_eq!(got[2..], want, "modern: refilled");
}
