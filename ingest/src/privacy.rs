//! What is kept of a visitor's identity before a hit leaves the edge: IP minimisation, and the
//! server-side answer to `Sec-GPC: 1` and `DNT: 1`, per site with a global default.
//!
//! Runs in the batcher threads, never on the request path, and before the hit is encoded or keyed,
//! so a raw IP the policy does not keep never reaches Kafka. This module owns the policy and its
//! arithmetic (prefix masks, keyed hashes with a daily salt); it does not count or produce (see
//! `batcher`). Every choice is explained in docs/privacy.md.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hmac::{Hmac, KeyInit, Mac};
use pixelpipe_common::classes;
use pixelpipe_common::layers::{check, ConfigError};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::hit::DropReason;
use crate::wire::Hit;

/// What is kept of the client IP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IpMode {
    /// The address as received.
    Full,
    /// The network only: the host bits past `ipv4_prefix_bits` / `ipv6_prefix_bits` are zeroed.
    Truncate,
    /// No address; `ip_hash` carries a keyed hash of it, whose salt changes every UTC day, so
    /// the same visitor matches within a day and cannot be followed across days.
    Hash,
    /// No address at all.
    Drop,
}

/// The answer to a privacy signal (`Sec-GPC: 1`, `DNT: 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalPolicy {
    /// Treat the hit like any other.
    Ignore,
    /// Count the hit but keep nothing that identifies the visitor: no IP (nor its hash), no
    /// user id, no user agent, no region, city or network (the country stays); the hit is
    /// marked `anonymized`, and keeps only the class its user agent, or its absence, gave
    /// (`user_agent_class`, see `pixelpipe_common::classes`).
    Anonymous,
    /// Do not store the hit; it is counted as dropped with the signal as reason.
    Drop,
}

/// Overrides for one site; absent fields take the global value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SitePrivacy {
    /// Overrides `privacy.ip_mode`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip_mode: Option<IpMode>,
    /// Overrides `privacy.gpc`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpc: Option<SignalPolicy>,
    /// Overrides `privacy.dnt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dnt: Option<SignalPolicy>,
    /// Overrides `privacy.no_consent`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_consent: Option<SignalPolicy>,
    /// Overrides `privacy.optout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optout: Option<SignalPolicy>,
}

/// The `[privacy]` settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PrivacyConfig {
    /// What is kept of the client IP. Default `truncate`.
    pub ip_mode: IpMode,
    /// Network bits kept of an IPv4 address in `truncate` mode. Default 24.
    pub ipv4_prefix_bits: u8,
    /// Network bits kept of an IPv6 address in `truncate` mode. Default 48.
    pub ipv6_prefix_bits: u8,
    /// Answer to `Sec-GPC: 1`. Default `anonymous`.
    pub gpc: SignalPolicy,
    /// Answer to `DNT: 1`. Default `anonymous`.
    pub dnt: SignalPolicy,
    /// Secret the daily hash salts are derived from; required (16 bytes or more) when any site
    /// uses `hash`. Every edge needs the same one so that hashes agree. Default empty.
    pub hash_secret: String,
    /// Parameter (query or JSON) that carries the visitor's consent: `0`, `false`, `no` or
    /// `denied` mean no consent. Default `consent`.
    pub consent_param: String,
    /// Answer to a hit whose consent parameter says no. Default `anonymous`.
    pub no_consent: SignalPolicy,
    /// Name of the first-party opt-out cookie that `GET /optout` sets and `/optin` clears.
    /// Default `pixelpipe_optout`.
    pub optout_cookie: String,
    /// Answer to a hit that carries the opt-out cookie. Default `drop`.
    pub optout: SignalPolicy,
    /// Add a cookieless `visitor_id`: a keyed hash of (daily salt, site, IP, user agent), as
    /// Plausible does. Same visitor, same site, same UTC day: same id; nothing links days. Uses
    /// `hash_secret`, or a random secret made at start when that is empty (ids then differ
    /// between edges and restarts). Default true.
    pub visitor_id: bool,
    /// Per-site overrides, by site id.
    pub sites: BTreeMap<String, SitePrivacy>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            ip_mode: IpMode::Truncate,
            ipv4_prefix_bits: 24,
            ipv6_prefix_bits: 48,
            gpc: SignalPolicy::Anonymous,
            dnt: SignalPolicy::Anonymous,
            hash_secret: String::new(),
            consent_param: "consent".into(),
            no_consent: SignalPolicy::Anonymous,
            optout_cookie: "pixelpipe_optout".into(),
            optout: SignalPolicy::Drop,
            visitor_id: true,
            sites: BTreeMap::new(),
        }
    }
}

