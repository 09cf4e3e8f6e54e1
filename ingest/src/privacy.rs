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
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalPolicy {
    /// Treat the hit like any other.
    Ignore,
    /// Count the hit but keep nothing that identifies the visitor: no IP (nor its hash), no
    /// user id, no user agent, no region, city or network (the country stays); the hit is
    /// marked `anonymized`.
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
        // The strongest answer of the signals present; the first named wins a tie.
        let mut strongest: Option<(SignalPolicy, DropReason)> = None;
        for (present, policy, reason) in signals {
            if present && policy > strongest.map_or(SignalPolicy::Ignore, |s| s.0) {
                strongest = Some((policy, reason));
            }
        }
        match strongest {
            Some((SignalPolicy::Drop, reason)) => return Verdict::Drop(reason),
            Some((SignalPolicy::Anonymous, _)) => {
                hit.visitor_id = None;
                hit.client_ip = None;
                hit.ip_hash = None;
                hit.user_id = None;
                hit.user_agent = None;
                // The country stays (it identifies no one); finer places and the network go.
                hit.geo_region = None;
                hit.geo_city = None;
                hit.asn = None;
                hit.as_org = None;
                hit.anonymized = true;
                return Verdict::Keep;
            }
            Some((SignalPolicy::Ignore, _)) | None => {}
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
    mac.finalize().into_bytes()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testing::sample_hit;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn truncation_keeps_the_network() {
        assert_eq!(truncate(ip("203.0.113.77"), 24, 48), ip("203.0.113.0"));
        assert_eq!(truncate(ip("203.0.113.77"), 16, 48), ip("203.0.0.0"));
        assert_eq!(truncate(ip("203.0.113.77"), 20, 48), ip("203.0.112.0"));
        assert_eq!(truncate(ip("203.0.113.77"), 32, 48), ip("203.0.113.77"));
        assert_eq!(truncate(ip("203.0.113.77"), 0, 48), ip("0.0.0.0"));
        assert_eq!(
            truncate(ip("2001:db8:abcd:1234::1"), 24, 48),
            ip("2001:db8:abcd::")
        );
        assert_eq!(
            truncate(ip("2001:db8:abcd:1234::1"), 24, 56),
            ip("2001:db8:abcd:1200::")
        );
        assert_eq!(
            truncate(ip("::ffff:198.51.100.9"), 24, 48),
            ip("198.51.100.0"),
            "mapped IPv4 is IPv4"
        );
    }

    #[test]
    fn hashes_are_keyed_daily_and_stable_within_a_day() {
        let secret = "0123456789abcdef-secret";
        let a = hash_ip(secret, 20_000, ip("203.0.113.7"));
        assert_eq!(a.len(), 32);
        assert_eq!(
            a,
            hash_ip(secret, 20_000, ip("203.0.113.7")),
            "same day, same visitor"
        );
        assert_eq!(
            a,
            hash_ip(secret, 20_000, ip("::ffff:203.0.113.7")),
            "mapped form is the same address"
        );
        assert_ne!(
            a,
            hash_ip(secret, 20_001, ip("203.0.113.7")),
            "the salt changes daily"
        );
        assert_ne!(
            a,
            hash_ip("another-secret-of-16", 20_000, ip("203.0.113.7")),
            "keyed"
        );
        assert_ne!(a, hash_ip(secret, 20_000, ip("203.0.113.8")));
    }

    fn policy(f: impl FnOnce(&mut PrivacyConfig)) -> Privacy {
        let mut c = PrivacyConfig {
            hash_secret: "0123456789abcdef".into(),
            ..PrivacyConfig::default()
        };
        f(&mut c);
        c.check().unwrap();
        Privacy::new(c)
    }

    fn quiet_hit() -> Hit {
        let mut h = sample_hit();
        h.client_ip = Some(ip("203.0.113.77"));
        h.dnt = None;
        h.sec_gpc = None;
        h.ip_hash = None;
        h.visitor_id = None;
        h.anonymized = false;
        h.opted_out = false;
        h
    }

    #[test]
    fn ip_modes() {
        let mut h = quiet_hit();
        assert_eq!(policy(|_| {}).apply(&mut h), Verdict::Keep);
        assert_eq!(
            (h.client_ip, h.anonymized),
            (Some(ip("203.0.113.0")), false),
            "truncate by default"
        );
        let mut h = quiet_hit();
        policy(|c| c.ip_mode = IpMode::Full).apply(&mut h);
        assert_eq!(h.client_ip, Some(ip("203.0.113.77")));
        let mut h = quiet_hit();
        policy(|c| c.ip_mode = IpMode::Hash).apply(&mut h);
        assert_eq!(h.client_ip, None);
        assert_eq!(h.ip_hash.as_deref().map(str::len), Some(32));
        let mut h = quiet_hit();
        policy(|c| c.ip_mode = IpMode::Drop).apply(&mut h);
        assert_eq!((h.client_ip, h.ip_hash.as_deref()), (None, None));
        assert_eq!(
            h.user_agent.as_deref(),
            Some("Mozilla/5.0"),
            "IP modes touch only the IP"
        );
    }

    #[test]
    fn signals_anonymise_or_drop() {
        let mut h = quiet_hit();
        h.sec_gpc = Some("1".into());
        assert_eq!(policy(|_| {}).apply(&mut h), Verdict::Keep);
        assert!(h.anonymized);
        assert_eq!(
            (h.client_ip, h.user_id.as_deref(), h.user_agent.as_deref()),
            (None, None, None)
        );
        assert_eq!(
            h.campaign.as_deref(),
            Some("spring"),
            "the hit itself is still counted"
        );
        let mut h = quiet_hit();
        h.dnt = Some("1".into());
        assert_eq!(
            policy(|c| c.dnt = SignalPolicy::Drop).apply(&mut h),
            Verdict::Drop(DropReason::Dnt)
        );
        let mut h = quiet_hit();
        h.dnt = Some("1".into());
        h.sec_gpc = Some("1".into());
        assert_eq!(
            policy(|c| c.gpc = SignalPolicy::Drop).apply(&mut h),
            Verdict::Drop(DropReason::Gpc),
            "the strongest wins"
        );
        let mut h = quiet_hit();
        h.sec_gpc = Some("0".into());
        h.dnt = Some("0".into());
        policy(|_| {}).apply(&mut h);
        assert!(!h.anonymized, "only 1 is a signal");
        let mut h = quiet_hit();
        h.sec_gpc = Some("1".into());
        policy(|c| {
            c.gpc = SignalPolicy::Ignore;
            c.ip_mode = IpMode::Full;
        })
        .apply(&mut h);
        assert_eq!(
            (h.anonymized, h.client_ip),
            (false, Some(ip("203.0.113.77")))
        );
    }

    #[test]
    fn sites_override_the_default() {
        let p = policy(|c| {
            c.sites.insert(
                "shop".into(),
                SitePrivacy {
                    ip_mode: Some(IpMode::Drop),
                    gpc: Some(SignalPolicy::Drop),
                    ..SitePrivacy::default()
                },
            );
        });
        let mut h = quiet_hit();
        p.apply(&mut h);
        assert_eq!(h.client_ip, None, "sample_hit's site is shop");
        let mut h = quiet_hit();
        h.sec_gpc = Some("1".into());
        assert_eq!(p.apply(&mut h), Verdict::Drop(DropReason::Gpc));
        let mut h = quiet_hit();
        h.site_id = "other".into();
        p.apply(&mut h);
        assert_eq!(
            h.client_ip,
            Some(ip("203.0.113.0")),
            "other sites keep the default"
        );
    }

    #[test]
    fn visitor_ids_are_daily_per_site_and_absent_when_anonymous() {
        let secret = "0123456789abcdef";
        let id = |day, site, ip: &str, ua| visitor_id(secret, day, site, ip.parse().unwrap(), ua);
        let a = id(20_000, "shop", "203.0.113.7", "UA");
        assert_eq!(a, id(20_000, "shop", "203.0.113.7", "UA"));
        assert_ne!(
            a,
            id(20_001, "shop", "203.0.113.7", "UA"),
            "a new day, a new id"
        );
        assert_ne!(
            a,
            id(20_000, "blog", "203.0.113.7", "UA"),
            "not linkable across sites"
        );
        assert_ne!(a, id(20_000, "shop", "203.0.113.7", "UA2"));
        assert_ne!(
            a,
            hash_ip(secret, 20_000, "203.0.113.7".parse().unwrap()),
            "not the IP hash"
        );
        let p = policy(|_| {});
        let mut h = quiet_hit();
        p.apply(&mut h);
        let day = h.received_at_ms / 86_400_000;
        let want = visitor_id(
            "0123456789abcdef",
            day,
            "shop",
            "203.0.113.77".parse().unwrap(),
            "Mozilla/5.0",
        );
        assert_eq!(
            h.visitor_id.as_deref(),
            Some(want.as_str()),
            "from the full address, before truncation"
        );
        let mut h = quiet_hit();
        h.sec_gpc = Some("1".into());
        p.apply(&mut h);
        assert_eq!(h.visitor_id, None);
        let mut h = quiet_hit();
        policy(|c| c.visitor_id = false).apply(&mut h);
        assert_eq!(h.visitor_id, None);
    }

    #[test]
    fn consent_and_the_optout_cookie() {
        let p = policy(|_| {});
        let mut h = quiet_hit();
        h.props.push(("consent".into(), "Denied".into()));
        assert_eq!(p.apply(&mut h), Verdict::Keep);
        assert!(h.anonymized, "no consent: anonymous by default");
        let mut h = quiet_hit();
        h.props.push(("consent".into(), "1".into()));
        p.apply(&mut h);
        assert!(!h.anonymized, "consent given");
        let mut h = quiet_hit();
        h.opted_out = true;
        assert_eq!(
            p.apply(&mut h),
            Verdict::Drop(DropReason::Optout),
            "opted out: dropped by default"
        );
        let p = policy(|c| {
            c.consent_param = "gdpr".into();
            c.no_consent = SignalPolicy::Drop;
        });
        let mut h = quiet_hit();
        h.props.push(("consent".into(), "0".into()));
        assert_eq!(
            p.apply(&mut h),
            Verdict::Keep,
            "another parameter name is configured"
        );
        h.props.push(("gdpr".into(), "no".into()));
        assert_eq!(p.apply(&mut h), Verdict::Drop(DropReason::NoConsent));
    }

    #[test]
    fn cached_daily_keys_give_the_reference_hashes_across_days() {
        let p = policy(|c| c.ip_mode = IpMode::Hash);
        for day in [20_000u64, 20_001, 20_000] {
            let mut h = quiet_hit();
            h.received_at_ms = day * 86_400_000 + 5_000;
            p.apply(&mut h);
            let ip: IpAddr = "203.0.113.77".parse().unwrap();
            assert_eq!(
                h.ip_hash,
                Some(hash_ip("0123456789abcdef", day, ip)),
                "day {day}"
            );
            assert_eq!(
                h.visitor_id,
                Some(visitor_id(
                    "0123456789abcdef",
                    day,
                    "shop",
                    ip,
                    "Mozilla/5.0"
                )),
                "day {day}"
            );
        }
    }

    #[test]
    fn settings_are_checked() {
        let setting = |c: &PrivacyConfig| match c.check().unwrap_err() {
            ConfigError::Setting { setting, .. } => setting,
            other => panic!("{other}"),
        };
        let c = PrivacyConfig {
            ip_mode: IpMode::Hash,
            ..PrivacyConfig::default()
        };
        assert_eq!(setting(&c), "privacy.hash_secret");
        let mut c = PrivacyConfig::default();
        c.sites.insert(
            "s".into(),
            SitePrivacy {
                ip_mode: Some(IpMode::Hash),
                ..SitePrivacy::default()
            },
        );
        assert_eq!(
            setting(&c),
            "privacy.hash_secret",
            "a site's hash mode needs the secret too"
        );
        let c = PrivacyConfig {
            ipv6_prefix_bits: 129,
            ..PrivacyConfig::default()
        };
        assert_eq!(setting(&c), "privacy.ipv6_prefix_bits");
    }
}
