//! Every query in docs/analytics.md runs against the real server on hits that went through the
//! real pipeline (Kafka, the sink), and its answer is checked against what the fixture was built
//! to give. The queries are read out of the document, so the two cannot drift apart. The same rows
//! are then loaded into ClickHouse 26.9 (chDB) under the modern DDL, rollups and their views
//! included, and every query runs there too, those marked "modern servers only" there alone.
//!
//! Expected answers are computed from the fixture's own description (the `Spec`s below), by plain
//! Rust over those values: never copied from a server's answer.

// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::*;
use pixelpipe_common::wire;

const MINUTE: u64 = 60;
const HOUR: u64 = 3_600;
const DAY: u64 = 86_400;

/// Midnight (UTC) ten days ago. Every hit lies between it and nine days later, so all are in the
/// past, within the documented `today() - 30` and 14-day windows and the modern tables' TTLs,
/// and each one's hour and day follow from its offset.
fn base() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    (now / DAY - 10) * DAY
}

/// Who fetched a hit, and what the sink makes of that user agent (docs/privacy.md's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Agent {
    Chrome,
    IPhone,
    IPad,
    /// Apple Mail Privacy Protection's prefetch.
    AppleMpp,
    /// Gmail's image proxy: a real open.
    Gmail,
    /// A mail scanner (Barracuda).
    Scanner,
    /// A crawler.
    Bot,
    /// None: the edge removed it for a privacy signal (`anonymized`).
    Removed,
}

impl Agent {
    fn header(self) -> Option<&'static str> {
        Some(match self {
            Agent::Chrome => "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            Agent::IPhone => "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1",
            Agent::IPad => "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
            Agent::AppleMpp => "Mozilla/5.0",
            Agent::Gmail => "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
            Agent::Scanner => "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))",
            Agent::Bot => "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            Agent::Removed => return None,
        })
    }

    /// `traffic_class` and `class_reason`.
    fn class(self) -> (&'static str, &'static str) {
        match self {
            Agent::Chrome | Agent::IPhone | Agent::IPad => ("human", "no_rule_matched"),
            Agent::AppleMpp => ("email_proxy", "apple_mail_privacy"),
            Agent::Gmail => ("email_proxy", "gmail_image_proxy"),
            Agent::Scanner => ("scanner", "barracuda"),
            Agent::Bot => ("bot", "crawler_ua"),
            Agent::Removed => ("human", "anonymized"),
        }
    }

    /// `device_type` and `os` (only asked of the shop's visitors).
    fn device(self) -> (&'static str, &'static str) {
        match self {
            Agent::Chrome => ("desktop", "Windows"),
            Agent::IPhone => ("mobile", "iOS"),
            Agent::IPad => ("tablet", "iOS"),
            Agent::Removed => ("", ""),
            other => panic!("no device asked of {other:?}"),
        }
    }

    fn human(self) -> bool {
        self.class().0 == "human"
    }
}

/// One hit of the fixture, with offsets from [`base`] in seconds.
#[derive(Debug, Clone)]
struct Spec {
    at: u64,
    site: &'static str,
    kind: &'static str,
    campaign: String,
    variant: &'static str,
    msg: String,
    uid: String,
    visitor: String,
    agent: Agent,
    url: String,
    value: Option<f64>,
    plan: Option<&'static str>,
    country: &'static str,
    sent_at: Option<u64>,
}

impl Spec {
    fn new(site: &'static str, kind: &'static str, at: u64) -> Spec {
        Spec {
            at,
            site,
            kind,
            campaign: String::new(),
            variant: "",
            msg: String::new(),
            uid: String::new(),
            visitor: String::new(),
            agent: Agent::Chrome,
            url: String::new(),
            value: None,
            plan: None,
            country: "",
            sent_at: None,
        }
    }

    fn campaign(mut self, c: &str) -> Spec {
        self.campaign = c.to_owned();
        self
    }

    fn variant(mut self, v: &'static str) -> Spec {
        self.variant = v;
        self
    }

    fn msg(mut self, m: String) -> Spec {
        self.msg = m;
        self
    }

    fn agent(mut self, a: Agent) -> Spec {
        self.agent = a;
        self
    }

    fn url(mut self, u: &str) -> Spec {
        self.url = u.to_owned();
        self
    }

    fn value(mut self, v: f64) -> Spec {
        self.value = Some(v);
        self
    }

    fn plan(mut self, p: &'static str) -> Spec {
        self.plan = Some(p);
        self
    }

    fn sent_at(mut self, s: u64) -> Spec {
        self.sent_at = Some(s);
        self
    }

