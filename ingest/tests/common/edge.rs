//! An edge running in-process against the real broker, and its test configurations. The broker
//! and HTTP helpers it uses are `kafka`'s (a sibling module wherever this file is included).
#![allow(dead_code)]
// Test helpers: a failed step should panic with its location, like an assertion.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pixelpipe_ingest::config::{Config, KafkaConfig};
use pixelpipe_ingest::kafka::KafkaProducer;
use pixelpipe_ingest::produce::SharedProducer;
use pixelpipe_ingest::{run_with_producer, Listeners, Report};
use tokio::sync::oneshot;

use super::kafka::{brokers, http};

/// An edge running on 127.0.0.1 ports of its own.
pub struct RunningEdge {
    pub public: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<pixelpipe_ingest::Result<Report>>,
}

/// A config for tests: loopback ports, the test broker, the given topic, short timeouts.
pub fn test_config(topic: &str) -> Config {
    let mut c = Config {
        edge_id: "it-edge".into(),
        ..Config::default()
    };
    c.http.listen_addr = "127.0.0.1:0".parse().unwrap();
    c.admin.listen_addr = "127.0.0.1:0".parse().unwrap();
    c.kafka.brokers = brokers();
    c.kafka.topic = topic.to_owned();
    c.kafka.linger_ms = 5;
    c.kafka.statistics_interval_ms = 200;
    c.spool.dir = spool_dir();
    // Tests of what a hit carries see raw values; privacy tests set their own policy.
    c.privacy.ip_mode = pixelpipe_ingest::privacy::IpMode::Full;
    c.privacy.gpc = pixelpipe_ingest::privacy::SignalPolicy::Ignore;
    c.privacy.dnt = pixelpipe_ingest::privacy::SignalPolicy::Ignore;
    c
}

/// A fresh spool directory for one test edge, under the target directory's tmp (cargo removes
/// nothing there, so the names are unique per process and edge).
pub fn spool_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "spool-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The secret of [`privacy_config`].
pub const HASH_SECRET: &str = "test-secret-0123456789";

/// An edge with the default privacy policy (truncate; GPC and DNT anonymous) and per-site
/// overrides: `p-full` keeps the IP, `p-hash` hashes it, `p-drop` drops it, `p-gpcdrop` drops
/// hits with `Sec-GPC: 1`. 127.0.0.1 is a trusted proxy so tests can choose the client IP. The
/// MaxMind test databases are loaded.
pub fn privacy_config(topic: &str) -> Config {
    use pixelpipe_ingest::privacy::{IpMode, PrivacyConfig, SignalPolicy, SitePrivacy};
    let mut c = test_config(topic);
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../ingest/tests/data/geoip");
    c.geoip.city_db_path = format!("{data}/GeoIP2-City-Test.mmdb");
    c.geoip.asn_db_path = format!("{data}/GeoLite2-ASN-Test.mmdb");
    c.http.trusted_proxies = vec!["127.0.0.1".into()];
    c.privacy = PrivacyConfig {
        hash_secret: HASH_SECRET.into(),
        ..PrivacyConfig::default()
    };
    let site = |ip_mode, gpc| SitePrivacy {
        ip_mode,
        gpc,
        ..SitePrivacy::default()
    };
    c.privacy
        .sites
        .insert("p-full".into(), site(Some(IpMode::Full), None));
    c.privacy
        .sites
        .insert("p-hash".into(), site(Some(IpMode::Hash), None));
    c.privacy
        .sites
        .insert("p-drop".into(), site(Some(IpMode::Drop), None));
    c.privacy
        .sites
        .insert("p-gpcdrop".into(), site(None, Some(SignalPolicy::Drop)));
    c
}

/// A privacy case: name, site, extra headers.
type PrivacyCase = (
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);

/// The client IP [`send_privacy_hits`] claims through the trusted proxy. In the test databases'
/// source JSON: 214.78.120.0/22 is US, CA, San Diego, and AS721 "DoD Network Information Center".
pub const PRIVACY_CLIENT_IP: &str = "214.78.120.5";

