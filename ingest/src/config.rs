//! The edge's one configuration struct, where its values come from, and its validation.
//!
//! Layers, later wins: built-in defaults, a TOML file, `PIXELPIPE_*` environment variables, then
//! command-line overrides (the mechanism is `pixelpipe_common::layers`, shared with the sink). The
//! structs below are the one list of settings.
//!
//! This module does not open sockets or clients; it only says what they should be.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use pixelpipe_common::layers::{self, check, ConfigError, Result};
use serde::{Deserialize, Serialize};

use crate::client_ip::{ClientIpHeader, TrustedProxies};
pub use crate::file_producer::FileConfig;
use crate::geo::GeoConfig;
use crate::hit;
pub use crate::hit::LimitsConfig;
use crate::links::LinksConfig;
use crate::privacy::PrivacyConfig;
pub use crate::spool::{Durability, SpoolConfig};

/// Everything the edge can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Name of this edge process, written into every hit. Default: the machine's host name.
    pub edge_id: String,
    /// The public HTTP listener.
    pub http: HttpConfig,
    /// Bounds on what one hit may carry.
    pub limits: LimitsConfig,
    /// The hand-over from request handlers to the batcher threads.
    pub queue: QueueConfig,
    /// Where hits go: `kafka` (default) or `file`, see [`Output`].
    pub output: Output,
    /// The Kafka producer (`output = "kafka"`).
    pub kafka: KafkaConfig,
    /// The file producer (`output = "file"`).
    pub file: FileConfig,
    /// The write-ahead spool for hits Kafka has not taken (docs/reliability.md).
    pub spool: SpoolConfig,
    /// The admin listener (metrics).
    pub admin: AdminConfig,
    /// What is kept of a visitor's identity (docs/privacy.md).
    pub privacy: PrivacyConfig,
    /// GeoIP databases for place and network lookups.
    pub geoip: GeoConfig,
    /// Signed links, conversions that must be signed, and click redirects.
    pub links: LinksConfig,
}

/// Where the batchers hand hits over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// A Kafka topic (`[kafka]`): what the sink reads.
    Kafka,
    /// JSON Lines files on local disk (`[file]`), one hit per line, rotated by size: for shipping
    /// with other tools, debugging, and measuring the edge alone.
    File,
}

/// The public HTTP listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Address for pixels, beacons and health checks. Default `0.0.0.0:8080`.
    pub listen_addr: SocketAddr,
    /// Open connections at most; further ones are closed at once and counted. Default 10000.
    pub max_connections: usize,
    /// Time a client has to send a complete request head, and also how long a keep-alive
    /// connection may sit idle (hyper starts this timer whenever it waits for a head): the
    /// slowloris guard. Default 10000.
    pub header_read_timeout_ms: u64,
    /// Largest request head (request line and headers) accepted; hyper needs at least 8192.
    /// Default 16384.
    pub max_header_bytes: usize,
    /// Time a client has to send a `/collect` body. Default 10000.
    pub body_read_timeout_ms: u64,
    /// Largest `/collect` body; larger ones get 413. Default 65536 (64 KiB).
    pub max_body_bytes: usize,
    /// Largest `/collect` body once its `Content-Encoding` (gzip, deflate) is undone; larger
    /// ones get 413, so a decompression bomb costs at most this. Default 262144 (256 KiB).
    pub max_decoded_body_bytes: usize,
    /// Events one `/collect` request may carry; a larger array gets 413 and its events are
    /// counted invalid (`too_many_events`). Default 200.
    pub max_events_per_request: usize,
    /// On shutdown, how long in-flight requests may take before their connections are cut.
    /// Default 5000.
    pub shutdown_grace_ms: u64,
    /// Peers (CIDRs such as `10.0.0.0/8`, or single addresses) whose `http.client_ip_header` is
    /// believed. Default none: the socket peer is the client.
    pub trusted_proxies: Vec<String>,
    /// The one header the trusted proxies write to name the client (`x-forwarded-for`,
    /// `forwarded` or `x-real-ip`, in any case); the others are the client's word and ignored.
    /// Default `x-forwarded-for`, what nearly every proxy and load balancer writes.
    pub client_ip_header: ClientIpHeader,
    /// Threads serving HTTP; 0 means one per CPU core. Default 0.
    pub worker_threads: usize,
    /// How those threads are arranged, see [`RuntimeLayout`]. Default `multi_thread`.
    pub runtime_layout: RuntimeLayout,
}

