//! The sink survives what production does to it: being killed, and ClickHouse going away.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use common::kafka::unique_topic;
use common::*;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The consumer group session timeout the sinks of these tests use.
const SESSION_TIMEOUT: Duration = Duration::from_secs(6);

/// The real `pixelpipe-sink` binary as a child process.
fn spawn_sink(topic: &str, prefix: &str, clickhouse: &str) -> Child {
    let sets = [
        format!("kafka.brokers={}", common::kafka::brokers()),
        format!("kafka.topic={topic}"),
        format!("kafka.group_id=sink-{prefix}"),
        format!(
            "kafka.properties.session.timeout.ms={}",
            SESSION_TIMEOUT.as_millis()
        ),
        format!("clickhouse.url={clickhouse}"),
        format!("clickhouse.table_prefix={prefix}"),
        "batch.max_age_ms=200".to_string(),
        "batch.max_rows=200".to_string(),
        "retry.initial_backoff_ms=100".to_string(),
        "retry.max_backoff_ms=1000".to_string(),
        "admin.listen_addr=127.0.0.1:0".to_string(),
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pixelpipe-sink"));
    for s in &sets {
        cmd.arg("--set").arg(s);
    }
    cmd.env("PIXELPIPE_LOG", "warn")
        .spawn()
        .expect("start pixelpipe-sink")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn a_sink_killed_mid_stream_loses_nothing_after_restart() {
    const N: u64 = 3000;
    let topic = unique_topic("sigkill");
    create_topics(&topic, 2).await;
    let prefix = format!("{}_", unique("sigkill"));
    let url = clickhouse_url();
    let table = format!("pixelpipe.{prefix}hits");

    // Hits keep arriving while the sink is killed and restarted.
    let t = topic.clone();
    let producer = tokio::task::spawn_blocking(move || {
        for chunk in 0..30 {
            let payloads: Vec<Vec<u8>> = (chunk * 100..(chunk + 1) * 100)
                .map(|i| encoded_hit("k", i))
                .collect();
            produce(&t, &payloads);
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let mut first = spawn_sink(&topic, &prefix, &url);
    let stored = wait_for(
        &url,
        &format!("SELECT toUInt64(count() > 300) FROM {table}"),
        1,
        Duration::from_secs(60),
    )
    .await;
    if let Some(status) = first.try_wait().unwrap() {
        panic!("the first sink exited early: {status}");
    }
    assert_eq!(stored, 1, "the first sink stored some rows");
    first.kill().unwrap(); // SIGKILL: no flush, no commit, no goodbye to the group
    first.wait().unwrap();
    // The local broker (tansu 0.6) does not start a rebalance when a dead member's session runs
    // out: a member that joins before then can be handed no partitions and keep none for good
    // (seen under CPU load). Kafka rebalances on session expiry; here the restart waits it out,
    // as a restarted process usually does.
    tokio::time::sleep(SESSION_TIMEOUT + Duration::from_secs(2)).await;

    let mut second = spawn_sink(&topic, &prefix, &url);
    producer.await.unwrap();
    let n = wait_for(
        &url,
        &format!("SELECT uniqExact(event_id) FROM {table}"),
        N,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(n, N, "every hit is stored");
    assert_eq!(
        number(&url, &format!("SELECT count() FROM {table} FINAL")).await,
        N,
        "the exact-count query gives N"
    );

    Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(
        second.wait().unwrap().success(),
        "SIGTERM stops the sink cleanly"
    );
}

/// A ClickHouse server of this test's own, so stopping it disturbs no other test.
struct OwnClickHouse {
    env: Vec<(&'static str, String)>,
    url: String,
}

impl OwnClickHouse {
    fn script(&self, action: &str) {
        let status = Command::new(repo_root().join("deploy/local/clickhouse.sh"))
            .arg(action)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .status()
            .unwrap();
        assert!(status.success(), "clickhouse.sh {action}");
    }

    fn new(name: &str) -> OwnClickHouse {
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
                .to_string()
        };
        let http = port();
        let env = vec![
            ("CH_NAME", name.to_string()),
            ("CH_HTTP_PORT", http.clone()),
            ("CH_TCP_PORT", port()),
            ("CH_INTERSERVER_PORT", port()),
        ];
        OwnClickHouse {
            env,
            url: format!("http://127.0.0.1:{http}"),
        }
    }
}

impl Drop for OwnClickHouse {
    fn drop(&mut self) {
        let _ = Command::new(repo_root().join("deploy/local/clickhouse.sh"))
            .arg("stop")
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .status();
        let _ = std::fs::remove_dir_all(
            repo_root()
                .join(".local")
                .join(format!("clickhouse-{}", self.env[0].1)),
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn clickhouse_stopped_mid_stream_is_waited_out() {
    let name = unique("outage");
    let server = OwnClickHouse::new(&name);
    server.script("start");
    let topic = unique_topic("outage");
    create_topics(&topic, 2).await;
    let prefix = format!("{name}_");
    let table = format!("pixelpipe.{prefix}hits");
    let sink = RunningSink::start(sink_config(&topic, &prefix).with_clickhouse(&server.url));

    let first: Vec<Vec<u8>> = (0..100).map(|i| encoded_hit("o", i)).collect();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || produce(&t, &first))
        .await
        .unwrap();
    assert_eq!(
        wait_for(
            &server.url,
            &format!("SELECT count() FROM {table}"),
            100,
            Duration::from_secs(60)
        )
        .await,
        100
    );

    server.script("stop");
    let second: Vec<Vec<u8>> = (100..200).map(|i| encoded_hit("o", i)).collect();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || produce(&t, &second))
        .await
        .unwrap();
    // The sink keeps the batch and retries while the server is down.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sink.metric_sum("pixelpipe_sink_insert_retries_total").await < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sink never retried"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let committed_before = sink.metric("pixelpipe_sink_offsets_committed_total").await;

    server.script("start");
    let n = wait_for(
        &server.url,
        &format!("SELECT uniqExact(event_id) FROM {table}"),
        200,
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(n, 200, "no hit lost across the outage");
    assert_eq!(
        number(&server.url, &format!("SELECT count() FROM {table} FINAL")).await,
        200
    );
    // The commit follows the insert that made the rows visible: wait for it rather than race it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while sink.metric("pixelpipe_sink_offsets_committed_total").await <= committed_before {
        assert!(
            std::time::Instant::now() < deadline,
            "commits never resumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sink.stop().await;
}