/// One pixel per case, tagged `case=<name>`: `trunc`, `full`, `hash`, `drop`, `gpc` (GPC, default
/// anonymous), `dnt` (DNT, default anonymous) and `gpcdrop` (GPC on a site that drops it; never
/// stored), `optout` (the opt-out cookie; dropped by default) and `noconsent` (`consent=0`;
/// anonymous by default). Returns the cases that must be stored.
pub fn send_privacy_hits(addr: SocketAddr) -> Vec<&'static str> {
    let cases: [PrivacyCase; 9] = [
        ("trunc", "p-trunc", &[]),
        ("full", "p-full", &[]),
        ("hash", "p-hash", &[]),
        ("drop", "p-drop", &[]),
        ("gpc", "p-trunc", &[("Sec-GPC", "1")]),
        ("dnt", "p-full", &[("DNT", "1")]),
        ("gpcdrop", "p-gpcdrop", &[("Sec-GPC", "1")]),
        ("optout", "p-full", &[("Cookie", "pixelpipe_optout=1")]),
        ("noconsent", "p-full", &[]),
    ];
    for (case, site, extra) in cases {
        let mut headers = vec![
            ("X-Forwarded-For", PRIVACY_CLIENT_IP),
            ("User-Agent", "UA-test"),
        ];
        headers.extend_from_slice(extra);
        let consent = if case == "noconsent" {
            "&consent=0"
        } else {
            ""
        };
        let r = http(
            addr,
            "GET",
            &format!("/p.gif?site={site}&uid=u-1&case={case}{consent}"),
            &headers,
            b"",
        );
        assert_eq!(r.status, 200, "{case}");
    }
    vec!["trunc", "full", "hash", "drop", "gpc", "dnt", "noconsent"]
}

impl RunningEdge {
    pub fn start(config: Config) -> RunningEdge {
        let kafka = config.kafka.clone();
        RunningEdge::start_with_producer(config, kafka)
    }

    /// [`RunningEdge::start`] with a producer built from `kafka` rather than the edge's own
    /// (validated) `[kafka]` settings: for a broker whose limits differ from what the edge was
    /// told.
    pub fn start_with_producer(config: Config, kafka: KafkaConfig) -> RunningEdge {
        let listeners = Listeners::bind(&config).expect("bind");
        let public = listeners.public_addr().unwrap();
        let admin = listeners.admin.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(run_with_producer(
            config,
            listeners,
            move |_, ledger| {
                let producer: SharedProducer = Arc::new(KafkaProducer::new(&kafka, ledger)?);
                Ok(producer)
            },
            async {
                let _ = stopped.await;
            },
        ));
        RunningEdge {
            public,
            admin,
            stop: Some(stop),
            task,
        }
    }

    /// Signals shutdown and waits for the report.
    pub async fn shutdown(mut self) -> Report {
        let _ = self.stop.take().unwrap().send(());
        self.task.await.expect("edge task").expect("edge run")
    }

    /// Polls `/readyz` until it answers `want` (true = 200).
    pub async fn wait_ready(&self, want: bool, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let addr = self.public;
            let r = tokio::task::spawn_blocking(move || http(addr, "GET", "/readyz", &[], b""))
                .await
                .unwrap();
            if (r.status == 200) == want {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Polls one series until it reads `want`; false when `timeout` passes first.
    pub async fn wait_metric(&self, series: &str, want: f64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.metric(series).await != Some(want) {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }

    /// One series' value from `/metrics`, e.g. `pixelpipe_ingest_kafka_delivered_total`.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let addr = self.admin;
        let r = tokio::task::spawn_blocking(move || http(addr, "GET", "/metrics", &[], b""))
            .await
            .unwrap();
        let text = String::from_utf8(r.body).unwrap();
        text.lines().find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }
}