/// How the HTTP threads are arranged; chosen by measurement (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeLayout {
    /// One work-stealing tokio runtime with `worker_threads` threads and one listening socket.
    MultiThread,
    /// `worker_threads` single-threaded runtimes, each with its own `SO_REUSEPORT` socket on the
    /// same port; the kernel spreads connections, and no task ever moves between threads.
    PerCore,
}

/// The bounded channel between request handlers and batcher threads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Hits the channel holds; when full, the request handler writes the hit to the spool
    /// (`queue_spilled_total`) and the pixel is still served. Default 65536.
    pub capacity_hits: usize,
    /// `/readyz` reports not ready while the channel is at least this full. Default 80.
    pub high_water_percent: u8,
    /// Batcher threads draining the channel into the producer. Default 1.
    pub batcher_threads: usize,
    /// Hits a batcher takes from the channel per wake-up. Default 1024.
    pub batch_max_hits: usize,
    /// How long a batcher sleeps after each batch before it takes the next, so hits gather
    /// without waking it one by one (docs/benchmarks.md); delays delivery by as much, never the
    /// pixel. The batch it gathers is what the Kafka producer packs into messages, so this also
    /// sets how many hits a message carries at moderate rates. 0 takes each hit as it comes.
    /// Default 5.
    pub batch_linger_ms: u64,
}

/// Which bytes key a Kafka message, and so pick its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKey {
    /// The visitor: `uid=` when given, else the client IP. One visitor's hits stay in order on one
    /// partition, and many visitors spread over all partitions, even for one busy site.
    Visitor,
    /// The site id: one site's hits in one partition (a busy site can outgrow it).
    Site,
    /// No key: librdkafka's sticky partitioner fills larger batches; no ordering at all.
    None,
}

/// The Kafka producer. The named settings are the ones pixelpipe has an opinion on; anything
/// else librdkafka knows goes in `properties`, which win over the named ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap brokers, comma separated (`bootstrap.servers`). Default `127.0.0.1:9092`.
    pub brokers: String,
    /// Topic hits are produced to. Default `pixelpipe.hits`.
    pub topic: String,
    /// Message key, see [`MessageKey`]. Default `visitor`.
    pub message_key: MessageKey,
    /// `acks`: `all` so a hit counts as delivered only once every in-sync replica has it; a
    /// delivered hit then survives the loss of a broker. Default `all`.
    pub acks: String,
    /// `enable.idempotence`: librdkafka's retries cannot duplicate or reorder hits. Default true.
    pub enable_idempotence: bool,
    /// `compression.type`: lz4 is the cheapest codec per byte saved; JSON hits shrink several
    /// fold. Default `lz4`.
    pub compression: String,
    /// `linger.ms`: how long librdkafka waits to fill a batch. 20 ms costs a pixel nothing (the
    /// response never waits for Kafka) and makes batches large. Default 20.
    pub linger_ms: u64,
    /// `batch.size`: largest batch per partition, in bytes. Default 1000000.
    pub batch_size_bytes: usize,
    /// Hits the producer holds while waiting for brokers (also librdkafka's
    /// `queue.buffering.max.messages`, a message packing one hit or more). A hit over it goes to
    /// the spool. Sized with the channel so a broker hiccup is absorbed in memory. Default 200000.
    pub buffer_max_hits: usize,
    /// `queue.buffering.max.kbytes`: the bytes librdkafka holds, in KiB; with `buffer_max_hits`
    /// it bounds the producer's memory while Kafka is away (docs/operations.md). Default 65536
    /// (64 MiB; librdkafka's own default is 1 GiB).
    pub buffer_max_kbytes: usize,
    /// Largest packed message, in bytes: a batch's hits bound for one partition travel together
    /// in messages of up to this size (a hit larger than it travels alone). 0 sends one hit per
    /// message. Must not exceed the producer's `message.max.bytes`. Default 65536.
    pub pack_max_bytes: usize,
    /// `message.timeout.ms`: how long librdkafka keeps retrying one hit before it is counted
    /// failed and goes to the spool. Short, because the spool retries for as long as it takes
    /// and survives a crash that librdkafka's memory does not. Default 30000.
    pub message_timeout_ms: u64,
    /// `statistics.interval.ms`: how often librdkafka reports queue depth, broker round trip and
    /// broker state (which `/readyz` uses). Default 1000.
    pub statistics_interval_ms: u64,
    /// On shutdown, how long to wait for queued hits to be delivered. Default 10000.
    pub flush_timeout_ms: u64,
    /// Any other librdkafka producer property, passed through unchanged (SASL, TLS, client.id).
    pub properties: BTreeMap<String, String>,
}

