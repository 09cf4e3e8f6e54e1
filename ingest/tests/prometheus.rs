//! The shipped Prometheus configuration against the real thing: Debian's `promtool` checks
//! `deploy/prometheus/prometheus.yml` and runs the alert rules' unit tests, and Debian's
//! `prometheus` scrapes a real edge and a real sink with that configuration (only the targets and
//! the interval changed) and loads every rule (`deploy/local/prometheus.sh install`;
//! `TEST_PROMETHEUS` names the binary, `promtool` is beside it).
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

#[path = "../../sink/tests/common/mod.rs"]
mod sink;
use sink::kafka;
#[path = "common/edge.rs"]
mod edge;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use edge::*;
use kafka::*;
use sink::{create_topics, sink_config, unique, RunningSink};

fn prometheus() -> PathBuf {
    std::env::var("TEST_PROMETHEUS")
        .unwrap_or_else(|_| "/usr/bin/prometheus".into())
        .into()
}

fn promtool() -> PathBuf {
    prometheus().with_file_name("promtool")
}

fn shipped() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

/// Runs `promtool ARGS` in `deploy/prometheus`; returns its output, which must be a success.
fn promtool_ok(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(shipped())
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "{}: {e} (deploy/local/prometheus.sh install)",
                promtool().display()
            )
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs promtool: deploy/local/test.sh installs it"
)]
fn the_shipped_config_is_valid_and_the_alerts_pass_their_unit_tests() {
    let checked = promtool_ok(&["check", "config", "prometheus.yml"]);
    assert!(checked.contains("SUCCESS: 15 rules found"), "{checked}");
    let tested = promtool_ok(&["test", "rules", "alerts_test.yml"]);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // The compose file's Prometheus: its own targets, the same rules mounted beside it.
    let dir = std::env::temp_dir().join(format!("pp-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        shipped().join("../compose/prometheus.yml"),
        dir.join("prometheus.yml"),
    )
    .unwrap();
    std::fs::copy(shipped().join("alerts.yml"), dir.join("alerts.yml")).unwrap();
    let compose = promtool_ok(&[
        "check",
        "config",
        dir.join("prometheus.yml").to_str().unwrap(),
    ]);
    assert!(compose.contains("SUCCESS: 15 rules found"), "{compose}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The `pixelpipe_*` metric names in `text` (histograms by their series names, `_bucket` and all).
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("pixelpipe_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // Job names (`pixelpipe-edge`) have a hyphen and are not caught; a bare prefix is prose.
        if name.len() > "pixelpipe_ingest_".len() {
            names.push(name);
        }
    }
    names
}

/// A Prometheus process, killed when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET `path` on `addr`; the body as JSON, or `None` while Prometheus is not answering yet.
fn get_json(addr: std::net::SocketAddr, path: &str) -> Option<serde_json::Value> {
    std::net::TcpStream::connect(addr).ok()?;
    let r = http(addr, "GET", path, &[], b"");
    if r.status != 200 {
        return None;
    }
    serde_json::from_slice(&r.body).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker, ClickHouse and Prometheus: deploy/local/test.sh starts and installs them"
)]
async fn prometheus_scrapes_the_edge_and_the_sink_and_loads_the_alerts() {
    let topic = unique_topic("prom");
    create_topics(&topic, 1).await;
    let edge = RunningEdge::start(test_config(&topic));
    let sink = RunningSink::start(sink_config(&topic, &format!("{}_", unique("prom"))));
    assert!(edge.wait_ready(true, Duration::from_secs(20)).await);
    // One hit through the pipeline: a sink knows its lag only once it has read a partition.
    let public = edge.public;
    tokio::task::spawn_blocking(move || {
        assert_eq!(
            http(public, "GET", "/p.gif?site=s&e=open", &[], b"").status,
            200
        );
    })
    .await
    .unwrap();

    // The shipped configuration, pointed at this test's processes and scraping every second.
    let dir = std::env::temp_dir().join(format!("pp-prometheus-{}", unique("t")));
    std::fs::create_dir_all(&dir).unwrap();
    let config = std::fs::read_to_string(shipped().join("prometheus.yml")).unwrap();
    for from in ["127.0.0.1:9090", "127.0.0.1:9091", "scrape_interval: 15s"] {
        assert!(config.contains(from), "prometheus.yml no longer has {from}");
    }
    let config = config
        .replace("127.0.0.1:9090", &edge.admin.to_string())
        .replace("127.0.0.1:9091", &sink.admin.to_string())
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    std::fs::copy(shipped().join("alerts.yml"), dir.join("alerts.yml")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let _prometheus = Running(
        Command::new(prometheus())
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("prometheus.err")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (deploy/local/prometheus.sh install)",
                    prometheus().display()
                )
            }),
    );

    // Every metric an alert or a dashboard names must be one these processes export, and every
    // dashboard query PromQL this Prometheus runs.
    let dashboards = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana");
    let mut queries = Vec::new();
    let mut named = metric_names(&std::fs::read_to_string(shipped().join("alerts.yml")).unwrap());
    for entry in std::fs::read_dir(&dashboards).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().unwrap() {
                if panel["datasource"]["type"] == "prometheus" {
                    queries.push(target["expr"].as_str().unwrap().to_owned());
                }
            }
        }
        named.extend(metric_names(&text));
    }
    named.sort();
    named.dedup();

    // Both targets up, every rule loaded, the edge's readiness readable as a series, and every
    // named metric scraped (the sink's lag appears with its first statistics).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut health, mut rules, mut ready) = (Vec::new(), 0, None);
    let mut scraped: Vec<String> = Vec::new();
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (targets, groups, query, names) = tokio::task::spawn_blocking(move || {
            (
                get_json(addr, "/api/v1/targets"),
                get_json(addr, "/api/v1/rules"),
                get_json(addr, "/api/v1/query?query=pixelpipe_ingest_ready"),
                get_json(addr, "/api/v1/label/__name__/values"),
            )
        })
        .await
        .unwrap();
        if let Some(t) = targets {
            health = t["data"]["activeTargets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| {
                    (
                        t["labels"]["job"].as_str().unwrap().to_owned(),
                        t["health"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            health.sort();
        }
        if let Some(g) = groups {
            rules = g["data"]["groups"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["rules"].as_array().unwrap().len())
                .sum();
        }
        if let Some(q) = query {
            ready = q["data"]["result"][0]["value"][1]
                .as_str()
                .map(str::to_owned);
        }
        if let Some(n) = names {
            scraped = n["data"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n.as_str().unwrap().to_owned())
                .collect();
        }
        let up = |job: &str| health.contains(&(job.to_owned(), "up".to_owned()));
        let all_named = named.iter().all(|n| scraped.contains(n));
        if up("pixelpipe-edge")
            && up("pixelpipe-sink")
            && rules == 15
            && ready.is_some()
            && all_named
        {
            break;
        }
    }
    let log = std::fs::read_to_string(dir.join("prometheus.err")).unwrap_or_default();
    assert_eq!(
        health,
        vec![
            ("pixelpipe-edge".to_owned(), "up".to_owned()),
            ("pixelpipe-sink".to_owned(), "up".to_owned())
        ],
        "targets; prometheus log:\n{log}"
    );
    assert_eq!(rules, 15, "rules loaded; prometheus log:\n{log}");
    assert_eq!(ready.as_deref(), Some("1"), "the ready edge's series");

    let missing: Vec<&String> = named.iter().filter(|n| !scraped.contains(n)).collect();
    assert!(missing.is_empty(), "named but not exported: {missing:?}");
    assert!(queries.len() >= 10, "{queries:?}");
    for query in queries {
        let path = format!(
            "/api/v1/query?query={}",
            percent_encoding::utf8_percent_encode(&query, percent_encoding::NON_ALPHANUMERIC)
        );
        let answer = tokio::task::spawn_blocking(move || get_json(addr, &path))
            .await
            .unwrap();
        assert_eq!(
            answer.as_ref().map(|a| a["status"].clone()),
            Some(serde_json::json!("success")),
            "{query}: {answer:?}"
        );
    }

    drop(_prometheus);
    edge.shutdown().await;
    sink.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
