//! The privacy policy on hits: IP minimisation, signals and their precedence, per-site
//! overrides, the daily keys, and the settings' checks.

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
    h.user_agent_class = None;
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
fn an_anonymous_hit_keeps_the_class_its_user_agent_gave_and_not_the_user_agent() {
    use pixelpipe_common::classes::{Class, TrafficClass};
    let p = policy(|_| {});
    let anonymised = |ua: &str, header: fn(&mut Hit)| {
        let mut h = quiet_hit();
        h.user_agent = Some(ua.into());
        header(&mut h);
        assert_eq!(p.apply(&mut h), Verdict::Keep);
        assert!(h.anonymized, "{ua}");
        assert_eq!(h.user_agent, None, "{ua}: the user agent itself is gone");
        h.user_agent_class
    };
    let class = |class, reason| Some(Class { class, reason });
    assert_eq!(
        anonymised("curl/8.5.0", |h| h.dnt = Some("1".into())),
        class(TrafficClass::Bot, "http_library")
    );
    assert_eq!(
        anonymised("Mozilla/5.0 (compatible; Barracuda Sentinel (EE))", |h| {
            h.sec_gpc = Some("1".into())
        }),
        class(TrafficClass::Scanner, "barracuda")
    );
    assert_eq!(
        anonymised("Microsoft-URLAnalyzer/1.0", |h| {
            h.props.push(("consent".into(), "no".into()))
        }),
        class(TrafficClass::Scanner, "microsoft_safe_links"),
        "every anonymous answer, not only GPC and DNT"
    );
    assert_eq!(
        anonymised(
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            |h| h.dnt = Some("1".into())
        ),
        None,
        "a browser leaves no class behind"
    );
    // No user agent at all is a script's, as the sink would judge it: the hit says so too.
    let mut h = quiet_hit();
    h.user_agent = None;
    h.dnt = Some("1".into());
    assert_eq!(p.apply(&mut h), Verdict::Keep);
    assert!(h.anonymized);
    assert_eq!(
        h.user_agent_class,
        class(TrafficClass::Bot, "no_user_agent"),
        "a missing user agent is not a person's either"
    );
    // Without an anonymous answer the user agent stays and the sink judges it itself.
    let mut h = quiet_hit();
    h.user_agent = Some("curl/8.5.0".into());
    p.apply(&mut h);
    assert_eq!(
        (h.user_agent.as_deref(), h.user_agent_class),
        (Some("curl/8.5.0"), None)
    );
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

/// Known answers computed outside this code (Python's `hmac` and `hashlib`, following `keyed`'s
/// salt and `finish`'s length prefixes): the ids of one day must not change with an edge's
/// upgrade, or a visitor would count twice that day.
#[test]
fn hashes_match_an_independent_computation() {
    assert_eq!(
        hash_ip("0123456789abcdef", 20_000, ip("198.51.100.7")),
        "82df6a5950fb9ba7aabc6ae1e3c2660e"
    );
    assert_eq!(
        visitor_id(
            "0123456789abcdef",
            20_000,
            "shop",
            ip("2001:db8::1"),
            "Mozilla/5.0"
        ),
        "51d0c60b662b0d9f821e74d0df7406a3"
    );
}
