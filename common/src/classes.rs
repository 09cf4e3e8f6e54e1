//! Traffic classes, and the classification rules that need nothing but the request: its user
//! agent as sent (or its absence) and its `HEAD`/prefetch flags.
//!
//! The edge and the sink apply these same rules, in this same order. The sink classes every hit
//! with them first (then with what needs the user-agent parser or the network, in its `enrich`
//! module); the edge applies [`by_user_agent_header`] only when its privacy policy is about to
//! remove a hit's user agent, and keeps the answer on the hit
//! ([`crate::wire::Hit::user_agent_class`]) so that an anonymous `curl`, or an anonymous request
//! with no user agent at all, is still a bot. This module owns the class names, the vendor lists
//! and their order; it knows nothing of hits, parsers or configuration.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The class a hit gets (the sink's `traffic_class` column and the `class` label of
/// `pixelpipe_sink_hits_classified_total`). Stored, and on the wire, as its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficClass {
    /// No rule matched: as far as the evidence goes, a person.
    Human,
    /// A crawler, script, headless browser, HEAD request or datacenter address.
    Bot,
    /// A mail provider's image proxy (Gmail, Yahoo, Apple Mail Privacy Protection).
    EmailProxy,
    /// A corporate mail or link scanner, or an open or click too soon after sending.
    Scanner,
    /// The browser said it was prefetching or prerendering.
    Prefetch,
}

impl TrafficClass {
    /// Every class, in declaration order.
    pub const ALL: [TrafficClass; 5] = [
        TrafficClass::Human,
        TrafficClass::Bot,
        TrafficClass::EmailProxy,
        TrafficClass::Scanner,
        TrafficClass::Prefetch,
    ];

    /// The stored name and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficClass::Human => "human",
            TrafficClass::Bot => "bot",
            TrafficClass::EmailProxy => "email_proxy",
            TrafficClass::Scanner => "scanner",
            TrafficClass::Prefetch => "prefetch",
        }
    }
}

impl Serialize for TrafficClass {
    /// As its name: in JSON a string, and in RowBinary the same bytes as a `String` column
    /// holding it.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A hit's class and the rule that gave it. On the wire (only as
/// [`crate::wire::Hit::user_agent_class`]) it is `{"class":"bot","reason":"http_library"}`, and
/// only a pair that [`by_user_agent_header`] can give is read back: any other is an error, like
/// every enumerated wire value this build does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Class {
    /// The class.
    pub class: TrafficClass,
    /// Short, bounded reason, e.g. `head_request`, `crawler_ua`, `gmail_image_proxy`.
    pub reason: &'static str,
}

/// A [`Class`] as read, before its reason is checked against the rules.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClassOnWire {
    class: TrafficClass,
    reason: String,
}

impl<'de> Deserialize<'de> for Class {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Class, D::Error> {
        let wire = ClassOnWire::deserialize(deserializer)?;
        user_agent_header_classes()
            .find(|c| c.class == wire.class && c.reason == wire.reason)
            .ok_or_else(|| {
                serde::de::Error::custom(format!(
                    "no user-agent rule gives class {} with reason {:?}",
                    wire.class.as_str(),
                    wire.reason
                ))
            })
    }
}

/// Substrings of user agents that mail providers' image proxies send. These fetch the image when
/// (Gmail, Yahoo) or before (Apple) the reader opens the message; see docs/privacy.md.
const EMAIL_PROXIES: &[(&str, &str)] = &[
    ("GoogleImageProxy", "gmail_image_proxy"),
    ("YahooMailProxy", "yahoo_mail_proxy"),
    ("ymailproxy", "yahoo_mail_proxy"),
];

/// Apple Mail Privacy Protection fetches every image on delivery through Apple's proxies with
/// nothing but this token as its user agent.
const APPLE_MAIL_PRIVACY: &str = "Mozilla/5.0";

/// Substrings of user agents that corporate mail and link scanners send when they fetch every
/// image and link of a message on delivery.
const SCANNERS: &[(&str, &str)] = &[
    ("Barracuda", "barracuda"),
    ("Mimecast", "mimecast"),
    ("Proofpoint", "proofpoint"),
    ("Symantec", "symantec"),
    ("TrendMicro", "trend_micro"),
    ("Trend Micro", "trend_micro"),
    ("Sophos", "sophos"),
    ("Forcepoint", "forcepoint"),
    ("Microsoft-URLAnalyzer", "microsoft_safe_links"),
    ("SafeLinks", "microsoft_safe_links"),
    ("IronPort", "cisco_ironport"),
    ("FortiMail", "fortinet"),
    ("FireEye", "fireeye"),
];