impl PrivacyConfig {
    /// Checks the settings; the error names the wrong one.
    pub fn check(&self) -> Result<(), ConfigError> {
        check(
            self.ipv4_prefix_bits <= 32,
            "privacy.ipv4_prefix_bits",
            "must be between 0 and 32",
        )?;
        check(
            self.ipv6_prefix_bits <= 128,
            "privacy.ipv6_prefix_bits",
            "must be between 0 and 128",
        )?;
        check(
            !self.consent_param.is_empty(),
            "privacy.consent_param",
            "must not be empty",
        )?;
        check(
            !self.optout_cookie.is_empty()
                && self
                    .optout_cookie
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "privacy.optout_cookie",
            "must be letters, digits, '_' or '-'",
        )?;
        let hashing = self.ip_mode == IpMode::Hash
            || self.sites.values().any(|s| s.ip_mode == Some(IpMode::Hash));
        check(
            !hashing || self.hash_secret.len() >= 16,
            "privacy.hash_secret",
            "must be at least 16 bytes when ip_mode is hash (globally or for a site)",
        )
    }
}

/// What the policy decided for one hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Produce the (possibly minimised) hit.
    Keep,
    /// Do not store it; counted as dropped with this reason (`Gpc`, `Dnt`, `NoConsent`,
    /// `Optout`).
    Drop(DropReason),
}

/// The policy, ready to apply. Each batcher thread owns a clone.
#[derive(Debug, Clone)]
pub struct Privacy {
    config: PrivacyConfig,
    /// `hash_secret`, or a random one made at start (never stored).
    secret: String,
    /// Today's keyed MACs: deriving one costs two HMAC computations, so the thread keeps them
    /// for the day and clones them per hit.
    keys: RefCell<Option<DailyKeys>>,
}

/// The keyed MACs of one UTC day.
#[derive(Clone)]
struct DailyKeys {
    day: u64,
    ip: Hmac<Sha256>,
    visitor: Hmac<Sha256>,
}

impl std::fmt::Debug for DailyKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys themselves are never printed.
        f.debug_struct("DailyKeys")
            .field("day", &self.day)
            .finish_non_exhaustive()
    }
}

impl Privacy {
    /// From validated settings.
    pub fn new(config: PrivacyConfig) -> Privacy {
        let secret = if config.hash_secret.is_empty() {
            if config.visitor_id {
                tracing::warn!("privacy.hash_secret is empty: visitor ids use a random secret of this process, so they differ between edges and restarts");
            }
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )
        } else {
            config.hash_secret.clone()
        };
        Privacy {
            config,
            secret,
            keys: RefCell::new(None),
        }
    }

    /// Runs `f` with the keyed MACs of `day`, deriving them when the day changes.
    fn with_keys<R>(&self, day: u64, f: impl FnOnce(&DailyKeys) -> R) -> R {
        let mut keys = self.keys.borrow_mut();
        if keys.as_ref().map(|k| k.day) != Some(day) {
            *keys = Some(DailyKeys {
                day,
                ip: keyed(&self.secret, b"ip", day),
                visitor: keyed(&self.secret, b"visitor", day),
            });
        }
        f(keys.as_ref().expect("just set"))
    }

    /// Applies the site's policy to `hit` in place.
    pub fn apply(&self, hit: &mut Hit) -> Verdict {
        let site = self.config.sites.get(&hit.site_id);
        let pick = |o: Option<SignalPolicy>, global: SignalPolicy| o.unwrap_or(global);
        let signalled = |v: &Option<String>| v.as_deref().map(str::trim) == Some("1");
        let consent_denied = hit.props.iter().any(|(k, v)| {
            k == &self.config.consent_param
                && matches!(
                    v.trim().to_ascii_lowercase().as_str(),
                    "0" | "false" | "no" | "denied"
                )
        });
        let signals = [
            (
                signalled(&hit.sec_gpc),
                pick(site.and_then(|s| s.gpc), self.config.gpc),
                DropReason::Gpc,
            ),
            (
                signalled(&hit.dnt),
                pick(site.and_then(|s| s.dnt), self.config.dnt),
                DropReason::Dnt,
            ),
            (
                consent_denied,
                pick(site.and_then(|s| s.no_consent), self.config.no_consent),
                DropReason::NoConsent,
            ),
            (
                hit.opted_out,
                pick(site.and_then(|s| s.optout), self.config.optout),
                DropReason::Optout,
            ),
        ];
        // The strongest answer wins: a drop over anonymising, and the first signal named gives a
        // drop its reason.
        let answered = |answer: SignalPolicy| {
            signals
                .iter()
                .find(|(present, policy, _)| *present && *policy == answer)
                .map(|(_, _, reason)| *reason)
        };
        if let Some(reason) = answered(SignalPolicy::Drop) {
            return Verdict::Drop(reason);
        }
        if answered(SignalPolicy::Anonymous).is_some() {
            hit.visitor_id = None;
            hit.client_ip = None;
            hit.ip_hash = None;
            hit.user_id = None;
            // What the user agent, or its absence, says about the client (a script, a scanner,
            // a mail proxy) is one of a few fixed classes and identifies no one: it is decided
            // here, with the rules the sink applies, before the user agent itself goes, so the
            // hit keeps its class.
            hit.user_agent_class = classes::by_user_agent_header(hit.user_agent.take().as_deref());
            // The country stays (it identifies no one); finer places and the network go.
            hit.geo_region = None;
            hit.geo_city = None;
            hit.asn = None;
            hit.as_org = None;
            hit.anonymized = true;
            return Verdict::Keep;
        }
        let Some(ip) = hit.client_ip else {
            return Verdict::Keep;
        };
        let day = hit.received_at_ms / 86_400_000;
        if self.config.visitor_id {
            let ua = hit.user_agent.as_deref().unwrap_or("");
            let id = self.with_keys(day, |k| {
                finish(
                    k.visitor.clone(),
                    &[hit.site_id.as_bytes(), &ip_bytes(ip), ua.as_bytes()],
                )
            });
            hit.visitor_id = Some(id);
        }
        match site.and_then(|s| s.ip_mode).unwrap_or(self.config.ip_mode) {
            IpMode::Full => {}
            IpMode::Truncate => {
                hit.client_ip = Some(truncate(
                    ip,
                    self.config.ipv4_prefix_bits,
                    self.config.ipv6_prefix_bits,
                ))
            }
            IpMode::Hash => {
                hit.ip_hash = Some(self.with_keys(day, |k| finish(k.ip.clone(), &[&ip_bytes(ip)])));
                hit.client_ip = None;
            }
            IpMode::Drop => hit.client_ip = None,
        }
        Verdict::Keep
    }
}

