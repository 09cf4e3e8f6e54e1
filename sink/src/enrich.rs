//! What the sink adds to a hit before it is stored: browser, OS and device type from the user
//! agent, and the traffic class (`human`, `bot`, `email_proxy`, `scanner`, `prefetch`) with the
//! short reason that decided it.
//!
//! It owns the user-agent parser (uap-core, the rule set every ua-parser port shares, embedded
//! from `sink/rules/uap-core/` or read from `enrich.ua_rules_path`), a bounded cache of parsed user
//! agents, and the rules that need the parser, the network or the send time. The rules on the
//! request alone (prefetch, `HEAD`, a missing user agent, the vendor lists) are
//! `pixelpipe_common::classes`, shared with the edge. It does not decode the wire format (`row` does, through `pixelpipe_common::wire`), and
//! it never drops a hit: every hit gets a class, and `human` means only that no rule matched.
//!
//! Why here and not at the edge: parsing a user agent costs microseconds (see docs/benchmarks.md),
//! user agents repeat, and the sink sees every hit of a partition in one process, so a cache here
//! answers most lookups; the edge keeps its batcher threads for geo and privacy, which need the
//! raw address. The edge forwards the request signals this module needs (`head_request`,
//! `prefetch`, a signed send time, and for an anonymised hit what the shared rules made of the user
//! agent it removed, or of its absence) on the wire. The crawler rule therefore does not apply to a
//! hit whose user agent the privacy policy removed: the parser is not at the edge. Nor does the
//! datacenter rule: the policy removes the network too, and the list of datacenter networks is
//! this service's setting, not the edge's (docs/privacy.md).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pixelpipe_common::classes::{self, Class, TrafficClass};
use pixelpipe_common::wire::{kind, Hit};
use ua_parser::Extractor;

use crate::config::EnrichConfig;
use crate::error::{Error, Result};

/// uap-core's rules as shipped in the repository; `deploy/local/update-ua-rules.sh` refreshes them.
const EMBEDDED_RULES: &str = include_str!("../rules/uap-core/regexes.json");

/// Device types.
pub const DEVICE_TYPES: [&str; 5] = ["desktop", "mobile", "tablet", "bot", "other"];

/// What the user agent says, parsed once per distinct string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserAgentInfo {
    /// Browser family (`Chrome`, `Mobile Safari`, `Googlebot`, ...), `Other` when unknown.
    pub browser: String,
    /// Browser version, `major[.minor[.patch]]`, empty when unknown.
    pub browser_version: String,
    /// OS family (`Windows`, `iOS`, `Android`, `Mac OS X`, ...), `Other` when unknown.
    pub os: String,
    /// OS version, `major[.minor[.patch]]`, empty when unknown.
    pub os_version: String,
    /// One of [`DEVICE_TYPES`].
    pub device_type: &'static str,
    /// uap-core's device family is `Spider`: its maintained list of crawlers matched.
    pub crawler: bool,
}

/// The parser and the classification rules.
pub struct Enricher {
    extractor: Extractor<'static>,
    cache: UaCache,
    datacenter_asns: HashSet<u32>,
    machine_open_ms: u64,
    machine_click_ms: u64,
}

impl std::fmt::Debug for Enricher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enricher")
            .field("cached", &self.cache.len())
            .field("datacenter_asns", &self.datacenter_asns.len())
            .finish_non_exhaustive()
    }
}