    /// A signed-in user: `uid`, and the edge's visitor id, which changes every day.
    fn user(mut self, uid: &str, country: &'static str, agent: Agent) -> Spec {
        self.uid = uid.to_owned();
        self.visitor = format!("{uid}-day{}", self.at / DAY);
        self.country = country;
        self.agent = agent;
        self
    }

    /// An anonymous visitor: the visitor id alone.
    fn anonymous(mut self, visitor: &str, country: &'static str, agent: Agent) -> Spec {
        self.visitor = visitor.to_owned();
        self.country = country;
        self.agent = agent;
        self
    }

    /// Who the cookbook follows: `user_id`, else `visitor_id`.
    fn identity(&self) -> &str {
        if self.uid.is_empty() {
            &self.visitor
        } else {
            &self.uid
        }
    }

    fn human(&self) -> bool {
        self.agent.human()
    }

    fn product(&self) -> bool {
        self.kind == "pageview" && self.url.contains("/product/")
    }

    fn shop_pageview(&self) -> bool {
        self.site == "shop" && self.kind == "pageview" && self.human()
    }

    /// The hit as the edge writes it to Kafka.
    fn encode(&self, base: u64) -> Vec<u8> {
        let mut hit = serde_json::json!({
            "schema_version": 1,
            "event_id": uuid::Uuid::now_v7().to_string(),
            "received_at_ms": (base + self.at) * 1000,
            "edge_id": "a",
            "transport": "pixel",
            "kind": self.kind,
            "site_id": self.site,
            "path": "/p.gif",
        });
        let fields = hit.as_object_mut().unwrap();
        for (name, text) in [
            ("campaign", &self.campaign),
            ("message_id", &self.msg),
            ("user_id", &self.uid),
            ("visitor_id", &self.visitor),
            ("url", &self.url),
        ] {
            if !text.is_empty() {
                fields.insert(name.into(), text.as_str().into());
            }
        }
        for (name, text) in [("variant", self.variant), ("geo_country", self.country)] {
            if !text.is_empty() {
                fields.insert(name.into(), text.into());
            }
        }
        match self.agent.header() {
            Some(ua) => {
                fields.insert("user_agent".into(), ua.into());
            }
            None => {
                fields.insert("anonymized".into(), true.into());
            }
        }
        if let Some(v) = self.value {
            fields.insert("value".into(), v.into());
            fields.insert("currency".into(), "EUR".into());
        }
        if let Some(plan) = self.plan {
            fields.insert("props".into(), serde_json::json!([["plan", plan]]));
        }
        if let Some(sent) = self.sent_at {
            fields.insert("signature".into(), "valid".into());
            fields.insert("sent_at_ms".into(), ((base + sent) * 1000).into());
        }
        let mut buf = Vec::new();
        wire::encode(&wire::decode(hit.to_string().as_bytes()).unwrap(), &mut buf);
        buf
    }
}

/// When the spring emails went out (all at once): the second day, 08:00.
const SPRING_SENT: u64 = DAY + 8 * HOUR;

