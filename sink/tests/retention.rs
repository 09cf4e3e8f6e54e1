//! Retention on a server without TTL (ClickHouse 18.16): `pixelpipe-sink retention` drops the
//! months of hits and of the rollups, and deletes the bad hits, past each table's limit, and
//! nothing else.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs ClickHouse: deploy/local/test.sh starts it"
)]
async fn retention_deletes_what_is_older_than_each_tables_limit() {
    let prefix = format!("{}_", unique("retain"));
    let mut config = sink_config("unused", &prefix);
    config.clickhouse.retention_days = 30;
    config.clickhouse.bad_hits_retention_days = 7;
    config.clickhouse.hits_hourly_retention_days = 60;
    config.clickhouse.hits_daily_retention_days = 0;
    pixelpipe_sink::migrate(&config).await.unwrap();
    let url = clickhouse_url();
    let client = ch(&url);
    let hits = format!("pixelpipe.{prefix}hits");
    let bad = format!("pixelpipe.{prefix}bad_hits");
    // Ages in days: hits keep 30 (whole months are dropped, so 100 and 400 go, and 31 might stay
    // until its month is over; it is left out), bad_hits keep 7 exactly.
    for (i, days) in [1u32, 10, 29, 100, 400].iter().enumerate() {
        client
            .query(&format!(
                "INSERT INTO {hits} (event_id, received_at, site_id, kind, kafka_offset)
                 SELECT generateUUIDv4(), now() - {days} * 86400, 's', 'open', {i}"
            ))
            .execute()
            .await
            .unwrap();
        client
            .query(&format!(
                "INSERT INTO {bad} (kafka_topic, kafka_offset, reason, seen_at)
                 SELECT 't', {i}, 'undecodable', now() - {days} * 86400"
            ))
            .execute()
            .await
            .unwrap();
    }
    let sent = pixelpipe_sink::delete_expired(&config).await.unwrap();
    let dropped = |table: &str| {
        sent.iter()
            .filter(|s| {
                s.starts_with(&format!(
                    "ALTER TABLE pixelpipe.{prefix}{table} DROP PARTITION"
                ))
            })
            .count()
    };
    // The views put every hit into both rollups too: the hourly one keeps 60 days, so the months
    // of 100 and 400 days go; the daily one keeps everything (0).
    assert!(
        (
            dropped("hits"),
            dropped("hits_hourly"),
            dropped("hits_daily")
        ) == (2, 2, 0)
            && sent.iter().filter(|s| s.contains("DELETE")).count() == 1,
        "two old months dropped from hits and the hourly rollup, bad hits deleted: {sent:?}"
    );
    // Deletes are mutations, applied in the background: wait for the counts to settle.
    let kept_hits = wait_for(
        &url,
        &format!("SELECT count() FROM {hits}"),
        3,
        Duration::from_secs(30),
    )
    .await;
    let kept_bad = wait_for(
        &url,
        &format!("SELECT count() FROM {bad}"),
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        (kept_hits, kept_bad),
        (3, 1),
        "hits 1, 10 and 29 days old stay; of the bad hits only the day-old one"
    );
    let in_rollup = |table: &str| format!("SELECT uniqMerge(hits) FROM pixelpipe.{prefix}{table}");
    assert_eq!(
        (
            number(&url, &in_rollup("hits_hourly")).await,
            number(&url, &in_rollup("hits_daily")).await
        ),
        (3, 5),
        "the hourly rollup keeps the three recent hits, the daily one all five"
    );
    assert_eq!(
        pixelpipe_sink::delete_expired(&config).await.unwrap(),
        Vec::<String>::new(),
        "nothing left to remove: no statement is sent"
    );
}