/// Headless and automation browsers, which user-agent parsers report as ordinary browsers.
const HEADLESS: &[&str] = &[
    "HeadlessChrome",
    "PhantomJS",
    "Headless",
    "Electron/",
    "Puppeteer",
];

/// HTTP libraries and command-line clients: a script, not a person, fetched the pixel. Matched
/// at the start of the user agent, where these put their name.
const HTTP_LIBRARIES: &[&str] = &[
    "curl/",
    "Wget/",
    "python-requests/",
    "python-urllib",
    "aiohttp/",
    "Go-http-client/",
    "okhttp/",
    "Apache-HttpClient/",
    "Java/",
    "libwww-perl/",
    "node-fetch",
    "axios/",
];

/// The rules on the request alone, first match wins: a prefetch (`prefetch_header`), a `HEAD`
/// request (`head_request`), then what the user agent said: [`by_user_agent_header`] of the
/// header as sent, or, for a hit whose user agent the edge removed, the answer it kept. `None`
/// when none matched; the sink's later rules (crawler list, network, send time) decide then.
pub fn by_request(
    prefetch: bool,
    head_request: bool,
    user_agent_class: Option<Class>,
) -> Option<Class> {
    if prefetch {
        return Some(Class {
            class: TrafficClass::Prefetch,
            reason: "prefetch_header",
        });
    }
    if head_request {
        return Some(Class {
            class: TrafficClass::Bot,
            reason: "head_request",
        });
    }
    user_agent_class
}

/// The rules on the `User-Agent` header as sent: none at all is `bot` (`no_user_agent`), since
/// every browser and mail client sends one; otherwise [`by_user_agent`].
pub fn by_user_agent_header(user_agent: Option<&str>) -> Option<Class> {
    match user_agent {
        None => Some(NO_USER_AGENT),
        Some(ua) => by_user_agent(ua),
    }
}

const NO_USER_AGENT: Class = Class {
    class: TrafficClass::Bot,
    reason: "no_user_agent",
};

/// The rules on a user agent alone, in order: mail image proxies (`email_proxy`), corporate
/// scanners (`scanner`, the vendor as reason), headless browsers (`bot`, `headless_browser`) and
/// HTTP libraries (`bot`, `http_library`). `None` when none matched. A few substring scans over
/// short tables; no allocation.
pub fn by_user_agent(ua: &str) -> Option<Class> {
    use TrafficClass::{Bot, EmailProxy, Scanner};
    let class = |class, reason| Some(Class { class, reason });
    if let Some((_, reason)) = EMAIL_PROXIES.iter().find(|(s, _)| ua.contains(s)) {
        return class(EmailProxy, reason);
    }
    if ua.trim() == APPLE_MAIL_PRIVACY {
        return class(EmailProxy, "apple_mail_privacy");
    }
    if let Some((_, reason)) = SCANNERS.iter().find(|(s, _)| ua.contains(s)) {
        return class(Scanner, reason);
    }
    if HEADLESS.iter().any(|s| ua.contains(s)) {
        return class(Bot, "headless_browser");
    }
    if HTTP_LIBRARIES.iter().any(|s| ua.starts_with(s)) {
        return class(Bot, "http_library");
    }
    None
}