/// The hits. Email, site `mail`: 40 emails of campaign `spring` (variant A/B), signed with their
/// send time; 20 opened, 4 of them twice, s14-s15 through Gmail's image proxy (real opens),
/// s16-s19 only by Apple Mail Privacy Protection on delivery; s0-s7 clicked (s0 twice); 6
/// conversions of 10.0 EUR with plan=pro/basic. 50 of `summer`, unsigned: 10 opened, m8-m9 only
/// by a mail scanner, which also followed their links; m0-m2 clicked; 2 conversions of 5.5 EUR,
/// m1's from a crawler.
///
/// Web, site `shop`: signed-in users u1-u7 and anonymous visitors, with campaign page views,
/// product pages, carts and conversions (see `shop` for each one's story), and an A/B test
/// `landing` of 200 visitors per variant converting 20 (A) and 34 (B).
fn fixture() -> Vec<Spec> {
    let mut hits = Vec::new();
    for i in 0..20u64 {
        let variant = if i % 2 == 0 { "A" } else { "B" };
        let spring = |kind, at| {
            Spec::new("mail", kind, at)
                .campaign("spring")
                .variant(variant)
                .msg(format!("s{i}"))
        };
        let (agent, first_open) = match i {
            14 | 15 => (Agent::Gmail, SPRING_SENT + (i + 1) * 10 * MINUTE),
            16.. => (Agent::AppleMpp, SPRING_SENT + 2 * MINUTE),
            _ => (Agent::Chrome, SPRING_SENT + (i + 1) * 10 * MINUTE),
        };
        hits.push(spring("open", first_open).agent(agent).sent_at(SPRING_SENT));
        if i < 4 {
            hits.push(spring("open", first_open + 2 * HOUR).sent_at(SPRING_SENT));
        }
        if i < 8 {
            hits.push(spring("click", first_open + 5 * MINUTE));
        }
        if i == 0 {
            hits.push(spring("click", first_open + 10 * MINUTE));
        }
        if i < 6 {
            let plan = if i < 4 { "pro" } else { "basic" };
            hits.push(
                spring("conversion", first_open + 30 * MINUTE)
                    .value(10.0)
                    .plan(plan),
            );
        }
    }
    for i in 0..10u64 {
        let summer = |kind, at| {
            Spec::new("mail", kind, at)
                .campaign("summer")
                .msg(format!("m{i}"))
        };
        let opened = 3 * DAY + 9 * HOUR + i * MINUTE;
        if i >= 8 {
            hits.push(summer("open", opened).agent(Agent::Scanner));
            hits.push(summer("click", opened + 1).agent(Agent::Scanner));
        } else {
            hits.push(summer("open", opened));
        }
        if i < 3 {
            hits.push(summer("click", opened + 5 * MINUTE));
        }
        if i < 2 {
            let agent = if i == 1 { Agent::Bot } else { Agent::Chrome };
            hits.push(
                summer("conversion", 3 * DAY + 10 * HOUR + i * MINUTE)
                    .agent(agent)
                    .value(5.5),
            );
        }
    }
    hits.extend(shop());
    hits
}

const HOME: &str = "https://shop.example/";
const PRODUCT: &str = "https://shop.example/product/42";

