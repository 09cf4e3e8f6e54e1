//! The sink's one configuration struct and its validation. Values come in layers exactly like the
//! edge's (defaults, TOML file, `PIXELPIPE_*` environment, `--set` flags; see
//! `pixelpipe_common::layers`). This module opens no connection.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use pixelpipe_common::layers::{self, check, ConfigError};
use serde::{Deserialize, Serialize};

/// Everything the sink can be told.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SinkConfig {
    /// The Kafka consumer group.
    pub kafka: KafkaConfig,
    /// Where rows go.
    pub clickhouse: ClickHouseConfig,
    /// When a batch is written.
    pub batch: BatchConfig,
    /// How a failed write is retried.
    pub retry: RetryConfig,
    /// The admin listener (metrics).
    pub admin: AdminConfig,
    /// User-agent parsing and traffic classification.
    pub enrich: EnrichConfig,
}

/// User-agent parsing and traffic classification (see `enrich` and docs/privacy.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EnrichConfig {
    /// uap-core rules as JSON (made by `deploy/local/update-ua-rules.sh`). Default empty: the
    /// rules built into the binary (see `sink/rules/uap-core/VERSION`).
    pub ua_rules_path: String,
    /// Parsed user agents kept in memory. Default 10000.
    pub ua_cache_entries: usize,
    /// Autonomous systems whose hits are classed `bot` (`datacenter_asn`): cloud and hosting
    /// networks, where people do not browse from. Needs the edge's ASN database. Default: a
    /// short list of the largest clouds (see docs/configuration-sink.md).
    pub datacenter_asns: Vec<u32>,
    /// An open of a signed pixel URL carrying its send time (`st`) that arrives sooner than this
    /// after sending is classed `scanner` (`open_soon_after_send`). 0 turns the rule off.
    /// Default 10.
    pub machine_open_seconds: u64,
    /// A click (`e=click`, the default on `/c`) of a signed URL carrying its send time that
    /// arrives sooner than this after sending is classed `scanner` (`click_soon_after_send`): link
    /// scanners follow every link on delivery. A setting of its own so that either rule can be
    /// tuned or turned off alone. 0 turns the rule off. Default 10.
    pub machine_click_seconds: u64,
}

impl Default for EnrichConfig {
    fn default() -> Self {
        EnrichConfig {
            ua_rules_path: String::new(),
            ua_cache_entries: 10_000,
            // Amazon (16509, 14618), Google Cloud (396982), Microsoft (8075), DigitalOcean
            // (14061), OVH (16276), Hetzner (24940), Linode/Akamai (63949), Oracle (31898),
            // Alibaba (45102), Vultr (20473), Scaleway (12876).
            datacenter_asns: vec![
                16509, 14618, 396982, 8075, 14061, 16276, 24940, 63949, 31898, 45102, 20473, 12876,
            ],
            machine_open_seconds: 10,
            machine_click_seconds: 10,
        }
    }
}

/// The Kafka consumer group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated. Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Topic the edge produces to. Default `pixelpipe.hits`.
    pub topic: String,
    /// Consumer group; sinks in one group split the partitions. Default `pixelpipe-sink`.
    pub group_id: String,
    /// Where undecodable or out-of-range messages go. Default empty, meaning `<topic>.dlq`.
    pub dead_letter_topic: String,
    /// `statistics.interval.ms`, for the consumer-lag metric. Default 5000.
    pub statistics_interval_ms: u64,
    /// A hit larger than this is dead-lettered as `too_large` without being decoded; each hit of
    /// a packed message counts alone.
    /// The edge's default limits (`http.max_body_bytes` 64 KiB, `http.max_header_bytes` 16 KiB,
    /// `limits.max_query_bytes` 8 KiB) keep a hit well below it; raise it with them. At least
    /// 4096. Default 262144 (256 KiB).
    pub max_payload_bytes: usize,
    /// Any other librdkafka consumer property, passed through unchanged (SASL, TLS, ...).
    pub properties: BTreeMap<String, String>,
}

