//! Helpers for the sink's integration tests: the real broker (the helpers shared with the edge's
//! tests), the real ClickHouse server (`deploy/local/clickhouse.sh start`, `TEST_CLICKHOUSE_URL`,
//! default http://127.0.0.1:8123), and an in-process sink. Every test uses its own topic, group
//! and table prefix, so tests run in parallel. The edge's end-to-end tests use them too.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use pixelpipe_common::wire;
use pixelpipe_sink::SinkConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use tokio::sync::oneshot;

#[path = "../../../ingest/tests/common/kafka.rs"]
pub mod kafka;
pub mod rollups;

pub fn clickhouse_url() -> String {
    std::env::var("TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".into())
}

/// A name fragment no other test uses.
pub fn unique(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{test}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// A sink config for a test: its own topic, group and table prefix; small batches written fast.
pub fn sink_config(topic: &str, prefix: &str) -> SinkConfig {
    let mut c = SinkConfig::default();
    c.kafka.brokers = kafka::brokers();
    c.kafka.topic = topic.to_owned();
    c.kafka.group_id = format!("sink-{prefix}");
    c.kafka.statistics_interval_ms = 500;
    c.kafka
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    c.kafka
        .properties
        .insert("heartbeat.interval.ms".into(), "500".into());
    c.clickhouse.url = clickhouse_url();
    c.clickhouse.table_prefix = prefix.to_owned();
    c.batch.max_age_ms = 200;
    c.retry.initial_backoff_ms = 100;
    c.retry.max_backoff_ms = 1_000;
    c
}

/// Points a config at another ClickHouse server.
pub trait WithClickHouse {
    fn with_clickhouse(self, url: &str) -> Self;
}

impl WithClickHouse for SinkConfig {
    fn with_clickhouse(mut self, url: &str) -> Self {
        self.clickhouse.url = url.to_owned();
        self
    }
}

/// Creates a test's topic and its dead-letter topic.
pub async fn create_topics(topic: &str, partitions: i32) {
    kafka::create_topic(topic, partitions).await;
    kafka::create_topic(&format!("{topic}.dlq"), 1).await;
}

/// A ClickHouse client for assertions.
pub fn ch(url: &str) -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(url)
        .with_validation(false)
}

/// One number from a query.
pub async fn number(url: &str, sql: &str) -> u64 {
    ch(url)
        .query(sql)
        .fetch_one::<u64>()
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Polls `sql` until it returns `want` or `timeout` passes; returns the last value.
pub async fn wait_for(url: &str, sql: &str, want: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let got = ch(url)
            .query(sql)
            .fetch_one::<u64>()
            .await
            .unwrap_or(u64::MAX);
        if got == want || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An in-process sink.
pub struct RunningSink {
    pub admin: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<pixelpipe_sink::Result<()>>,
}

impl RunningSink {
    pub fn start(config: SinkConfig) -> RunningSink {
        let admin = pixelpipe_common::http::bind("127.0.0.1:0".parse().unwrap(), 1, "admin")
            .unwrap()
            .remove(0);
        let addr = admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(pixelpipe_sink::run(config, admin, async {
            let _ = stopped.await;
        }));
        RunningSink {
            admin: addr,
            stop: Some(stop),
            task,
        }
    }

    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.unwrap().unwrap();
    }

    /// Polls one series until it reaches `want` (metrics are counted just after the write that
    /// made rows visible, so a test must not race them); returns the last value.
    pub async fn wait_metric(&self, series: &str, want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = self.metric(series).await;
            if got >= want || Instant::now() >= deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// One series' value from the sink's `/metrics`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("{series} not in metrics"))
    }

    /// The sum of every series of metric `name`, whatever its labels.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        let values: Vec<f64> = text
            .lines()
            .filter_map(|l| {
                let rest = l.strip_prefix(name)?;
                let rest = match rest.strip_prefix('{') {
                    Some(labelled) => &labelled[labelled.find('}')? + 1..],
                    None => rest,
                };
                rest.strip_prefix(' ')?.trim().parse::<f64>().ok()
            })
            .collect();
        assert!(!values.is_empty(), "{name} not in metrics");
        values.iter().sum()
    }

    async fn metrics_text(&self) -> String {
        let addr = self.admin;
        let r = tokio::task::spawn_blocking(move || kafka::http(addr, "GET", "/metrics", &[], b""))
            .await
            .unwrap();
        String::from_utf8(r.body).unwrap()
    }
}