/// The shop. Attribution (last campaign touch within 7 days): u1 touched `newsletter` then
/// `social` and converted the next day (social); u2's only touch was 8 days before converting
/// (none); u3 converted 30 minutes after a `retarget` touch and touched `social` only afterwards
/// (retarget); u4 never touched (none); u8 converted 4 days after a `retarget` touch (retarget);
/// anon-1 touched `social` and converted the same day
/// (social); anon-2 touched `newsletter` before midnight and converted after it, under the next
/// day's visitor id (none); an anonymised visitor touched `newsletter` and converted (none: no
/// one to follow). Retargeting: u5 and u6 viewed products and never converted; u7 saw only the
/// home page; anon-3 is not signed in. Funnel (1 hour): u1 viewed and carted but converted the
/// next day (2 steps), u3 and anon-1 all three (3), u5 viewed only (1), u6 carted too late (1),
/// anon-3 viewed (1).
fn shop() -> Vec<Spec> {
    use Agent::{Chrome, IPad, IPhone, Removed};
    let pv = |at| Spec::new("shop", "pageview", at).url(HOME);
    let product = |at| Spec::new("shop", "pageview", at).url(PRODUCT);
    let cart = |at| Spec::new("shop", "add_to_cart", at).url(PRODUCT);
    let conversion = |at, value| Spec::new("shop", "conversion", at).value(value);
    let mut hits = vec![
        pv(DAY + 10 * HOUR)
            .campaign("newsletter")
            .user("u1", "DE", Chrome),
        pv(3 * DAY + 12 * HOUR)
            .campaign("social")
            .user("u1", "DE", Chrome),
        product(3 * DAY + 12 * HOUR + 5 * MINUTE).user("u1", "DE", Chrome),
        cart(3 * DAY + 12 * HOUR + 10 * MINUTE).user("u1", "DE", Chrome),
        conversion(4 * DAY + 9 * HOUR, 30.0).user("u1", "DE", Chrome),
        pv(DAY + 11 * HOUR)
            .campaign("newsletter")
            .user("u2", "FR", IPhone),
        conversion(9 * DAY + 9 * HOUR, 25.0).user("u2", "FR", IPhone),
        pv(5 * DAY + 10 * HOUR)
            .campaign("retarget")
            .user("u3", "DE", Chrome),
        product(5 * DAY + 10 * HOUR + 10 * MINUTE).user("u3", "DE", Chrome),
        cart(5 * DAY + 10 * HOUR + 20 * MINUTE).user("u3", "DE", Chrome),
        conversion(5 * DAY + 10 * HOUR + 30 * MINUTE, 20.0).user("u3", "DE", Chrome),
        pv(5 * DAY + 11 * HOUR)
            .campaign("social")
            .user("u3", "DE", Chrome),
        conversion(2 * DAY + 15 * HOUR, 15.0).user("u4", "US", IPad),
        pv(2 * DAY + 9 * HOUR)
            .campaign("retarget")
            .user("u8", "GB", Chrome),
        conversion(6 * DAY + 9 * HOUR, 18.0).user("u8", "GB", Chrome),
        product(2 * DAY + 10 * HOUR).user("u5", "FR", IPhone),
        product(8 * DAY + 10 * HOUR).user("u5", "FR", IPhone),
        product(4 * DAY + 16 * HOUR).user("u6", "DE", Chrome),
        cart(4 * DAY + 17 * HOUR + 30 * MINUTE).user("u6", "DE", Chrome),
        pv(4 * DAY + 18 * HOUR).user("u7", "US", Chrome),
        pv(6 * DAY + 14 * HOUR)
            .campaign("social")
            .anonymous("anon-1", "FR", IPhone),
        product(6 * DAY + 14 * HOUR + 5 * MINUTE).anonymous("anon-1", "FR", IPhone),
        cart(6 * DAY + 14 * HOUR + 10 * MINUTE).anonymous("anon-1", "FR", IPhone),
        conversion(6 * DAY + 14 * HOUR + 20 * MINUTE, 12.0).anonymous("anon-1", "FR", IPhone),
        pv(6 * DAY + 23 * HOUR + 50 * MINUTE)
            .campaign("newsletter")
            .anonymous("anon-2-day6", "DE", Chrome),
        conversion(7 * DAY + 10 * MINUTE, 9.0).anonymous("anon-2-day7", "DE", Chrome),
        pv(7 * DAY + 11 * HOUR + 50 * MINUTE)
            .campaign("newsletter")
            .anonymous("", "DE", Removed),
        conversion(7 * DAY + 12 * HOUR, 8.0).anonymous("", "DE", Removed),
        product(8 * DAY + 15 * HOUR).anonymous("anon-3", "US", IPad),
    ];
    for (variant, start, converting) in [("A", 10 * HOUR, 20), ("B", 12 * HOUR, 34)] {
        for i in 0..200u64 {
            let visitor = format!("ab-{variant}-{i}");
            let country = ["DE", "FR", "US", "GB"][i as usize % 4];
            let agent = match i % 5 {
                0 => IPhone,
                1 => IPad,
                _ => Chrome,
            };
            let seen = 2 * DAY + start + i * 20;
            hits.push(
                Spec::new("shop", "pageview", seen)
                    .url("https://shop.example/landing")
                    .campaign("landing")
                    .variant(variant)
                    .anonymous(&visitor, country, agent),
            );
            if i < converting {
                hits.push(
                    Spec::new("shop", "conversion", seen + 5 * MINUTE)
                        .campaign("landing")
                        .variant(variant)
                        .anonymous(&visitor, country, agent),
                );
            }
        }
    }
    hits
}

/// ClickHouse's `round(x, digits)` and its shortest printing of the result.
fn round(x: f64, digits: i32) -> String {
    let scale = 10f64.powi(digits);
    format!("{}", (x * scale).round() / scale)
}

/// `erfc` by Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7): the test's own, so
/// the p-value is not checked against the server's function.
fn erfc(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-x * x).exp();
    if x >= 0.0 {
        1.0 - erf
    } else {
        1.0 + erf
    }
}

/// Rows as TSV, one `\n`-terminated line each.
fn lines<I: IntoIterator<Item = String>>(rows: I) -> String {
    rows.into_iter().map(|r| r + "\n").collect()
}

/// What every query block of the document must answer, by its heading and whether it is marked
/// for modern servers only.
struct Expected {
    specs: Vec<Spec>,
    base: u64,
}