/// Every class and reason [`by_user_agent_header`] can give (with repeats).
fn user_agent_header_classes() -> impl Iterator<Item = Class> {
    use TrafficClass::{Bot, EmailProxy, Scanner};
    let of = |class| move |&(_, reason): &(&str, &'static str)| Class { class, reason };
    EMAIL_PROXIES
        .iter()
        .map(of(EmailProxy))
        .chain(SCANNERS.iter().map(of(Scanner)))
        .chain(
            [
                (EmailProxy, "apple_mail_privacy"),
                (Bot, "headless_browser"),
                (Bot, "http_library"),
            ]
            .map(|(class, reason)| Class { class, reason }),
        )
        .chain([NO_USER_AGENT])
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

    fn got(ua: &str) -> Option<(&'static str, &'static str)> {
        by_user_agent(ua).map(|c| (c.class.as_str(), c.reason))
    }

    #[test]
    fn user_agents_of_machines_get_their_class_and_reason() {
        for (ua, want) in [
            (
                "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
                ("email_proxy", "gmail_image_proxy"),
            ),
            (
                "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html",
                ("email_proxy", "yahoo_mail_proxy"),
            ),
            ("Mozilla/5.0", ("email_proxy", "apple_mail_privacy")),
            (" Mozilla/5.0 ", ("email_proxy", "apple_mail_privacy")),
            (
                "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))",
                ("scanner", "barracuda"),
            ),
            (
                "Microsoft-URLAnalyzer/1.0",
                ("scanner", "microsoft_safe_links"),
            ),
            ("Cisco IronPort Web Security", ("scanner", "cisco_ironport")),
            (
                "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.109 Safari/537.36",
                ("bot", "headless_browser"),
            ),
            ("curl/8.5.0", ("bot", "http_library")),
            ("python-requests/2.31.0", ("bot", "http_library")),
            ("Go-http-client/1.1", ("bot", "http_library")),
        ] {
            assert_eq!(got(ua), Some(want), "{ua}");
        }
    }

    #[test]
    fn browsers_and_unknowns_match_no_rule() {
        for ua in [
            CHROME,
            "Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            // A library's name inside another user agent is not that library.
            "Mozilla/5.0 (compatible; like curl/8.5.0)",
            "",
        ] {
            assert_eq!(got(ua), None, "{ua}");
        }
    }

    #[test]
    fn the_first_rule_wins() {
        // A scanner that fetches through a mail proxy is the proxy's fetch; a headless scanner is
        // the scanner.
        assert_eq!(
            got("GoogleImageProxy Mimecast"),
            Some(("email_proxy", "gmail_image_proxy"))
        );
        assert_eq!(
            got("HeadlessChrome Proofpoint"),
            Some(("scanner", "proofpoint"))
        );
        let req = |prefetch, head, ua| {
            by_request(prefetch, head, by_user_agent_header(ua)).map(|c| c.reason)
        };
        assert_eq!(req(true, true, Some("curl/8")), Some("prefetch_header"));
        assert_eq!(req(false, true, Some("curl/8")), Some("head_request"));
        assert_eq!(req(false, false, Some("curl/8")), Some("http_library"));
        assert_eq!(req(false, true, None), Some("head_request"));
        assert_eq!(req(false, false, None), Some("no_user_agent"));
        assert_eq!(req(false, false, Some(CHROME)), None);
        assert_eq!(by_request(false, false, None), None);
    }

    #[test]
    fn classes_read_back_only_as_a_user_agent_rule_gives_them() {
        for c in user_agent_header_classes() {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(
                json,
                format!(
                    r#"{{"class":"{}","reason":"{}"}}"#,
                    c.class.as_str(),
                    c.reason
                )
            );
            assert_eq!(serde_json::from_str::<Class>(&json).unwrap(), c);
        }
        // The rule on a missing user agent is one the edge applies before removing it, too.
        let missing = r#"{"class":"bot","reason":"no_user_agent"}"#;
        assert_eq!(
            serde_json::from_str::<Class>(missing).unwrap(),
            Class {
                class: TrafficClass::Bot,
                reason: "no_user_agent"
            }
        );
        for bad in [
            r#"{"class":"scanner","reason":"no_user_agent"}"#,
            r#"{"class":"bot","reason":"barracuda"}"#,
            r#"{"class":"bot","reason":"crawler_ua"}"#,
            r#"{"class":"human","reason":"no_rule_matched"}"#,
            r#"{"class":"robot","reason":"http_library"}"#,
            r#"{"class":"bot"}"#,
            r#"{"class":"bot","reason":"http_library","ua":"curl/8"}"#,
        ] {
            assert!(serde_json::from_str::<Class>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn class_names_are_their_serialised_form() {
        for c in TrafficClass::ALL {
            let json = serde_json::to_string(&c).unwrap();
            assert_eq!(json, format!("\"{}\"", c.as_str()));
            assert_eq!(serde_json::from_str::<TrafficClass>(&json).unwrap(), c);
        }
    }
}