/// Zeroes the host bits past the prefix. IPv4-mapped IPv6 is treated as the IPv4 it carries.
pub fn truncate(ip: IpAddr, v4_bits: u8, v6_bits: u8) -> IpAddr {
    fn mask(bytes: &mut [u8], bits: u8) {
        for (i, b) in bytes.iter_mut().enumerate() {
            let keep = (usize::from(bits)).saturating_sub(i * 8).min(8) as u32;
            *b &= (0xffu16 << (8 - keep)) as u8;
        }
    }
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let mut o = v4.octets();
            mask(&mut o, v4_bits);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        IpAddr::V6(v6) => {
            let mut o = v6.octets();
            mask(&mut o, v6_bits);
            IpAddr::V6(Ipv6Addr::from(o))
        }
    }
}

/// A keyed hash of `ip` with the salt of UTC day `day` (days since the epoch): the salt is
/// HMAC-SHA256(secret, purpose, day) and is never stored, so yesterday's hashes cannot be
/// recomputed once the secret rotates, and hashes of different days do not match. 128 bits, hex.
pub fn hash_ip(secret: &str, day: u64, ip: IpAddr) -> String {
    daily_hash(secret, b"ip", day, &[&ip_bytes(ip)])
}

/// The cookieless visitor id: a keyed hash of (site, IP, user agent) with the day's salt, under a
/// different salt from [`hash_ip`] so the two cannot be linked.
pub fn visitor_id(secret: &str, day: u64, site: &str, ip: IpAddr, user_agent: &str) -> String {
    daily_hash(
        secret,
        b"visitor",
        day,
        &[site.as_bytes(), &ip_bytes(ip), user_agent.as_bytes()],
    )
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn daily_hash(secret: &str, purpose: &[u8], day: u64, parts: &[&[u8]]) -> String {
    finish(keyed(secret, purpose, day), parts)
}

/// The MAC keyed with the salt of `purpose` and `day`: HMAC-SHA256(secret, purpose, day).
fn keyed(secret: &str, purpose: &[u8], day: u64) -> Hmac<Sha256> {
    let mut salt_mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
        .expect("HMAC takes any key length");
    salt_mac.update(b"pixelpipe salt ");
    salt_mac.update(purpose);
    salt_mac.update(&day.to_be_bytes());
    let salt = salt_mac.finalize().into_bytes();
    <Hmac<Sha256> as KeyInit>::new_from_slice(&salt).expect("HMAC takes any key length")
}

/// Feeds `parts` to a keyed MAC and returns the first 128 bits, hex.
fn finish(mut mac: Hmac<Sha256>, parts: &[&[u8]]) -> String {
    for part in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    let mut hex = [0u8; 32];
    hex::encode_to_slice(&mac.finalize().into_bytes()[..16], &mut hex)
        .expect("32 bytes hold 16 bytes in hex");
    String::from_utf8(hex.to_vec()).expect("hex digits are ASCII")
}

#[cfg(test)]
mod tests;