impl Enricher {
    /// Compiles the rules (about 0.5 s for uap-core; once per process).
    pub fn new(config: &EnrichConfig) -> Result<Enricher> {
        let rules: &'static str = if config.ua_rules_path.is_empty() {
            EMBEDDED_RULES
        } else {
            let text = std::fs::read_to_string(&config.ua_rules_path).map_err(|e| {
                Error::config(
                    "enrich.ua_rules_path",
                    format!("cannot read {}: {e}", config.ua_rules_path),
                )
            })?;
            // The extractor borrows its patterns from the text for the life of the process; one
            // leaked copy of the rules is what keeping them would cost anyway.
            text.leak()
        };
        let bad = |e: String| Error::config("enrich.ua_rules_path", e);
        let regexes: ua_parser::Regexes<'static> = serde_json::from_str(rules)
            .map_err(|e| bad(format!("not uap-core rules as JSON: {e}")))?;
        let extractor = Extractor::try_from(regexes).map_err(|e| bad(e.to_string()))?;
        Ok(Enricher {
            extractor,
            cache: UaCache::new(config.ua_cache_entries),
            datacenter_asns: config.datacenter_asns.iter().copied().collect(),
            machine_open_ms: config.machine_open_seconds.saturating_mul(1000),
            machine_click_ms: config.machine_click_seconds.saturating_mul(1000),
        })
    }

    /// Parses a user agent, through the cache.
    pub fn user_agent(&mut self, ua: &str) -> Arc<UserAgentInfo> {
        if let Some(hit) = self.cache.get(ua) {
            return hit;
        }
        let info = Arc::new(parse(&self.extractor, ua));
        self.cache.insert(ua, Arc::clone(&info));
        info
    }

    /// Parses without the cache (for measuring the parser itself).
    pub fn user_agent_uncached(&self, ua: &str) -> UserAgentInfo {
        parse(&self.extractor, ua)
    }

    /// The class of `hit`, given its parsed user agent (`None` when it has none). The first rule
    /// that matches wins; they are ordered from the most to the least specific evidence.
    pub fn classify(&self, hit: &Hit, ua: Option<&UserAgentInfo>) -> Class {
        use TrafficClass::{Bot, Human, Scanner};
        let class = |class, reason| Class { class, reason };
        // The rules on the request alone, the ones the edge applies too. A hit whose user agent
        // the edge removed carries what the user-agent rules made of it (or of its absence)
        // there; one from an edge older than that carries nothing, and its missing user agent
        // says nothing either.
        let removed = hit.anonymized && hit.user_agent.is_none();
        let user_agent_class = if removed {
            hit.user_agent_class
        } else {
            classes::by_user_agent_header(hit.user_agent.as_deref())
        };
        if let Some(found) = classes::by_request(hit.prefetch, hit.head_request, user_agent_class) {
            return found;
        }
        if ua.is_some_and(|u| u.crawler) {
            return class(Bot, "crawler_ua");
        }
        if hit
            .asn
            .is_some_and(|asn| self.datacenter_asns.contains(&asn))
        {
            return class(Bot, "datacenter_asn");
        }
        // Scanners fetch every image and follow every link of a message on delivery; people
        // take longer. A conversion is exempt: it is fired by the site after a purchase or
        // sign-up, not fetched from the message, so its speed says nothing about a machine.
        let since_send = hit
            .sent_at_ms
            .map(|sent| hit.received_at_ms.saturating_sub(sent));
        let too_soon = |limit_ms: u64| since_send.is_some_and(|ms| ms < limit_ms);
        match hit.kind.as_str() {
            kind::OPEN if too_soon(self.machine_open_ms) => {
                return class(Scanner, "open_soon_after_send")
            }
            kind::CLICK if too_soon(self.machine_click_ms) => {
                return class(Scanner, "click_soon_after_send")
            }
            _ => {}
        }
        if removed {
            // The edge removed the user agent for a privacy signal; only request signals were
            // left to judge by, and none matched.
            return class(Human, "anonymized");
        }
        class(Human, "no_rule_matched")
    }
}

fn version(parts: [Option<&str>; 3]) -> String {
    let mut out = String::new();
    for part in parts.into_iter().map_while(|p| p.filter(|p| !p.is_empty())) {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(part);
    }
    out
}