/// The admin listener: metrics only, on loopback by default so it is never public by accident.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Address serving `GET /metrics`. Default `127.0.0.1:9090`.
    pub listen_addr: SocketAddr,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            edge_id: default_edge_id(),
            http: HttpConfig::default(),
            limits: LimitsConfig::default(),
            queue: QueueConfig::default(),
            output: Output::Kafka,
            kafka: KafkaConfig::default(),
            file: FileConfig::default(),
            spool: SpoolConfig::default(),
            admin: AdminConfig::default(),
            privacy: PrivacyConfig::default(),
            geoip: GeoConfig::default(),
            links: LinksConfig::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            max_connections: 10_000,
            header_read_timeout_ms: 10_000,
            max_header_bytes: 16_384,
            body_read_timeout_ms: 10_000,
            max_body_bytes: 64 * 1024,
            max_decoded_body_bytes: 256 * 1024,
            max_events_per_request: 200,
            shutdown_grace_ms: 5_000,
            trusted_proxies: Vec::new(),
            client_ip_header: ClientIpHeader::XForwardedFor,
            worker_threads: 0,
            runtime_layout: RuntimeLayout::MultiThread,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity_hits: 65_536,
            high_water_percent: 80,
            batcher_threads: 1,
            batch_max_hits: 1024,
            batch_linger_ms: 5,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            topic: "pixelpipe.hits".into(),
            message_key: MessageKey::Visitor,
            acks: "all".into(),
            enable_idempotence: true,
            compression: "lz4".into(),
            linger_ms: 20,
            batch_size_bytes: 1_000_000,
            buffer_max_hits: 200_000,
            buffer_max_kbytes: 65_536,
            pack_max_bytes: 65_536,
            message_timeout_ms: 30_000,
            statistics_interval_ms: 1_000,
            flush_timeout_ms: 10_000,
            properties: BTreeMap::new(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

fn default_edge_id() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "edge".to_owned())
}

