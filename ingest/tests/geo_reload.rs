//! A GeoIP database replaced on disk while the real edge runs is picked up without a restart, and
//! hits produced to the real broker carry the new places.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn a_new_city_database_is_used_without_a_restart() {
    let topic = unique_topic("georeload");
    create_topic(&topic, 1).await;
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/geoip");
    let dir = std::env::temp_dir().join(format!("pixelpipe-georeload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let live = dir.join("City.mmdb");
    // Not there yet at start: a warning, and empty place fields.
    let mut config = test_config(&topic);
    config.geoip.city_db_path = live.to_string_lossy().into_owned();
    config.geoip.reload_interval_ms = 100;
    config.http.trusted_proxies = vec!["127.0.0.1".into()];
    let edge = RunningEdge::start(config);
    assert!(edge.wait_ready(true, Duration::from_secs(20)).await);
    let addr = edge.public;
    let send = move |n: u32| {
        let r = http(
            addr,
            "GET",
            &format!("/p.gif?site=s&n={n}"),
            &[("X-Forwarded-For", "81.2.69.142")],
            b"",
        );
        assert_eq!(r.status, 200);
    };
    tokio::task::spawn_blocking(move || send(1)).await.unwrap();

    let next = dir.join("City.mmdb.new");
    std::fs::copy(format!("{data}/GeoIP2-City-Test.mmdb"), &next).unwrap();
    std::fs::rename(&next, &live).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while edge
        .metric("pixelpipe_ingest_geoip_reloads_total{result=\"ok\"}")
        .await
        != Some(1.0)
    {
        assert!(
            Instant::now() < deadline,
            "the new database was never loaded"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::task::spawn_blocking(move || send(2)).await.unwrap();

    let hits = read_hits(&topic, 2, Duration::from_secs(30));
    let cities: Vec<Option<&str>> = hits.iter().map(|h| h.geo_city.as_deref()).collect();
    assert_eq!(cities, vec![None, Some("London")]);
    edge.shutdown().await;
    std::fs::remove_dir_all(dir).unwrap();
}