/// Where rows go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP interface. Default `http://127.0.0.1:8123`.
    pub url: String,
    /// Database, created by the migrations. Default `pixelpipe`.
    pub database: String,
    /// Prefix of every table name (`<prefix>hits`, `<prefix>bad_hits`, the rollups
    /// `<prefix>hits_hourly` and `<prefix>hits_daily`, `<prefix>schema_migrations`), so several
    /// pipelines or tests share a database. Default empty.
    pub table_prefix: String,
    /// User. Default `default`.
    pub user: String,
    /// Password. Default empty.
    pub password: String,
    /// A replicated cluster to create the tables on, by its name in the servers'
    /// `remote_servers` (e.g. `pixelpipe`, which `deploy/local/clickhouse-cluster.sh` defines).
    /// Empty (the default) is one server. When set, every DDL statement runs `ON CLUSTER`, rows
    /// live in `<prefix>hits_local` and `<prefix>bad_hits_local`
    /// (`ReplicatedReplacingMergeTree`, paths `/clickhouse/tables/{shard}/<database>/<table>`,
    /// replica `{replica}`, both macros from the servers' config), and `<prefix>hits` and
    /// `<prefix>bad_hits` are `Distributed` tables over them, which the sink inserts into
    /// (synchronously: the insert returns once the shard has the rows) and analysts query.
    pub cluster: String,
    /// Apply pending migrations when the sink starts (they are idempotent). Default true.
    pub migrate_on_start: bool,
    /// Days a row of `<prefix>hits` is kept: a table TTL on servers that have one, brought in
    /// line when the sink migrates; on 18.16, `pixelpipe-sink retention` drops the months past
    /// it. 0 keeps rows forever. Default 400.
    pub retention_days: u32,
    /// The same for `<prefix>bad_hits`, whose raw payloads are kept only to be looked at.
    /// Default 30.
    pub bad_hits_retention_days: u32,
    /// Days a row of the hourly rollup `<prefix>hits_hourly` is kept (by `hour`), enforced as
    /// for `hits`. 0 keeps rows forever. Default 400: hourly charts over the same span as the
    /// hits they summarise.
    pub hits_hourly_retention_days: u32,
    /// The same for the daily rollup `<prefix>hits_daily` (by `day`): the long-lived one, at
    /// least as long as the hourly rollup. 0 keeps rows forever. Default 1830 (five years).
    pub hits_daily_retention_days: u32,
    /// One insert may take this long before it counts as failed and is retried (each chunk sent,
    /// and then the server's answer); the version check at start is bounded by it too, so a
    /// server that accepts connections and never answers is waited out, not waited on. Default
    /// 30000.
    pub insert_timeout_ms: u64,
}

/// A batch is written when any limit is reached, whichever comes first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchConfig {
    /// Rows per batch at most. Default 50000.
    pub max_rows: usize,
    /// Kafka payload bytes per batch at most. Default 67108864 (64 MiB).
    pub max_bytes: usize,
    /// Age of a batch's first message before it is written anyway. Default 1000.
    pub max_age_ms: u64,
}

/// Capped exponential backoff with jitter for a batch that could not be written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// First wait. Default 200.
    pub initial_backoff_ms: u64,
    /// Longest wait. Default 30000.
    pub max_backoff_ms: u64,
    /// On shutdown, how long a batch not stored yet (failing, or its insert still running) is
    /// still given before it is abandoned (not committed, so it is read again by the next owner).
    /// The batch in flight and the batch in hand each get this long. Default 5000.
    pub shutdown_timeout_ms: u64,
}