fn parse(extractor: &Extractor<'static>, ua: &str) -> UserAgentInfo {
    let (browser, os, device) = extractor.extract(ua);
    let (browser, browser_version) = match browser {
        Some(b) => (b.family.into_owned(), version([b.major, b.minor, b.patch])),
        None => ("Other".to_owned(), String::new()),
    };
    let (os, os_version) = match os {
        Some(o) => (
            o.os.into_owned(),
            version([o.major.as_deref(), o.minor.as_deref(), o.patch.as_deref()]),
        ),
        None => ("Other".to_owned(), String::new()),
    };
    let device = device.map(|d| d.device.into_owned()).unwrap_or_default();
    let crawler = device == "Spider";
    let device_type = device_type(ua, &os, &device, crawler);
    UserAgentInfo {
        browser,
        browser_version,
        os,
        os_version,
        device_type,
        crawler,
    }
}

/// uap-core names devices but not their type; the type follows from the device and OS families
/// it reports. Android tablets are told from phones the way Google documents it: a phone's
/// browser says `Mobile`, a tablet's does not.
fn device_type(ua: &str, os: &str, device: &str, crawler: bool) -> &'static str {
    const MOBILE_OS: &[&str] = &[
        "iOS",
        "Android",
        "Windows Phone",
        "BlackBerry OS",
        "KaiOS",
        "Firefox OS",
        "HarmonyOS",
        "Symbian OS",
    ];
    const DESKTOP_OS: &[&str] = &[
        "Windows",
        "Mac OS X",
        "Linux",
        "Ubuntu",
        "Chrome OS",
        "Fedora",
        "Debian",
        "FreeBSD",
        "OpenBSD",
    ];
    if crawler {
        "bot"
    } else if device == "iPad"
        || device.contains("Tablet")
        || device.starts_with("Kindle")
        || (os == "Android" && !ua.contains("Mobile"))
    {
        "tablet"
    } else if MOBILE_OS.contains(&os) || device == "iPhone" || device.contains("Smartphone") {
        "mobile"
    } else if DESKTOP_OS.contains(&os) {
        "desktop"
    } else {
        "other"
    }
}

/// A bounded map from user agent to its parse, in two generations: lookups that hit the old
/// generation move the entry to the new one, and when the new one is full the old one is
/// dropped. That keeps what is in use at a fixed memory bound with O(1) work and no per-entry
/// bookkeeping, which is what a skewed stream of user agents needs.
#[derive(Debug)]
struct UaCache {
    young: HashMap<Box<str>, Arc<UserAgentInfo>>,
    old: HashMap<Box<str>, Arc<UserAgentInfo>>,
    generation: usize,
}

impl UaCache {
    fn new(entries: usize) -> UaCache {
        UaCache {
            young: HashMap::new(),
            old: HashMap::new(),
            generation: (entries / 2).max(1),
        }
    }

    fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }

    fn get(&mut self, ua: &str) -> Option<Arc<UserAgentInfo>> {
        if let Some(info) = self.young.get(ua) {
            return Some(Arc::clone(info));
        }
        let (key, info) = self.old.remove_entry(ua)?;
        self.insert_owned(key, Arc::clone(&info));
        Some(info)
    }

    fn insert(&mut self, ua: &str, info: Arc<UserAgentInfo>) {
        self.insert_owned(ua.into(), info);
    }

    fn insert_owned(&mut self, ua: Box<str>, info: Arc<UserAgentInfo>) {
        if self.young.len() >= self.generation {
            self.old = std::mem::take(&mut self.young);
        }
        self.young.insert(ua, info);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use pixelpipe_common::wire;

    /// Real user agents, each with what uap-core 0.18 makes of it.
    pub(crate) const CHROME_WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    const IPHONE_SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1";
    const IPAD_SAFARI: &str = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";
    const ANDROID_PHONE: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.6045.163 Mobile Safari/537.36";
    const ANDROID_TABLET: &str = "Mozilla/5.0 (Linux; Android 13; SM-X700) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/118.0.0.0 Safari/537.36";
    const FIREFOX_MAC: &str =
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:121.0) Gecko/20100101 Firefox/121.0";
    const GOOGLEBOT: &str =
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
    const BINGBOT: &str = "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36";
    const HEADLESS_CHROME: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.109 Safari/537.36";
    const GMAIL_PROXY: &str =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    const YAHOO_PROXY: &str =
        "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html";
    const APPLE_MPP: &str = "Mozilla/5.0";
    const BARRACUDA: &str = "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))";
    const OUTLOOK_DESKTOP: &str = "Mozilla/4.0 (compatible; ms-office; MSOffice 16)";

    pub(crate) fn enricher() -> Enricher {
        Enricher::new(&EnrichConfig {
            datacenter_asns: vec![16509],
            ..EnrichConfig::default()
        })
        .unwrap()
    }

    /// One enricher for the tests of other modules: compiling the rules takes a while in a debug
    /// build.
    pub(crate) fn shared() -> std::sync::MutexGuard<'static, Enricher> {
        static SHARED: std::sync::OnceLock<std::sync::Mutex<Enricher>> = std::sync::OnceLock::new();
        SHARED
            .get_or_init(|| std::sync::Mutex::new(enricher()))
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn hit(ua: Option<&str>) -> Hit {
        let json = r#"{"schema_version":1,"event_id":"01890a5d-ac96-774b-bcce-b302099a8057",
            "received_at_ms":1700000000123,"edge_id":"e","transport":"pixel","kind":"open",
            "site_id":"s","path":"/p.gif"}"#;
        let mut h = wire::decode(json.as_bytes()).unwrap();
        h.user_agent = ua.map(str::to_owned);
        h
    }

    #[test]
    fn user_agents_parse_into_browser_os_and_device() {
        let mut e = enricher();
        let cases = [
            (
                CHROME_WINDOWS,
                "Chrome",
                "120.0.0",
                "Windows",
                "10",
                "desktop",
            ),
            (
                IPHONE_SAFARI,
                "Mobile Safari",
                "17.1.2",
                "iOS",
                "17.1.2",
                "mobile",
            ),
            (
                IPAD_SAFARI,
                "Mobile Safari",
                "16.6",
                "iOS",
                "16.6",
                "tablet",
            ),
            (
                ANDROID_PHONE,
                "Chrome Mobile",
                "119.0.6045",
                "Android",
                "14",
                "mobile",
            ),
            (
                ANDROID_TABLET,
                "Chrome",
                "118.0.0",
                "Android",
                "13",
                "tablet",
            ),
            (
                FIREFOX_MAC,
                "Firefox",
                "121.0",
                "Mac OS X",
                "10.15",
                "desktop",
            ),
            (GOOGLEBOT, "Googlebot", "2.1", "Other", "", "bot"),
            (BINGBOT, "bingbot", "2.0", "Other", "", "bot"),
        ];
        for (ua, browser, bv, os, ov, device) in cases {
            let got = e.user_agent(ua);
            assert_eq!(
                (
                    got.browser.as_str(),
                    got.browser_version.as_str(),
                    got.os.as_str(),
                    got.os_version.as_str(),
                    got.device_type
                ),
                (browser, bv, os, ov, device),
                "{ua}"
            );
        }
        let unknown = e.user_agent("SomethingUnheardOf");
        assert_eq!(
            (unknown.browser.as_str(), unknown.device_type),
            ("Other", "other")
        );
    }

    #[test]
    fn every_kind_of_client_gets_its_class_and_reason() {
        let mut e = enricher();
        let mut classify = |h: &Hit| {
            let ua = h.user_agent.as_deref().map(|u| e.user_agent(u));
            let c = e.classify(h, ua.as_deref());
            (c.class.as_str(), c.reason)
        };
        for (ua, want) in [
            (CHROME_WINDOWS, ("human", "no_rule_matched")),
            (IPHONE_SAFARI, ("human", "no_rule_matched")),
            (OUTLOOK_DESKTOP, ("human", "no_rule_matched")),
            (GOOGLEBOT, ("bot", "crawler_ua")),
            (BINGBOT, ("bot", "crawler_ua")),
            (HEADLESS_CHROME, ("bot", "headless_browser")),
            (GMAIL_PROXY, ("email_proxy", "gmail_image_proxy")),
            (YAHOO_PROXY, ("email_proxy", "yahoo_mail_proxy")),
            (APPLE_MPP, ("email_proxy", "apple_mail_privacy")),
            (BARRACUDA, ("scanner", "barracuda")),
            (
                "Microsoft-URLAnalyzer/1.0",
                ("scanner", "microsoft_safe_links"),
            ),
            ("Cisco IronPort Web Security", ("scanner", "cisco_ironport")),
            ("curl/8.5.0", ("bot", "http_library")),
            ("python-requests/2.31.0", ("bot", "http_library")),
        ] {
            assert_eq!(classify(&hit(Some(ua))), want, "{ua}");
        }
        assert_eq!(classify(&hit(None)), ("bot", "no_user_agent"));

        let mut h = hit(Some(CHROME_WINDOWS));
        h.head_request = true;
        assert_eq!(classify(&h), ("bot", "head_request"));
        h.prefetch = true;
        assert_eq!(
            classify(&h),
            ("prefetch", "prefetch_header"),
            "prefetch wins"
        );

        let mut h = hit(Some(CHROME_WINDOWS));
        h.asn = Some(16509);
        assert_eq!(classify(&h), ("bot", "datacenter_asn"));
        h.asn = Some(3320);
        assert_eq!(classify(&h), ("human", "no_rule_matched"));

        let mut h = hit(None);
        h.anonymized = true;
        assert_eq!(
            classify(&h),
            ("human", "anonymized"),
            "no UA by policy is not a bot"
        );
    }

    #[test]
    fn a_signed_send_time_flags_opens_that_come_too_soon() {
        let e = enricher();
        let mut h = hit(Some(CHROME_WINDOWS));
        h.sent_at_ms = Some(h.received_at_ms - 3_000);
        assert_eq!(e.classify(&h, None).reason, "open_soon_after_send");
        h.sent_at_ms = Some(h.received_at_ms - 60_000);
        assert_eq!(e.classify(&h, None).reason, "no_rule_matched");
        // A send time after the open (clock skew) is as suspicious as an instant open.
        h.sent_at_ms = Some(h.received_at_ms + 5_000);
        assert_eq!(e.classify(&h, None).reason, "open_soon_after_send");
    }

    #[test]
    fn a_signed_send_time_flags_clicks_that_come_too_soon_but_not_conversions() {
        let e = Enricher::new(&EnrichConfig {
            machine_open_seconds: 10,
            machine_click_seconds: 30,
            ..EnrichConfig::default()
        })
        .unwrap();
        let classify = |kind: &str, since_send_ms: u64| {
            let mut h = hit(Some(CHROME_WINDOWS));
            h.kind = kind.into();
            h.sent_at_ms = Some(h.received_at_ms - since_send_ms);
            let c = e.classify(&h, None);
            (c.class.as_str(), c.reason)
        };
        assert_eq!(
            classify(kind::CLICK, 2_000),
            ("scanner", "click_soon_after_send")
        );
        assert_eq!(
            classify(kind::CLICK, 20_000),
            ("scanner", "click_soon_after_send"),
            "clicks have their own limit"
        );
        assert_eq!(classify(kind::OPEN, 20_000), ("human", "no_rule_matched"));
        assert_eq!(classify(kind::CLICK, 60_000), ("human", "no_rule_matched"));
        assert_eq!(
            classify(kind::CONVERSION, 2_000),
            ("human", "no_rule_matched"),
            "a conversion is the site's, not fetched from the message"
        );
        assert_eq!(classify("pageview", 2_000), ("human", "no_rule_matched"));
        let off = Enricher::new(&EnrichConfig {
            machine_click_seconds: 0,
            ..EnrichConfig::default()
        })
        .unwrap();
        let mut h = hit(Some(CHROME_WINDOWS));
        h.kind = kind::CLICK.into();
        h.sent_at_ms = Some(h.received_at_ms);
        assert_eq!(off.classify(&h, None).reason, "no_rule_matched", "0 is off");
        h.kind = kind::OPEN.into();
        assert_eq!(
            off.classify(&h, None).reason,
            "open_soon_after_send",
            "the open rule is not the click rule"
        );
    }

    #[test]
    fn an_anonymised_hit_is_classed_by_what_its_user_agent_said_at_the_edge() {
        let e = enricher();
        let decoded = |extra: &str| {
            let json = format!(
                r#"{{"schema_version":1,"event_id":"01890a5d-ac96-774b-bcce-b302099a8057",
                "received_at_ms":1700000000123,"edge_id":"e","transport":"pixel","kind":"open",
                "site_id":"s","path":"/p.gif","anonymized":true{extra}}}"#
            );
            let h = wire::decode(json.as_bytes()).unwrap();
            assert_eq!(h.user_agent, None);
            let c = e.classify(&h, None);
            (c.class.as_str(), c.reason)
        };
        assert_eq!(
            decoded(r#","user_agent_class":{"class":"bot","reason":"http_library"}"#),
            ("bot", "http_library")
        );
        assert_eq!(
            decoded(r#","user_agent_class":{"class":"scanner","reason":"mimecast"}"#),
            ("scanner", "mimecast")
        );
        assert_eq!(
            decoded(r#","user_agent_class":{"class":"email_proxy","reason":"apple_mail_privacy"}"#),
            ("email_proxy", "apple_mail_privacy")
        );
        // An anonymised request that sent no user agent at all is a script's, as it would be
        // without the privacy signal.
        assert_eq!(
            decoded(r#","user_agent_class":{"class":"bot","reason":"no_user_agent"}"#),
            ("bot", "no_user_agent")
        );
        // A hit from an edge that sent no class (older, or a browser's user agent) is what it
        // was before.
        assert_eq!(decoded(""), ("human", "anonymized"));
        // The request's own flags still come first, as they would with the user agent.
        assert_eq!(
            decoded(
                r#","prefetch":true,"user_agent_class":{"class":"bot","reason":"http_library"}"#
            ),
            ("prefetch", "prefetch_header")
        );
    }

    #[test]
    fn the_cache_stays_bounded_and_keeps_what_is_used() {
        let mut e = Enricher::new(&EnrichConfig {
            ua_cache_entries: 4,
            ..EnrichConfig::default()
        })
        .unwrap();
        let hot = e.user_agent(CHROME_WINDOWS);
        for i in 0..50 {
            e.user_agent(&format!("agent-{i}"));
            // Used all along, so it is never evicted: the same parse comes back.
            assert!(Arc::ptr_eq(&hot, &e.user_agent(CHROME_WINDOWS)));
            assert!(e.cache.len() <= 4, "{}", e.cache.len());
        }
    }

    #[test]
    fn bad_rules_are_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("pixelpipe-ua-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("rules.json");
        std::fs::write(&path, "{\"user_agent_parsers\": 3}").unwrap();
        for (path, needle) in [
            (path.to_string_lossy().into_owned(), "not uap-core rules"),
            ("/nonexistent/rules.json".to_owned(), "cannot read"),
        ] {
            let e = Enricher::new(&EnrichConfig {
                ua_rules_path: path,
                ..EnrichConfig::default()
            })
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("enrich.ua_rules_path") && e.contains(needle),
                "{e}"
            );
        }
    }
}
