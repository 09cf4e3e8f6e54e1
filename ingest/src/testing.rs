//! Fixtures for tests and benches (feature `test-util`): a ledger over a spool in a directory of
//! its own, removed when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::MessageKey;
use crate::geo::Geo;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::privacy::{IpMode, Privacy, PrivacyConfig, SignalPolicy};
use crate::spool::{Spool, SpoolConfig};

/// A spool in a fresh temporary directory, its ledger and metrics.
pub struct TempLedger {
    dir: PathBuf,
    ledger: Arc<Ledger>,
}

impl TempLedger {
    /// With the default spool settings.
    pub fn new() -> TempLedger {
        TempLedger::with(|_| {})
    }

    /// With settings changed by `adjust` (its `dir` is set here).
    pub fn with(adjust: impl FnOnce(&mut SpoolConfig)) -> TempLedger {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "pixelpipe-spool-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = SpoolConfig {
            dir: dir.clone(),
            ..SpoolConfig::default()
        };
        adjust(&mut config);
        let metrics = Metrics::new();
        let spool = Spool::open(&config, metrics.clone()).expect("temporary spool opens");
        TempLedger {
            ledger: Arc::new(Ledger::new(Arc::new(spool), metrics)),
            dir,
        }
    }

    /// The ledger.
    pub fn ledger(&self) -> Arc<Ledger> {
        self.ledger.clone()
    }

    /// Its spool.
    pub fn spool(&self) -> &Spool {
        self.ledger.spool()
    }

    /// Its metrics.
    pub fn metrics(&self) -> &Metrics {
        self.ledger.metrics()
    }

    /// The spool's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The public routes over this ledger, with a channel of `capacity_hits` (its receiving
    /// side returned) and a recording producer; `config` must be valid.
    pub fn edge(
        &self,
        config: &crate::Config,
        capacity_hits: usize,
    ) -> (
        crate::service::Edge,
        crossbeam_channel::Receiver<crate::wire::Hit>,
    ) {
        let (queue, rx) = crate::queue::HitQueue::new(
            capacity_hits,
            config.queue.high_water_percent,
            self.outbound(),
        );
        let edge = crate::service::Edge::new(
            config,
            queue,
            Arc::new(crate::produce::testing::RecordingProducer::default()),
            self.ledger(),
        )
        .expect("a valid config");
        (edge, rx)
    }

    /// An outbound with [`raw_privacy`], no GeoIP and visitor keys.
    pub fn outbound(&self) -> Outbound {
        self.outbound_with(MessageKey::Visitor, raw_privacy())
    }

    /// An outbound with the given key and privacy policy, no GeoIP.
    pub fn outbound_with(&self, message_key: MessageKey, privacy: PrivacyConfig) -> Outbound {
        Outbound {
            message_key,
            privacy: Privacy::new(privacy),
            geo: Arc::new(Geo::none()),
            ledger: self.ledger(),
        }
    }
}

/// Full IPs and every signal ignored: for tests about keys and delivery, not privacy.
pub fn raw_privacy() -> PrivacyConfig {
    PrivacyConfig {
        ip_mode: IpMode::Full,
        gpc: SignalPolicy::Ignore,
        dnt: SignalPolicy::Ignore,
        optout: SignalPolicy::Ignore,
        ..PrivacyConfig::default()
    }
}

impl Default for TempLedger {
    fn default() -> Self {
        TempLedger::new()
    }
}

impl Drop for TempLedger {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