/// A valid hit for `site`, numbered `i`, encoded by the one wire encoder.
pub fn encoded_hit(site: &str, i: u64) -> Vec<u8> {
    let json = format!(
        r#"{{"schema_version":1,"event_id":"{}","received_at_ms":{},"edge_id":"test","transport":"pixel",
            "kind":"open","site_id":"{site}","client_ip":"203.0.113.{}","path":"/p.gif","campaign":"c{}","props":[["n","{i}"]]}}"#,
        uuid::Uuid::now_v7(),
        1_790_000_000_000 + i,
        i % 250,
        i % 3
    );
    let hit = wire::decode(json.as_bytes()).unwrap();
    let mut buf = Vec::new();
    wire::encode(&hit, &mut buf);
    buf
}

/// Produces raw payloads to `topic` and waits until Kafka has them all.
pub fn produce(topic: &str, payloads: &[Vec<u8>]) {
    let payloads: Vec<Option<&[u8]>> = payloads.iter().map(|p| Some(p.as_slice())).collect();
    produce_payloads(topic, &payloads, &[]);
}

/// [`produce`], where `None` is a message with a null payload (a tombstone), with extra producer
/// `properties`.
pub fn produce_payloads(topic: &str, payloads: &[Option<&[u8]>], properties: &[(&str, &str)]) {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", kafka::brokers())
        .set("linger.ms", "5");
    for (k, v) in properties {
        config.set(*k, *v);
    }
    let producer: BaseProducer = config.create().unwrap();
    for (i, p) in payloads.iter().enumerate() {
        let key = (i % 97).to_string();
        loop {
            let record = BaseRecord::<String, [u8]>::to(topic).key(&key);
            let record = match p {
                Some(p) => record.payload(*p),
                None => record,
            };
            match producer.send(record) {
                Ok(()) => break,
                Err((e, _)) => {
                    producer.poll(Duration::from_millis(50));
                    assert!(format!("{e}").contains("Queue full"), "{e}");
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
}

/// A message as read: payload and headers.
pub type RawMessage = (Vec<u8>, Vec<(String, String)>);

/// Reads `want` messages from the start of `topic` with their headers.
pub fn read_raw(topic: &str, want: usize) -> Vec<RawMessage> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka::brokers())
        .set("group.id", format!("raw-{topic}"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    while out.len() < want && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let headers = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|x| {
                            (
                                x.key.to_owned(),
                                String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            out.push((m.payload().unwrap_or_default().to_vec(), headers));
        }
    }
    out
}

/// Stores `payloads` through the real broker and a real sink: a fresh topic named after `test`,
/// a sink with a fresh table prefix, run until ClickHouse holds `hits` distinct hits and `bad`
/// bad hits, then stopped. Returns the table prefix. Panics if they are not stored in a minute.
pub async fn store_through_a_sink(
    test: &str,
    payloads: Vec<Vec<u8>>,
    hits: u64,
    bad: u64,
) -> String {
    let topic = kafka::unique_topic(test);
    create_topics(&topic, 2).await;
    let prefix = format!("{}_", unique(test));
    let url = clickhouse_url();
    let t = topic.clone();
    tokio::task::spawn_blocking(move || produce(&t, &payloads))
        .await
        .unwrap();
    let sink = RunningSink::start(sink_config(&topic, &prefix));
    for (sql, want) in [
        (
            format!("SELECT uniqExact(event_id) FROM pixelpipe.{prefix}hits"),
            hits,
        ),
        (
            format!("SELECT count() FROM pixelpipe.{prefix}bad_hits"),
            bad,
        ),
    ] {
        let got = wait_for(&url, &sql, want, Duration::from_secs(60)).await;
        assert_eq!(got, want, "{sql}");
    }
    sink.stop().await;
    prefix
}

/// Migrates `config`'s tables twice: the first run applies every migration, in order, and the
/// second nothing.
pub async fn migrate_all_then_nothing(config: &SinkConfig) {
    let all: Vec<u32> = pixelpipe_sink::schema::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(pixelpipe_sink::migrate(config).await.unwrap(), all);
    assert_eq!(
        pixelpipe_sink::migrate(config).await.unwrap(),
        Vec::<u32>::new(),
        "already migrated: a no-op"
    );
}

/// Runs one query over ClickHouse's HTTP interface at `url` and returns its answer as
/// tab-separated text; panics with the server's error.
pub async fn tsv(url: &str, sql: &str) -> String {
    let addr: std::net::SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let body = format!("{} FORMAT TabSeparated", sql.trim().trim_end_matches(';'));
    let r =
        tokio::task::spawn_blocking(move || kafka::http(addr, "POST", "/", &[], body.as_bytes()))
            .await
            .unwrap();
    let text = String::from_utf8(r.body).unwrap();
    assert_eq!(r.status, 200, "{sql}\n{text}");
    text
}

/// `YYYY-MM-DD` of a Unix time (UTC), as ClickHouse prints a `Date`, so that tests state expected
/// days without asking a server.
pub fn date(unix: u64) -> String {
    utc(unix).format("%Y-%m-%d").to_string()
}

/// `YYYY-MM-DD HH:MM:SS`, as ClickHouse prints a `DateTime('UTC')`.
pub fn datetime(unix: u64) -> String {
    utc(unix).format("%Y-%m-%d %H:%M:%S").to_string()
}

fn utc(unix: u64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(i64::try_from(unix).unwrap(), 0).unwrap()
}

/// Every row of `table` on the server at `url` as RowBinary, with its column names in that
/// order: the bytes are the same under both flavours of the schema (`schema`'s premise), so they
/// load into a modern server as they are.
pub async fn dump(url: &str, table: &str) -> (Vec<String>, Vec<u8>) {
    let (db, name) = table.split_once('.').unwrap();
    let columns: Vec<String> = ch(url)
        .query(&format!(
            "SELECT name FROM system.columns WHERE database = '{db}' AND table = '{name}'"
        ))
        .fetch_all()
        .await
        .unwrap();
    let rows = ch(url)
        .query(&format!("SELECT {} FROM {table}", columns.join(", ")))
        .fetch_bytes("RowBinary")
        .unwrap()
        .collect()
        .await
        .unwrap();
    (columns, rows.to_vec())
}

/// Loads the rows the sink stored into chDB under the modern DDL (every migration's steps for a
/// modern server, rollups, views and backfills included, then the retention TTLs), and runs
/// every query there, returning each answer as tab-separated text. The rollups are filled by their views as the rows load.
pub async fn on_a_modern_server(url: &str, prefix: &str, queries: &[String]) -> Vec<String> {
    let config = pixelpipe_sink::config::ClickHouseConfig {
        table_prefix: prefix.to_owned(),
        ..pixelpipe_sink::config::ClickHouseConfig::default()
    };
    let tables = pixelpipe_sink::schema::Tables::new(&config);
    let mut steps: Vec<_> = pixelpipe_sink::schema::MIGRATIONS
        .iter()
        .flat_map(|m| {
            (m.steps)(
                &tables,
                pixelpipe_sink::schema::Flavour::Modern,
                config.retention_days,
            )
        })
        .map(|step| chdb::sql(&step.sql()))
        .collect();
    steps.extend(
        pixelpipe_sink::retention::rules(&config)
            .iter()
            .map(|r| chdb::sql(&r.modify_ttl_statement())),
    );
    let mut files = Vec::new();
    for (i, table) in [tables.hits(), tables.bad_hits()].iter().enumerate() {
        let (columns, rows) = dump(url, table).await;
        let file = format!("{i}.bin");
        steps.push(chdb::load(table, &file, &columns));
        files.push((file, rows));
    }
    steps.extend(queries.iter().map(|q| chdb::query(q)));
    chdb::run_plan(&steps, &files)
}

/// ClickHouse of today, in-process: chDB's Python package (`deploy/local/chdb.sh install`), found
/// through `TEST_CHDB_PYTHON` or where that script installs it.
pub mod chdb {
    use std::process::Command;

    use serde_json::{json, Value};

    /// The Python interpreter that has chDB.
    pub fn python() -> String {
        std::env::var("TEST_CHDB_PYTHON").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap();
            format!("{home}/.cache/pixelpipe/chdb-26.9.0/bin/python")
        })
    }

    /// A statement to run.
    pub fn sql(sql: &str) -> Value {
        json!({ "sql": sql })
    }

    /// Rows from [`super::dump`] to insert into `table` (`database.name`), its columns in order.
    pub fn load(table: &str, file: &str, columns: &[String]) -> Value {
        json!({ "load": table, "file": file, "columns": columns })
    }

    /// A query whose answer, as TSV, [`run_plan`] returns.
    pub fn query(sql: &str) -> Value {
        json!({ "query": sql })
    }

    /// Runs `steps` in order in one chDB session, in a directory of its own holding `files`
    /// (name, bytes); returns the answers of its queries. Panics naming the step that failed.
    pub fn run_plan(steps: &[Value], files: &[(String, Vec<u8>)]) -> Vec<String> {
        let mut files = files.to_vec();
        files.push((
            "plan.json".into(),
            Value::from(steps).to_string().into_bytes(),
        ));
        let out = run(PLAN, &files);
        serde_json::from_str(out.trim()).unwrap()
    }

    const PLAN: &str = r#"
import json
from chdb import session
s = session.Session("db")
s.query("CREATE DATABASE IF NOT EXISTS pixelpipe")
answers = []
for step in json.load(open("plan.json")):
    try:
        if "sql" in step:
            s.query(step["sql"])
        elif "load" in step:
            db, name = step["load"].split(".")
            types = dict((r["name"], r["type"]) for r in map(json.loads, str(s.query("SELECT name, type FROM system.columns WHERE database = '" + db + "' AND table = '" + name + "'", "JSONEachRow")).splitlines()))
            structure = ", ".join(c + " " + types[c] for c in step["columns"]).replace("'", "\\'")
            s.query("INSERT INTO " + step["load"] + " (" + ", ".join(step["columns"]) + ") SELECT * FROM file('" + step["file"] + "', RowBinary, '" + structure + "')")
        else:
            answers.append(str(s.query(step["query"], "TabSeparated")))
    except Exception as e:
        raise SystemExit(json.dumps(step)[:3000] + "\n" + str(e))
print(json.dumps(answers))
"#;

    /// Runs a Python `script` in a directory of its own holding `files` (name, bytes), so that
    /// tests running at once never share a chDB database; returns what it printed, and panics
    /// with its errors if it failed.
    pub fn run(script: &str, files: &[(String, Vec<u8>)]) -> String {
        let dir = std::env::temp_dir().join(format!("pp-{}", super::unique("chdb")));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let out = Command::new(python())
            .arg("-c")
            .arg(script)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "chDB python {}: {e} (run deploy/local/chdb.sh install)",
                    python()
                )
            });
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "chDB failed:\n{}\n{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::remove_dir_all(&dir).unwrap();
        stdout
    }
}