/// Per-variant visitors who saw a page of the experiment, and how many of them converted.
type Arms = BTreeMap<(String, &'static str), (u64, u64)>;

impl Expected {
    fn count_by<K: Ord>(
        &self,
        keep: impl Fn(&Spec) -> bool,
        key: impl Fn(&Spec) -> K,
    ) -> BTreeMap<K, u64> {
        let mut out = BTreeMap::new();
        for s in self.specs.iter().filter(|s| keep(s)) {
            *out.entry(key(s)).or_insert(0) += 1;
        }
        out
    }

    fn distinct_by<K: Ord, V: Ord>(
        &self,
        keep: impl Fn(&Spec) -> bool,
        key: impl Fn(&Spec) -> K,
        value: impl Fn(&Spec) -> V,
    ) -> BTreeMap<K, BTreeSet<V>> {
        let mut out: BTreeMap<K, BTreeSet<V>> = BTreeMap::new();
        for s in self.specs.iter().filter(|s| keep(s)) {
            out.entry(key(s)).or_default().insert(value(s));
        }
        out
    }

    /// (campaign, currency) -> (conversions, value) of the conversions `keep` keeps.
    fn conversions(
        &self,
        keep: impl Fn(&Spec) -> bool,
    ) -> BTreeMap<(String, &'static str), (u64, f64)> {
        let mut out = BTreeMap::new();
        for s in self.specs.iter().filter(|s| s.kind == "conversion") {
            let currency = if s.value.is_some() { "EUR" } else { "" };
            let e = out
                .entry((s.campaign.clone(), currency))
                .or_insert((0, 0.0));
            if keep(s) {
                e.0 += 1;
                e.1 += s.value.unwrap_or(0.0);
            }
        }
        out
    }

    fn arms(&self) -> Arms {
        let mut seen: BTreeMap<(String, &'static str, String), (bool, bool)> = BTreeMap::new();
        for s in self.specs.iter().filter(|s| {
            s.site == "shop" && !s.variant.is_empty() && s.human() && !s.identity().is_empty()
        }) {
            let e = seen
                .entry((s.campaign.clone(), s.variant, s.identity().to_owned()))
                .or_default();
            e.0 |= s.kind == "pageview";
            e.1 |= s.kind == "conversion";
        }
        let mut arms = Arms::new();
        for ((experiment, variant, _), (viewed, converted)) in seen {
            if viewed {
                let e = arms.entry((experiment, variant)).or_default();
                e.0 += 1;
                e.1 += u64::from(converted);
            }
        }
        arms
    }

    /// The pooled two-proportion z and its two-sided p-value, B against A.
    fn z_test(&self) -> (u64, u64, u64, u64, f64, f64) {
        let arms = self.arms();
        let (na, xa) = arms[&("landing".to_owned(), "A")];
        let (nb, xb) = arms[&("landing".to_owned(), "B")];
        let (pa, pb) = (xa as f64 / na as f64, xb as f64 / nb as f64);
        let pooled = (xa + xb) as f64 / (na + nb) as f64;
        let z = (pb - pa) / (pooled * (1.0 - pooled) * (1.0 / na as f64 + 1.0 / nb as f64)).sqrt();
        (na, xa, nb, xb, z, erfc(z.abs() / std::f64::consts::SQRT_2))
    }

    /// The last-touch campaign of every human conversion of the shop: the campaign of the latest
    /// campaign-bearing human hit of the same visitor at or before it, within 7 days.
    fn attribution(&self) -> BTreeMap<String, (u64, f64)> {
        let mut out: BTreeMap<String, (u64, f64)> = BTreeMap::new();
        for c in self
            .specs
            .iter()
            .filter(|s| s.site == "shop" && s.kind == "conversion" && s.human())
        {
            let touch = self
                .specs
                .iter()
                .filter(|t| {
                    t.site == "shop"
                        && !t.campaign.is_empty()
                        && t.kind != "conversion"
                        && t.human()
                        && !t.identity().is_empty()
                        && t.identity() == c.identity()
                        && t.at <= c.at
                        && t.at + 7 * DAY > c.at
                })
                .max_by_key(|t| t.at);
            let campaign = touch.map_or("(none)".to_owned(), |t| t.campaign.clone());
            let e = out.entry(campaign).or_default();
            e.0 += 1;
            e.1 += c.value.unwrap_or(0.0);
        }
        out
    }

    /// Checks one query's answer; panics naming the query when it is wrong.
    fn check(&self, heading: &str, modern_only: bool, sql: &str, got: &str) {
        let want = match (heading, modern_only) {
            ("Exact counts", false) => {
                let n = self.specs.len();
                format!("{n}\t{n}\n")
            }
            ("Hits per kind per day", false) => lines(
                self.count_by(|_| true, |s| (date(self.base + s.at), s.kind))
                    .into_iter()
                    .map(|((day, kind), n)| format!("{day}\t{kind}\t{n}")),
            ),
            ("Email open rate per campaign", false) => {
                let opened = self.distinct_by(
                    |s| s.kind == "open",
                    |s| s.campaign.clone(),
                    |s| s.msg.clone(),
                );
                lines(sends().map(|(campaign, sent)| {
                    let o = opened[campaign].len();
                    format!(
                        "{campaign}\t{sent}\t{o}\t{}",
                        round(o as f64 / sent as f64, 3)
                    )
                }))
            }
            ("Human and raw open rate, and click rate, per campaign", false) => {
                let messages = |keep: &dyn Fn(&Spec) -> bool, campaign: &str| {
                    self.specs
                        .iter()
                        .filter(|s| s.campaign == campaign && keep(s))
                        .map(|s| s.msg.clone())
                        .collect::<BTreeSet<_>>()
                        .len()
                };
                lines(sends().map(|(campaign, sent)| {
                    let raw_opened = messages(&|s| s.kind == "open", campaign);
                    let human_opened = messages(&|s| s.kind == "open" && human_open(s), campaign);
                    let raw_clicked = messages(&|s| s.kind == "click", campaign);
                    let human_clicked = messages(&|s| s.kind == "click" && s.human(), campaign);
                    let rate = |n: usize| round(n as f64 / sent as f64, 3);
                    format!(
                        "{campaign}\t{sent}\t{raw_opened}\t{human_opened}\t{raw_clicked}\t{human_clicked}\t{}\t{}\t{}",
                        rate(raw_opened),
                        rate(human_opened),
                        rate(human_clicked)
                    )
                }))
            }
            ("Time to first open", false) => {
                let mut first: BTreeMap<(String, String), u64> = BTreeMap::new();
                for s in self
                    .specs
                    .iter()
                    .filter(|s| s.kind == "open" && s.sent_at.is_some() && human_open(s))
                {
                    let seconds = s.at - s.sent_at.unwrap();
                    let e = first
                        .entry((s.campaign.clone(), s.msg.clone()))
                        .or_insert(seconds);
                    *e = (*e).min(seconds);
                }
                let mut per_campaign: BTreeMap<String, Vec<u64>> = BTreeMap::new();
                for ((campaign, _), seconds) in first {
                    per_campaign.entry(campaign).or_default().push(seconds);
                }
                lines(per_campaign.into_iter().map(|(campaign, s)| {
                    let avg = s.iter().sum::<u64>() as f64 / s.len() as f64;
                    let within = s.iter().filter(|x| **x <= HOUR).count();
                    format!(
                        "{campaign}\t{}\t{}\t{within}",
                        s.len(),
                        round(avg / 60.0, 1)
                    )
                }))
            }
            ("Conversions and value per campaign", false) => {
                let mut rows: Vec<_> = self.conversions(|_| true).into_iter().collect();
                rows.sort_by(|a, b| b.1 .1.total_cmp(&a.1 .1));
                lines(rows.into_iter().map(|((campaign, currency), (n, value))| {
                    format!("{campaign}\t{currency}\t{n}\t{}", round(value, 2))
                }))
            }
            ("Conversions excluding bots", false) => {
                let all = self.conversions(|_| true);
                let kept =
                    self.conversions(|s| matches!(s.agent.class().0, "human" | "email_proxy"));
                lines(all.into_iter().map(|(key, (raw, _))| {
                    let (n, value) = kept[&key];
                    format!("{}\t{}\t{raw}\t{n}\t{}", key.0, key.1, round(value, 2))
                }))
            }
            ("Last-touch attribution within 7 days", _) => lines(
                self.attribution()
                    .into_iter()
                    .map(|(campaign, (n, value))| format!("{campaign}\t{n}\t{}", round(value, 2))),
            ),
            ("A custom property", false) => lines(
                self.count_by(
                    |s| s.kind == "conversion" && s.plan.is_some(),
                    |s| s.plan.unwrap(),
                )
                .into_iter()
                .map(|(plan, n)| format!("{plan}\t{n}")),
            ),
            ("Variants compared, per email opened", false) => {
                let opens = self.distinct_by(
                    |s| !s.variant.is_empty() && s.kind == "open",
                    |s| (s.campaign.clone(), s.variant),
                    |s| s.msg.clone(),
                );
                let conversions = self.count_by(
                    |s| !s.variant.is_empty() && s.kind == "conversion",
                    |s| (s.campaign.clone(), s.variant),
                );
                let keys: BTreeSet<_> = self
                    .specs
                    .iter()
                    .filter(|s| !s.variant.is_empty())
                    .map(|s| (s.campaign.clone(), s.variant))
                    .collect();
                lines(keys.into_iter().map(|key| {
                    let o = opens.get(&key).map_or(0, BTreeSet::len);
                    let c = conversions.get(&key).copied().unwrap_or(0);
                    format!(
                        "{}\t{}\t{o}\t{c}\t{}",
                        key.0,
                        key.1,
                        round(c as f64 / o.max(1) as f64, 3)
                    )
                }))
            }
            ("Conversion per variant", false) => lines(self.arms().into_iter().map(
                |((experiment, variant), (n, x))| {
                    format!(
                        "{experiment}\t{variant}\t{n}\t{x}\t{}",
                        round(x as f64 / n as f64, 4)
                    )
                },
            )),
            ("Is the difference significant? Two-proportion z-test", modern_only) => {
                let (na, xa, nb, xb, z, p) = self.z_test();
                let fields: Vec<&str> = got.trim_end().split('\t').collect();
                let number = |i: usize| -> f64 { fields[i].parse().unwrap() };
                let (z_at, p_at) = if modern_only {
                    assert_eq!(fields.len(), 3, "{got}");
                    (1, 2)
                } else {
                    assert_eq!(fields.len(), 8, "{got}");
                    assert_eq!(
                        fields[..5],
                        [
                            "landing",
                            &na.to_string(),
                            &xa.to_string(),
                            &nb.to_string(),
                            &xb.to_string()
                        ],
                        "the counts the test needs:\n{sql}"
                    );
                    let uplift = xb as f64 / nb as f64 - xa as f64 / na as f64;
                    assert!((number(5) - uplift).abs() < 1e-4, "uplift {got}");
                    (6, 7)
                };
                assert_eq!(fields[0], "landing");
                // Rounded to 3 and 4 places by the query; the test's own z and p are exact.
                assert!(
                    (number(z_at) - z).abs() <= 6e-4,
                    "z {} against {z}:\n{sql}",
                    number(z_at)
                );
                assert!(
                    (number(p_at) - p).abs() <= 6e-5,
                    "p {} against {p}:\n{sql}",
                    number(p_at)
                );
                return;
            }
            ("Retargeting audience", false) => {
                let converted: BTreeSet<&str> = self
                    .specs
                    .iter()
                    .filter(|s| s.site == "shop" && s.kind == "conversion")
                    .map(|s| s.uid.as_str())
                    .collect();
                let mut views: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
                for s in self.specs.iter().filter(|s| {
                    s.site == "shop"
                        && s.product()
                        && s.human()
                        && !s.uid.is_empty()
                        && !converted.contains(s.uid.as_str())
                }) {
                    let e = views.entry(&s.uid).or_default();
                    e.0 += 1;
                    e.1 = e.1.max(s.at);
                }
                lines(
                    views.into_iter().map(|(uid, (n, last))| {
                        format!("{uid}\t{n}\t{}", datetime(self.base + last))
                    }),
                )
            }
            ("Funnel", false) => {
                // Worked out by hand from the story in `shop`: six visitors viewed a product
                // (u1, u3, u5, u6, anon-1, anon-3), three of them carted within the hour (u1,
                // u3, anon-1), two converted within it (u3, anon-1).
                "6\t3\t2\n".to_owned()
            }
            ("Page views by country", false) => {
                let pageviews = self.count_by(Spec::shop_pageview, |s| s.country);
                let visitors = self.distinct_by(
                    |s| s.shop_pageview() && !s.visitor.is_empty(),
                    |s| s.country,
                    |s| s.visitor.clone(),
                );
                let mut rows: Vec<_> = pageviews.into_iter().collect();
                rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
                lines(rows.into_iter().map(|(country, n)| {
                    format!(
                        "{country}\t{n}\t{}",
                        visitors.get(country).map_or(0, BTreeSet::len)
                    )
                }))
            }
            ("Page views by device", false) => {
                let mut rows: Vec<_> = self
                    .count_by(Spec::shop_pageview, |s| s.agent.device())
                    .into_iter()
                    .collect();
                rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                lines(
                    rows.into_iter()
                        .map(|((device, os), n)| format!("{device}\t{os}\t{n}")),
                )
            }
            ("Traffic by class", false) => lines(
                self.count_by(|_| true, |s| s.agent.class())
                    .into_iter()
                    .map(|((class, reason), n)| format!("{class}\t{reason}\t{n}")),
            ),
            ("What was not stored, and why", false) => "undecodable\t1\n".to_owned(),
            ("Daily page views and visitors, from the daily rollup", false) => {
                let pageviews = self.count_by(Spec::shop_pageview, |s| date(self.base + s.at));
                let visitors = self.distinct_by(
                    |s| s.shop_pageview() && !s.visitor.is_empty(),
                    |s| date(self.base + s.at),
                    |s| s.visitor.clone(),
                );
                lines(pageviews.into_iter().map(|(day, n)| {
                    format!(
                        "{day}\t{n}\t{}",
                        visitors.get(&day).map_or(0, BTreeSet::len)
                    )
                }))
            }
            ("Opens per hour by traffic class, from the hourly rollup", false) => lines(
                self.count_by(
                    |s| s.site == "mail" && s.kind == "open" && s.campaign == "spring",
                    |s| (datetime(self.base + s.at / HOUR * HOUR), s.agent.class().0),
                )
                .into_iter()
                .map(|((hour, class), n)| format!("{hour}\t{class}\t{n}")),
            ),
            ("Country and device over a range, from the daily rollup", false) => {
                let key = |s: &Spec| (s.country, s.agent.device().0);
                let pageviews = self.count_by(Spec::shop_pageview, key);
                let visitors = self.distinct_by(
                    |s| s.shop_pageview() && !s.visitor.is_empty(),
                    key,
                    |s| s.visitor.clone(),
                );
                let mut rows: Vec<_> = pageviews.into_iter().collect();
                rows.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
                lines(rows.into_iter().map(|((country, device), n)| {
                    let v = visitors.get(&(country, device)).map_or(0, BTreeSet::len);
                    format!("{country}\t{device}\t{n}\t{v}")
                }))
            }
            ("Hits per campaign and kind over a range, from the daily rollup", false) => lines(
                self.count_by(|s| s.site == "shop", |s| (s.campaign.clone(), s.kind))
                    .into_iter()
                    .map(|((campaign, kind), n)| format!("{campaign}\t{kind}\t{n}")),
            ),
            other => panic!(
                "docs/analytics.md has a query with no expected answer here: {other:?}\n{sql}"
            ),
        };
        assert_eq!(
            got,
            want,
            "{heading}{}:\n{sql}",
            if modern_only { " (modern)" } else { "" }
        );
    }
}

/// The number of emails sent per campaign, as the document's inline table has it.
fn sends() -> impl Iterator<Item = (&'static str, u64)> {
    [("spring", 40), ("summer", 50)].into_iter()
}

/// An open by a person: in their mail client, or through a proxy that fetches when they open.
fn human_open(s: &Spec) -> bool {
    s.human() || s.agent == Agent::Gmail
}

/// A SQL block of the document: the heading it is under, whether it is marked for modern servers
/// only, and its text with the table names pointed at the test's tables.
struct Block {
    heading: String,
    modern_only: bool,
    sql: String,
}

fn blocks(doc: &str, prefix: &str) -> Vec<Block> {
    let mut heading = String::new();
    let mut out = Vec::new();
    let mut sql: Option<String> = None;
    for line in doc.lines() {
        match (&mut sql, line) {
            (None, "```sql") => sql = Some(String::new()),
            (Some(text), "```") => {
                out.push(Block {
                    heading: heading.clone(),
                    modern_only: text.starts_with("-- modern servers only"),
                    sql: text.replace("pixelpipe.", &format!("pixelpipe.{prefix}")),
                });
                sql = None;
            }
            (Some(text), line) => {
                text.push_str(line);
                text.push('\n');
            }
            (None, line) if line.starts_with('#') => {
                heading = line.trim_start_matches('#').trim().to_owned();
            }
            (None, _) => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker, ClickHouse and chDB: deploy/local/test.sh starts them"
)]
async fn every_documented_query_runs_and_answers_right() {
    let url = clickhouse_url();
    let base = base();
    let specs = fixture();
    let mut payloads: Vec<Vec<u8>> = specs.iter().map(|s| s.encode(base)).collect();
    let total = payloads.len() as u64;
    payloads.push(b"not a hit".to_vec());
    let prefix = store_through_a_sink("analytics", payloads, total, 1).await;

    let blocks = blocks(include_str!("../../docs/analytics.md"), &prefix);
    let expected = Expected { specs, base };
    let mut checked = BTreeSet::new();
    for b in blocks.iter().filter(|b| !b.modern_only) {
        let got = tsv(&url, &b.sql).await;
        expected.check(&b.heading, false, &b.sql, &got);
        checked.insert(b.heading.clone());
    }
    assert!(
        checked.len() >= 20,
        "every section's query ran: {checked:?}"
    );

    // The same rows under the modern DDL: every query again, the modern-only ones included.
    let queries: Vec<String> = blocks.iter().map(|b| b.sql.clone()).collect();
    let answers = on_a_modern_server(&url, &prefix, &queries).await;
    for (b, got) in blocks.iter().zip(&answers) {
        expected.check(&b.heading, b.modern_only, &b.sql, got);
    }
    assert!(blocks.iter().filter(|b| b.modern_only).count() >= 2);
}
