//! Fixtures for tests and benches (feature `test-util`): a ledger over a spool in a directory of
//! its own, removed when dropped, and a producer that records what it is sent.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::produce::{BufferFull, DeliveryFailure, HitProducer, Origin};

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
        crossbeam_channel::Receiver<Box<crate::wire::Hit>>,
    ) {
        let (queue, rx) = crate::queue::HitQueue::new(
            capacity_hits,
            config.queue.high_water_percent,
            self.outbound(),
        );
        let edge = crate::service::Edge::new(
            config,
            queue,
            Arc::new(RecordingProducer::default()),
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

/// A message as the producer saw it: key and payload.
pub type Sent = (Option<Vec<u8>>, Vec<u8>);

/// Records what it is sent, and can pretend to be full or failing. Always connected. With a
/// ledger attached ([`RecordingProducer::report_to`]) every taken message is reported
/// delivered at once, or failed while `failing` is set. The edge alone, without the
/// batchers, never calls `send`, so benches of the request path pay nothing for it.
#[derive(Default)]
pub struct RecordingProducer {
    /// Every message delivered, in order.
    pub sent: Mutex<Vec<Sent>>,
    /// While true, `send` answers [`BufferFull`].
    pub full: AtomicBool,
    /// While true, every message taken is reported failed (`other`).
    pub failing: AtomicBool,
    /// How many sends were refused as full.
    pub refused: AtomicUsize,
    ledger: OnceLock<Arc<Ledger>>,
}

impl RecordingProducer {
    /// Reports outcomes to `ledger` from now on.
    pub fn report_to(&self, ledger: Arc<Ledger>) {
        let _ = self.ledger.set(ledger);
    }
}

impl HitProducer for RecordingProducer {
    fn send(&self, key: Option<&[u8]>, payload: &[u8], origin: Origin) -> Result<(), BufferFull> {
        if self.full.load(Ordering::SeqCst) {
            self.refused.fetch_add(1, Ordering::SeqCst);
            return Err(BufferFull);
        }
        if self.failing.load(Ordering::SeqCst) {
            if let Some(ledger) = self.ledger.get() {
                ledger.failed(origin, key, payload, DeliveryFailure::Other);
            }
            return Ok(());
        }
        self.sent
            .lock()
            .expect("not poisoned")
            .push((key.map(<[u8]>::to_vec), payload.to_vec()));
        if let Some(ledger) = self.ledger.get() {
            ledger.delivered(origin, Instant::now(), 1);
        }
        Ok(())
    }
    fn flush(&self, _timeout: Duration) {}
    fn connected(&self) -> bool {
        true
    }
}