/// The admin listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address serving `GET /metrics`. Default `127.0.0.1:9091`.
    pub listen_addr: SocketAddr,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "pixelpipe.hits".into(),
            group_id: "pixelpipe-sink".into(),
            dead_letter_topic: String::new(),
            statistics_interval_ms: 5_000,
            max_payload_bytes: 256 * 1024,
            properties: BTreeMap::new(),
        }
    }
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        ClickHouseConfig {
            url: "http://127.0.0.1:8123".into(),
            database: "pixelpipe".into(),
            table_prefix: String::new(),
            cluster: String::new(),
            user: "default".into(),
            password: String::new(),
            migrate_on_start: true,
            retention_days: 400,
            bad_hits_retention_days: 30,
            hits_hourly_retention_days: 400,
            hits_daily_retention_days: 1830,
            insert_timeout_ms: 30_000,
        }
    }
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_rows: 50_000,
            max_bytes: 64 * 1024 * 1024,
            max_age_ms: 1_000,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial_backoff_ms: 200,
            max_backoff_ms: 30_000,
            shutdown_timeout_ms: 5_000,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 9091)),
        }
    }
}

fn identifier(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl SinkConfig {
    /// Builds and validates the effective configuration.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<SinkConfig, ConfigError> {
        layers::load_validated(file, env, overrides)
    }

    /// The dead-letter topic: `kafka.dead_letter_topic`, or `<topic>.dlq`.
    pub fn dead_letter_topic(&self) -> String {
        if self.kafka.dead_letter_topic.is_empty() {
            format!("{}.dlq", self.kafka.topic)
        } else {
            self.kafka.dead_letter_topic.clone()
        }
    }

    /// The configuration as TOML, for `--check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

impl layers::Validate for SinkConfig {
    /// Checks every setting once; the error names the wrong one.
    fn validate(&self) -> layers::Result<()> {
        let k = &self.kafka;
        check(
            !k.brokers.trim().is_empty(),
            "kafka.brokers",
            "must name at least one broker",
        )?;
        check(!k.topic.is_empty(), "kafka.topic", "must not be empty")?;
        check(
            !k.group_id.is_empty(),
            "kafka.group_id",
            "must not be empty",
        )?;
        check(
            self.dead_letter_topic() != k.topic,
            "kafka.dead_letter_topic",
            "must differ from kafka.topic",
        )?;
        check(
            k.statistics_interval_ms > 0,
            "kafka.statistics_interval_ms",
            "must be at least 1",
        )?;
        check(
            k.max_payload_bytes >= 4096,
            "kafka.max_payload_bytes",
            "must be at least 4096 (a smaller limit would dead-letter ordinary hits)",
        )?;
        for name in [
            "enable.auto.commit",
            "enable.auto.offset.store",
            "group.id",
            "bootstrap.servers",
        ] {
            // Committing after storing is the sink's guarantee; the others have named settings.
            check(
                !k.properties.contains_key(name),
                &format!("kafka.properties.{name}"),
                "is set by the sink itself and cannot be passed through",
            )?;
        }
        let c = &self.clickhouse;
        check(
            c.url.starts_with("http://") || c.url.starts_with("https://"),
            "clickhouse.url",
            "must start with http:// or https://",
        )?;
        check(
            !c.database.is_empty() && identifier(&c.database),
            "clickhouse.database",
            "must be letters, digits or '_'",
        )?;
        check(
            identifier(&c.table_prefix),
            "clickhouse.table_prefix",
            "must be letters, digits or '_'",
        )?;
        check(
            identifier(&c.cluster),
            "clickhouse.cluster",
            "must be letters, digits or '_'",
        )?;
        check(
            c.hits_daily_retention_days == 0
                || (c.hits_hourly_retention_days > 0
                    && c.hits_daily_retention_days >= c.hits_hourly_retention_days),
            "clickhouse.hits_daily_retention_days",
            "must be 0 (forever) or at least clickhouse.hits_hourly_retention_days: the daily rollup is the one kept longer",
        )?;
        check(
            c.insert_timeout_ms > 0,
            "clickhouse.insert_timeout_ms",
            "must be at least 1",
        )?;
        check(
            self.enrich.ua_cache_entries > 0,
            "enrich.ua_cache_entries",
            "must be at least 1",
        )?;
        let b = &self.batch;
        check(b.max_rows > 0, "batch.max_rows", "must be at least 1")?;
        check(b.max_bytes > 0, "batch.max_bytes", "must be at least 1")?;
        check(b.max_age_ms > 0, "batch.max_age_ms", "must be at least 1")?;
        let r = &self.retry;
        check(
            r.initial_backoff_ms > 0,
            "retry.initial_backoff_ms",
            "must be at least 1",
        )?;
        check(
            r.max_backoff_ms >= r.initial_backoff_ms,
            "retry.max_backoff_ms",
            "must be at least retry.initial_backoff_ms",
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(sets: &[(&str, &str)]) -> Result<SinkConfig, ConfigError> {
        let sets: Vec<_> = sets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SinkConfig::load(None, Vec::new(), &sets)
    }

    #[test]
    fn defaults_and_layers() {
        let c = load(&[]).unwrap();
        assert_eq!((c.batch.max_rows, c.batch.max_age_ms), (50_000, 1_000));
        assert_eq!(c.dead_letter_topic(), "pixelpipe.hits.dlq");
        let env = vec![(
            "PIXELPIPE_KAFKA__PROPERTIES__SESSION_TIMEOUT_MS".to_string(),
            "9000".to_string(),
        )];
        let c = SinkConfig::load(
            None,
            env,
            &[("clickhouse.table_prefix".into(), "t1_".into())],
        )
        .unwrap();
        assert_eq!(c.kafka.properties["session.timeout.ms"], "9000");
        assert_eq!(c.clickhouse.table_prefix, "t1_");
    }

    #[test]
    fn errors_name_the_setting() {
        for (setting, value) in [
            ("clickhouse.table_prefix", "bad-prefix"),
            ("clickhouse.database", "a;drop"),
            ("clickhouse.cluster", "two words"),
            ("clickhouse.url", "127.0.0.1:8123"),
            ("batch.max_rows", "0"),
            ("kafka.max_payload_bytes", "1000"),
            ("clickhouse.insert_timeout_ms", "0"),
            ("clickhouse.hits_daily_retention_days", "10"),
            ("retry.max_backoff_ms", "1"),
            ("kafka.dead_letter_topic", "pixelpipe.hits"),
            ("kafka.properties.enable.auto.commit", "true"),
        ] {
            let e = load(&[(setting, value)]).unwrap_err().to_string();
            assert!(e.contains(setting), "{setting}: {e}");
        }
        // The hourly rollup kept forever and the daily one not: the daily is the long-lived one.
        let e = load(&[
            ("clickhouse.hits_hourly_retention_days", "0"),
            ("clickhouse.hits_daily_retention_days", "3000"),
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("clickhouse.hits_daily_retention_days"), "{e}");
        load(&[
            ("clickhouse.hits_hourly_retention_days", "0"),
            ("clickhouse.hits_daily_retention_days", "0"),
        ])
        .unwrap();
        let e = load(&[("batch.max_age_ms", "soon")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch.max_age_ms"), "{e}");
        let e = load(&[("enrich.datacenter_asns", "16509, x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("enrich.datacenter_asns"), "{e}");
    }

    #[test]
    fn number_lists_come_from_the_environment_as_numbers() {
        let env = vec![(
            "PIXELPIPE_ENRICH__DATACENTER_ASNS".to_string(),
            "16509, 15169".to_string(),
        )];
        let c = SinkConfig::load(None, env, &[]).unwrap();
        assert_eq!(c.enrich.datacenter_asns, vec![16509, 15169]);
    }

    #[test]
    fn every_setting_is_in_the_configuration_reference() {
        let doc = include_str!("../../docs/configuration-sink.md");
        let table = toml::Table::try_from(SinkConfig::default()).unwrap();
        let missing: Vec<String> = table
            .iter()
            .flat_map(|(section, v)| {
                v.as_table()
                    .unwrap()
                    .keys()
                    .map(move |f| format!("{section}.{f}"))
            })
            .filter(|name| !doc.contains(&format!("`{name}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "docs/configuration-sink.md lacks {missing:?}"
        );
    }
}