impl Config {
    /// Builds the effective configuration from an optional TOML file, environment variables
    /// (only `PIXELPIPE_*` ones are read) and `path=value` overrides, then validates it.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &[(String, String)],
    ) -> Result<Config> {
        layers::load_validated(file, env, overrides)
    }

    /// HTTP threads to run: `http.worker_threads`, or one per core when it is 0.
    pub fn http_threads(&self) -> usize {
        match self.http.worker_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The configuration as TOML, for `--check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }
}

impl layers::Validate for Config {
    /// Checks every setting once, so a wrong one fails at start and says which it is.
    fn validate(&self) -> Result<()> {
        self.privacy.check()?;
        self.links.check()?;
        self.spool.check()?;
        self.file.check()?;
        check(
            self.output != Output::File || lexical(&self.file.dir) != lexical(&self.spool.dir),
            "file.dir",
            "must differ from spool.dir: each is locked by its own user",
        )?;
        check(
            !self.edge_id.trim().is_empty(),
            "edge_id",
            "must not be empty",
        )?;
        let h = &self.http;
        check(
            h.max_connections > 0,
            "http.max_connections",
            "must be at least 1",
        )?;
        check(
            h.header_read_timeout_ms > 0,
            "http.header_read_timeout_ms",
            "must be at least 1",
        )?;
        check(
            h.max_header_bytes >= 8192,
            "http.max_header_bytes",
            "must be at least 8192",
        )?;
        check(
            h.body_read_timeout_ms > 0,
            "http.body_read_timeout_ms",
            "must be at least 1",
        )?;
        check(
            h.max_decoded_body_bytes >= h.max_body_bytes,
            "http.max_decoded_body_bytes",
            "must be at least http.max_body_bytes",
        )?;
        check(
            h.max_events_per_request > 0,
            "http.max_events_per_request",
            "must be at least 1",
        )?;
        check(
            h.max_body_bytes > 0,
            "http.max_body_bytes",
            "must be at least 1",
        )?;
        TrustedProxies::parse(&h.trusted_proxies, h.client_ip_header)
            .map_err(|reason| ConfigError::setting("http.trusted_proxies", reason))?;
        check(
            h.listen_addr != self.admin.listen_addr || h.listen_addr.port() == 0,
            "admin.listen_addr",
            "must differ from http.listen_addr",
        )?;
        let l = &self.limits;
        check(
            l.max_query_bytes > 0,
            "limits.max_query_bytes",
            "must be at least 1",
        )?;
        check(l.max_params > 0, "limits.max_params", "must be at least 1")?;
        check(
            l.max_key_bytes > 0,
            "limits.max_key_bytes",
            "must be at least 1",
        )?;
        check(
            l.max_value_bytes >= 16,
            "limits.max_value_bytes",
            "must be at least 16",
        )?;
        let q = &self.queue;
        check(
            q.capacity_hits > 0,
            "queue.capacity_hits",
            "must be at least 1",
        )?;
        check(
            (1..=100).contains(&q.high_water_percent),
            "queue.high_water_percent",
            "must be between 1 and 100",
        )?;
        check(
            q.batcher_threads > 0,
            "queue.batcher_threads",
            "must be at least 1",
        )?;
        check(
            q.batch_linger_ms <= 1000,
            "queue.batch_linger_ms",
            "must be at most 1000",
        )?;
        check(
            q.batch_max_hits > 0,
            "queue.batch_max_hits",
            "must be at least 1",
        )?;
        let k = &self.kafka;
        check(
            !k.brokers.trim().is_empty(),
            "kafka.brokers",
            "must name at least one broker",
        )?;
        check(
            valid_topic(&k.topic),
            "kafka.topic",
            "must be 1-249 characters of ASCII letters, digits, '.', '_' or '-'",
        )?;
        check(
            ["0", "1", "all", "-1"].contains(&k.acks.as_str()),
            "kafka.acks",
            "must be 0, 1, all or -1",
        )?;
        check(
            ["none", "gzip", "snappy", "lz4", "zstd"].contains(&k.compression.as_str()),
            "kafka.compression",
            "must be none, gzip, snappy, lz4 or zstd",
        )?;
        check(
            k.linger_ms <= 900_000,
            "kafka.linger_ms",
            "must be at most 900000",
        )?;
        check(
            k.batch_size_bytes > 0,
            "kafka.batch_size_bytes",
            "must be at least 1",
        )?;
        check(
            (1..=10_000_000).contains(&k.buffer_max_hits),
            "kafka.buffer_max_hits",
            "must be between 1 and 10000000 (librdkafka's bound)",
        )?;
        check(
            k.message_timeout_ms > 0,
            "kafka.message_timeout_ms",
            "must be at least 1",
        )?;
        check(
            k.statistics_interval_ms > 0,
            "kafka.statistics_interval_ms",
            "must be at least 1 (readiness needs broker state)",
        )?;
        // librdkafka refuses a message over its `message.max.bytes` (default 1000000) before it
        // is sent; the edge would have answered its pixel and then could only drop it.
        let max_message_bytes = match k.properties.get("message.max.bytes") {
            None => LIBRDKAFKA_MESSAGE_MAX_BYTES,
            Some(v) => v.trim().parse::<usize>().map_err(|_| {
                ConfigError::setting(
                    "kafka.properties.message.max.bytes",
                    "must be a number of bytes",
                )
            })?,
        };
        check(
            (1..=2_097_151).contains(&k.buffer_max_kbytes),
            "kafka.buffer_max_kbytes",
            "must be between 1 and 2097151 (librdkafka's range for queue.buffering.max.kbytes)",
        )?;
        if self.output == Output::Kafka && k.pack_max_bytes > max_message_bytes {
            return Err(ConfigError::setting(
                "kafka.pack_max_bytes",
                format!(
                    "{} is over the producer's message.max.bytes ({max_message_bytes}): a packed \
                     message would be refused; lower it, or raise kafka.properties.\"message.max.bytes\" \
                     (and the broker's message.max.bytes and the topic's max.message.bytes with it)",
                    k.pack_max_bytes
                ),
            ));
        }
        // A pack holds up to a batch's hits and `pack_max_bytes`; a producer buffer smaller than
        // one pack would refuse every full pack, sending its hits to the spool for good.
        if self.output == Output::Kafka && k.pack_max_bytes > 0 {
            check(
                k.buffer_max_hits >= self.queue.batch_max_hits,
                "kafka.buffer_max_hits",
                &format!(
                    "must be at least queue.batch_max_hits ({}) while packing is on: a packed message \
                     can hold a whole batch",
                    self.queue.batch_max_hits
                ),
            )?;
            check(
                k.buffer_max_kbytes.saturating_mul(1024) >= k.pack_max_bytes,
                "kafka.buffer_max_kbytes",
                &format!(
                    "must hold at least one packed message (kafka.pack_max_bytes = {} bytes)",
                    k.pack_max_bytes
                ),
            )?;
        }
        let largest = hit::largest_message_bytes(l, &self.edge_id);
        if self.output == Output::Kafka && largest > max_message_bytes {
            return Err(ConfigError::setting(
                "limits.max_params",
                format!(
                    "with limits.max_key_bytes {} and limits.max_value_bytes {}, one hit can take \
                     {largest} bytes on Kafka, over the producer's message.max.bytes \
                     ({max_message_bytes}); lower these limits, or raise \
                     kafka.properties.\"message.max.bytes\" (a string in TOML, e.g. \"2000000\"; and the broker's message.max.bytes \
                     and the topic's max.message.bytes with it)",
                    l.max_key_bytes, l.max_value_bytes
                ),
            ));
        }
        for name in k.properties.keys() {
            check(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.'),
                &format!("kafka.properties.{name}"),
                "is not a librdkafka property name",
            )?;
        }
        Ok(())
    }
}

/// `path` with `.` dropped and `..` folded into its parent, without touching the disk (the
/// directories may not exist yet): `/a/./b/../b` and `/a/b` are one directory. A symbolic link
/// can still hide that two paths are one; the directory lock catches that at start.
fn lexical(path: &Path) -> std::path::PathBuf {
    use std::path::Component;
    let mut out = std::path::PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if out.file_name().is_some() => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// librdkafka's default `message.max.bytes` (CONFIGURATION.md of librdkafka 2.x).
const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;

fn valid_topic(t: &str) -> bool {
    (1..=249).contains(&t.len())
        && t != "."
        && t != ".."
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(env: &[(&str, &str)], sets: &[(&str, &str)]) -> Result<Config> {
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        let sets: Vec<_> = sets
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load(None, env, &sets)
    }

    fn err_text(r: Result<Config>) -> String {
        r.unwrap_err().to_string()
    }

    /// A hit that cannot fit a Kafka message is refused at start, naming the limits and
    /// `message.max.bytes`; raising `message.max.bytes` (or lowering the limits) fixes it.
    #[test]
    fn a_hit_larger_than_a_kafka_message_is_refused_at_start() {
        let e = err_text(load(&[], &[("limits.max_value_bytes", "20000")]));
        for named in [
            "limits.max_params",
            "limits.max_value_bytes 20000",
            "message.max.bytes (1000000)",
        ] {
            assert!(e.contains(named), "{named}: {e}");
        }
        let raised = [
            ("limits.max_value_bytes", "20000"),
            ("kafka.properties.message.max.bytes", "20000000"),
        ];
        assert!(load(&[], &raised).is_ok());
        let e = err_text(load(&[], &[("kafka.properties.message.max.bytes", "1MB")]));
        assert!(e.contains("kafka.properties.message.max.bytes"), "{e}");
        let e = err_text(load(
            &[],
            &[("kafka.properties.message.max.bytes", "100000")],
        ));
        assert!(e.contains("message.max.bytes (100000)"), "{e}");
    }

    #[test]
    fn defaults_are_valid() {
        let c = load(&[], &[]).unwrap();
        assert_eq!(c.kafka.linger_ms, 20);
        assert_eq!(c.http.max_body_bytes, 65536);
        assert_eq!(c.kafka.acks, "all");
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = std::env::temp_dir().join(format!("pp-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("edge.toml");
        std::fs::write(&file, "edge_id = \"from-file\"\n[kafka]\nlinger_ms = 7\ntopic = \"t-file\"\n[kafka.properties]\n\"client.id\" = \"file\"\n").unwrap();
        let env = vec![
            ("PIXELPIPE_KAFKA__TOPIC".to_string(), "t-env".to_string()),
            (
                "PIXELPIPE_KAFKA__PROPERTIES__SASL_MECHANISMS".to_string(),
                "PLAIN".to_string(),
            ),
            (
                "PIXELPIPE_HTTP__TRUSTED_PROXIES".to_string(),
                "10.0.0.0/8, 192.168.1.1".to_string(),
            ),
            ("UNRELATED".to_string(), "x".to_string()),
        ];
        let sets = vec![("kafka.topic".to_string(), "t-flag".to_string())];
        let c = Config::load(Some(&file), env, &sets).unwrap();
        assert_eq!(c.edge_id, "from-file");
        assert_eq!(c.kafka.linger_ms, 7);
        assert_eq!(c.kafka.topic, "t-flag");
        assert_eq!(c.kafka.properties["client.id"], "file");
        assert_eq!(c.kafka.properties["sasl.mechanisms"], "PLAIN");
        assert_eq!(c.http.trusted_proxies, vec!["10.0.0.0/8", "192.168.1.1"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn numeric_looking_strings_stay_strings() {
        let c = load(&[("PIXELPIPE_KAFKA__TOPIC", "123")], &[]).unwrap();
        assert_eq!(c.kafka.topic, "123");
        let c = load(&[], &[("kafka.properties.sasl.mechanisms", "PLAIN")]).unwrap();
        assert_eq!(c.kafka.properties["sasl.mechanisms"], "PLAIN");
    }

    #[test]
    fn errors_name_the_setting() {
        let e = err_text(load(&[("PIXELPIPE_KAFKA__LINGER_MS", "soon")], &[]));
        assert!(
            e.contains("kafka.linger_ms") && e.contains("PIXELPIPE_KAFKA__LINGER_MS"),
            "{e}"
        );
        let e = err_text(load(
            &[],
            &[
                ("kafka.buffer_max_hits", "100"),
                ("queue.batch_max_hits", "1024"),
            ],
        ));
        assert!(
            e.contains("kafka.buffer_max_hits") && e.contains("1024"),
            "{e}"
        );
        let e = err_text(load(
            &[],
            &[
                ("kafka.buffer_max_kbytes", "16"),
                ("kafka.pack_max_bytes", "65536"),
            ],
        ));
        assert!(e.contains("kafka.buffer_max_kbytes"), "{e}");
        let unpacked = load(
            &[],
            &[
                ("kafka.buffer_max_hits", "100"),
                ("kafka.pack_max_bytes", "0"),
            ],
        );
        assert!(unpacked.is_ok(), "without packing a pack needs no room");
        let e = err_text(load(&[], &[("queue.capacity_hits", "0")]));
        assert!(e.contains("queue.capacity_hits"), "{e}");
        let e = err_text(load(&[], &[("kafka.topic", "bad topic")]));
        assert!(e.contains("kafka.topic"), "{e}");
        let e = err_text(load(&[], &[("http.trusted_proxies", "10.0.0.0/33")]));
        assert!(
            e.contains("http.trusted_proxies") && e.contains("10.0.0.0/33"),
            "{e}"
        );
        let e = err_text(load(&[], &[("kafka.acks", "some")]));
        assert!(e.contains("kafka.acks"), "{e}");
        let e = err_text(load(&[], &[("http.max_header_bytes", "100")]));
        assert!(e.contains("http.max_header_bytes"), "{e}");
        let e = err_text(load(&[], &[("queue.high_water_percent", "0")]));
        assert!(e.contains("queue.high_water_percent"), "{e}");
        let e = err_text(load(&[], &[("kafka.properties.Bad_Name", "x")]));
        assert!(e.contains("kafka.properties.Bad_Name"), "{e}");
        let e = err_text(load(&[], &[("http", "x")]));
        assert!(e.contains("http") && e.contains("section"), "{e}");
        // A value of the wrong variant, deep in the tree, is named by its path too.
        for (setting, value) in [
            ("spool.durability", "Disk"),
            ("kafka.message_key", "bogus"),
            ("privacy.ip_mode", "bogus"),
            ("http.client_ip_header", "X-Client-IP"),
        ] {
            let e = err_text(load(&[], &[(setting, value)]));
            assert!(
                e.contains(&format!("`{setting}`")) && e.contains("unknown variant"),
                "{e}"
            );
        }
    }

    /// Header names are case-insensitive (RFC 9110 §5.1), so the setting is too.
    #[test]
    fn client_ip_header_names_a_header_in_any_case() {
        use crate::client_ip::ClientIpHeader as H;
        assert_eq!(
            load(&[], &[]).unwrap().http.client_ip_header,
            H::XForwardedFor
        );
        for (value, want) in [
            ("x-forwarded-for", H::XForwardedFor),
            ("X-Forwarded-For", H::XForwardedFor),
            ("forwarded", H::Forwarded),
            ("Forwarded", H::Forwarded),
            ("x-real-ip", H::XRealIp),
            ("X-Real-IP", H::XRealIp),
            ("X-REAL-IP", H::XRealIp),
        ] {
            let c = load(&[("PIXELPIPE_HTTP__CLIENT_IP_HEADER", value)], &[]).unwrap();
            assert_eq!(c.http.client_ip_header, want, "{value}");
            let c = load(&[], &[("http.client_ip_header", value)]).unwrap();
            assert_eq!(c.http.client_ip_header, want, "{value}");
        }
        // Printed in the form it is documented in, and read back.
        let c = load(&[], &[("http.client_ip_header", "X-Real-IP")]).unwrap();
        assert!(c.to_toml().contains("client_ip_header = \"x-real-ip\""));
        for bad in ["x_real_ip", "X-Client-IP", ""] {
            let e = err_text(load(&[("PIXELPIPE_HTTP__CLIENT_IP_HEADER", bad)], &[]));
            assert!(
                e.contains("http.client_ip_header") && e.contains("x-real-ip"),
                "the error names the setting and the values it takes: {e}"
            );
        }
    }

    /// The spool and the file producer each lock their directory, so one directory for both
    /// would fail at start as "in use"; it is refused here, naming what to change.
    #[test]
    fn the_file_output_needs_a_directory_of_its_own() {
        let same = [
            ("output", "file"),
            ("file.dir", "/tmp/pixelpipe-x"),
            ("spool.dir", "/tmp/pixelpipe-x/"),
        ];
        let e = err_text(load(&[], &same));
        assert!(e.contains("file.dir") && e.contains("spool.dir"), "{e}");
        assert!(load(&[], &same[1..]).is_ok(), "only with output = file");
        let dotted = [
            ("output", "file"),
            ("file.dir", "/tmp/pixelpipe-x"),
            ("spool.dir", "/tmp/./pixelpipe-x/../pixelpipe-x"),
        ];
        let e = err_text(load(&[], &dotted));
        assert!(e.contains("file.dir") && e.contains("spool.dir"), "{e}");
    }

    #[test]
    fn unknown_settings_are_rejected_by_name() {
        let e = err_text(load(&[("PIXELPIPE_KAFKA__LINGER", "5")], &[]));
        assert!(e.contains("linger"), "{e}");
        let e = err_text(load(&[], &[("nope", "5")]));
        assert!(e.contains("nope"), "{e}");
    }

    #[test]
    fn bad_file_is_named() {
        let missing = Path::new("/nonexistent/pixelpipe.toml");
        let e = Config::load(Some(missing), Vec::new(), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/pixelpipe.toml"), "{e}");
    }

    #[test]
    fn printed_config_loads_back_identical() {
        let c = load(
            &[],
            &[("kafka.properties.client.id", "x"), ("edge_id", "e1")],
        )
        .unwrap();
        let dir = std::env::temp_dir().join(format!("pp-cfg2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("printed.toml");
        std::fs::write(&file, c.to_toml()).unwrap();
        assert_eq!(Config::load(Some(&file), Vec::new(), &[]).unwrap(), c);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn every_setting_is_in_the_configuration_reference() {
        let doc = include_str!("../../docs/configuration.md");
        let table = toml::Table::try_from(Config::default()).unwrap();
        let mut missing = Vec::new();
        for (key, value) in &table {
            match value {
                toml::Value::Table(section) => {
                    for field in section.keys() {
                        let name = format!("{key}.{field}");
                        if !doc.contains(&format!("`{name}`")) {
                            missing.push(name);
                        }
                    }
                }
                _ if !doc.contains(&format!("`{key}`")) => missing.push(key.clone()),
                _ => {}
            }
        }
        assert!(
            missing.is_empty(),
            "docs/configuration.md lacks {missing:?}"
        );
    }
}
