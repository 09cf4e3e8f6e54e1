//! What a hit becomes on its way out of the edge: its place looked up, the privacy policy
//! applied (exactly once, and before anything is written anywhere, the spool included), its
//! message key chosen and its wire bytes encoded, many hits to one buffer.
//!
//! Batchers use this for every hit; the queue uses it for a hit the channel could not take,
//! which goes straight to the spool. Nothing here sends or writes.

use std::ops::Range;
use std::sync::Arc;

use crate::config::MessageKey;
use crate::geo::Geo;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::privacy::{Privacy, Verdict};
use crate::produce::Origin;
use crate::wire::{self, Hit};

/// The preparation every outgoing hit goes through. Each batcher thread has its own clone: the
/// privacy policy caches the day's keys per thread.
#[derive(Clone)]
pub struct Outbound {
    /// Which bytes key each message.
    pub message_key: MessageKey,
    /// The privacy policy, applied to every hit before it is keyed and encoded.
    pub privacy: Privacy,
    /// GeoIP databases, looked up before the privacy policy minimises the address.
    pub geo: Arc<Geo>,
    /// Where hits Kafka did not take are written down.
    pub ledger: Arc<Ledger>,
}

impl Outbound {
    fn metrics(&self) -> &Metrics {
        self.ledger.metrics()
    }

    /// Looks up the place and applies the privacy policy, exactly once per hit (both read the
    /// full address, which the policy then minimises). Returns false for a hit the policy drops;
    /// it is counted.
    pub fn prepare(&self, hit: &mut Hit) -> bool {
        self.geo.enrich(hit);
        match self.privacy.apply(hit) {
            Verdict::Keep => true,
            Verdict::Drop(reason) => {
                self.metrics().dropped(reason);
                false
            }
        }
    }

    /// Appends a prepared hit's key and wire bytes to `out`.
    pub fn encode(&self, hit: &Hit, out: &mut Encoded) {
        let key_start = out.buf.len();
        let key = match self.message_key {
            MessageKey::None => false,
            MessageKey::Site => {
                out.buf.extend_from_slice(hit.site_id.as_bytes());
                true
            }
            MessageKey::Visitor => match (&hit.user_id, hit.client_ip) {
                (Some(uid), _) => {
                    out.buf.extend_from_slice(uid.as_bytes());
                    true
                }
                (None, Some(ip)) => {
                    use std::io::Write;
                    let _ = write!(out.buf, "{ip}");
                    true
                }
                (None, None) => false,
            },
        };
        let payload_start = out.buf.len();
        wire::encode(hit, &mut out.buf);
        out.messages.push((
            key.then_some(key_start..payload_start),
            payload_start..out.buf.len(),
        ));
    }

    /// A hit the channel could not take: prepared and encoded here, then spooled for replay.
    pub fn spill(&self, mut hit: Box<Hit>) {
        if self.prepare(&mut hit) {
            let mut one = Encoded::default();
            self.encode(&hit, &mut one);
            for (key, payload) in one.iter() {
                self.ledger.not_taken(Origin::Memory, key, payload);
            }
        }
    }
}

/// Encoded messages in one buffer: key and payload ranges per message.
#[derive(Debug, Default)]
pub struct Encoded {
    buf: Vec<u8>,
    messages: Vec<(Option<Range<usize>>, Range<usize>)>,
}

impl Encoded {
    /// Empties it, keeping the allocations.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.messages.clear();
    }

    /// How many messages it holds.
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Appends a message already encoded.
    #[cfg(test)]
    pub fn push(&mut self, key: Option<&[u8]>, payload: &[u8]) {
        let key_start = self.buf.len();
        if let Some(key) = key {
            self.buf.extend_from_slice(key);
        }
        let payload_start = self.buf.len();
        self.buf.extend_from_slice(payload);
        self.messages.push((
            key.map(|_| key_start..payload_start),
            payload_start..self.buf.len(),
        ));
    }

    /// The `i`th message's key and payload.
    ///
    /// # Panics
    /// When `i` is not below [`Encoded::len`].
    pub fn get(&self, i: usize) -> (Option<&[u8]>, &[u8]) {
        let (k, p) = &self.messages[i];
        (k.clone().map(|k| &self.buf[k]), &self.buf[p.clone()])
    }

    /// Each message's key and payload, in order.
    pub fn iter(&self) -> impl Iterator<Item = (Option<&[u8]>, &[u8])> + '_ {
        (0..self.messages.len()).map(|i| self.get(i))
    }
}
