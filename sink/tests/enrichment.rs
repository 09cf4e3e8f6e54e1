//! Enrichment and retention against the real broker and ClickHouse: real user agents and request
//! signals go through the edge, Kafka and the sink, and the stored rows carry the device and the
//! traffic class; rows past retention are deleted on a server without TTL.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::edge::{http, privacy_config};
use common::*;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1.2 Mobile/15E148 Safari/604.1";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const GMAIL_PROXY: &str =
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
const HEADLESS: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.6099.109 Safari/537.36";

/// (case, method, user agent, client IP via the trusted proxy, extra header)
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
);

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct Enriched {
    case: String,
    browser: String,
    browser_version: String,
    os: String,
    device_type: String,
    traffic_class: String,
    class_reason: String,
    asn: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_user_agents_and_signals_are_parsed_and_classified() {
    let p = Pipeline::start_with(
        "enrich",
        1,
        |topic| {
            let mut c = privacy_config(topic);
            // Keep the user agents: GPC/DNT are not sent here, but be explicit.
            c.privacy.ip_mode = pixelpipe_ingest::privacy::IpMode::Truncate;
            c
        },
        // 1.0.0.0/24 is AS15169 in the MaxMind test ASN database.
        |s| s.enrich.datacenter_asns = vec![15169],
    )
    .await;
    let addr = p.edge.public;
    let cases: [Case; 9] = [
        ("chrome", "GET", CHROME, "", None),
        ("iphone", "GET", IPHONE, "", None),
        ("googlebot", "GET", GOOGLEBOT, "", None),
        ("gmail", "GET", GMAIL_PROXY, "", None),
        ("apple_mpp", "GET", "Mozilla/5.0", "", None),
        ("headless", "GET", HEADLESS, "", None),
        ("head", "HEAD", CHROME, "", None),
        (
            "prefetch",
            "GET",
            CHROME,
            "",
            Some(("Sec-Purpose", "prefetch")),
        ),
        ("cloud", "GET", CHROME, "1.0.0.1", None),
    ];
    for (case, method, ua, ip, extra) in cases {
        let mut headers = vec![("User-Agent", ua)];
        if !ip.is_empty() {
            headers.push(("X-Forwarded-For", ip));
        }
        headers.extend(extra);
        let r = http(
            addr,
            method,
            &format!("/p.gif?site=s&e=open&case={case}"),
            &headers,
            b"",
        );
        assert_eq!(r.status, 200, "{case}");
    }
    let n = wait_for(
        &p.url,
        &format!("SELECT count() FROM {}", p.table),
        cases.len() as u64,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(n, cases.len() as u64);
    let rows: Vec<Enriched> = ch(&p.url)
        .query(&format!(
            "SELECT prop_values[indexOf(prop_keys, 'case')] AS case, browser, browser_version, os,
                    device_type, traffic_class, class_reason, asn
             FROM {} ORDER BY case",
            p.table
        ))
        .fetch_all()
        .await
        .unwrap();
    let got: Vec<(&str, &str, &str, &str, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.case.as_str(),
                r.browser.as_str(),
                r.os.as_str(),
                r.device_type.as_str(),
                r.traffic_class.as_str(),
                r.class_reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "apple_mpp",
                "Other",
                "Other",
                "other",
                "email_proxy",
                "apple_mail_privacy"
            ),
            (
                "chrome",
                "Chrome",
                "Windows",
                "desktop",
                "human",
                "no_rule_matched"
            ),
            (
                "cloud",
                "Chrome",
                "Windows",
                "desktop",
                "bot",
                "datacenter_asn"
            ),
            (
                "gmail",
                "GmailImageProxy",
                "Windows",
                "desktop",
                "email_proxy",
                "gmail_image_proxy"
            ),
            (
                "googlebot",
                "Googlebot",
                "Other",
                "bot",
                "bot",
                "crawler_ua"
            ),
            (
                "head",
                "Chrome",
                "Windows",
                "desktop",
                "bot",
                "head_request"
            ),
            (
                "headless",
                "HeadlessChrome",
                "Linux",
                "desktop",
                "bot",
                "headless_browser"
            ),
            (
                "iphone",
                "Mobile Safari",
                "iOS",
                "mobile",
                "human",
                "no_rule_matched"
            ),
            (
                "prefetch",
                "Chrome",
                "Windows",
                "desktop",
                "prefetch",
                "prefetch_header"
            ),
        ]
    );
    let chrome = rows.iter().find(|r| r.case == "chrome").unwrap();
    assert_eq!(chrome.browser_version, "120.0.0");
    let cloud = rows.iter().find(|r| r.case == "cloud").unwrap();
    assert_eq!(
        cloud.asn, 15169,
        "the edge's ASN lookup is what the rule used"
    );
    p.sink
        .wait_metric("pixelpipe_sink_hits_classified_total{class=\"bot\"}", 4.0)
        .await;
    assert_eq!(
        p.sink
            .metric("pixelpipe_sink_hits_classified_total{class=\"human\"}")
            .await,
        2.0
    );
    p.sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_what_is_older_than_each_tables_limit() {
    let prefix = format!("{}_", unique("retain"));
    let mut config = sink_config("unused", &prefix);
    config.clickhouse.retention_days = 30;
    config.clickhouse.bad_hits_retention_days = 7;
    pixelpipe_sink::migrate(&config).await.unwrap();
    let url = clickhouse_url();
    let client = ch(&url);
    let hits = format!("pixelpipe.{prefix}hits");
    let bad = format!("pixelpipe.{prefix}bad_hits");
    // Ages in days: hits keep 30 (whole months are dropped, so 100 and 400 go, and 31 might stay
    // until its month is over; it is left out), bad_hits keep 7 exactly.
    for (i, days) in [1u32, 10, 29, 100, 400].iter().enumerate() {
        client
            .query(&format!(
                "INSERT INTO {hits} (event_id, received_at, site_id, kind, kafka_offset)
                 SELECT generateUUIDv4(), now() - {days} * 86400, 's', 'open', {i}"
            ))
            .execute()
            .await
            .unwrap();
        client
            .query(&format!(
                "INSERT INTO {bad} (kafka_topic, kafka_offset, reason, seen_at)
                 SELECT 't', {i}, 'undecodable', now() - {days} * 86400"
            ))
            .execute()
            .await
            .unwrap();
    }
    let sent = pixelpipe_sink::delete_expired(&config).await.unwrap();
    assert!(
        sent.iter().filter(|s| s.contains("DROP PARTITION")).count() == 2
            && sent.iter().filter(|s| s.contains("DELETE")).count() == 1,
        "two old months dropped, bad hits deleted: {sent:?}"
    );
    // Deletes are mutations, applied in the background: wait for the counts to settle.
    let kept_hits = wait_for(
        &url,
        &format!("SELECT count() FROM {hits}"),
        3,
        Duration::from_secs(30),
    )
    .await;
    let kept_bad = wait_for(
        &url,
        &format!("SELECT count() FROM {bad}"),
        1,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        (kept_hits, kept_bad),
        (3, 1),
        "hits 1, 10 and 29 days old stay; of the bad hits only the day-old one"
    );
    assert_eq!(
        pixelpipe_sink::delete_expired(&config).await.unwrap(),
        Vec::<String>::new(),
        "nothing left to remove: no statement is sent"
    );
}

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct Signed {
    msg: String,
    kind: String,
    signature: String,
    sent_at: u32,
    unverified: u8,
    traffic_class: String,
    class_reason: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_send_times_and_unverified_conversions_reach_clickhouse() {
    use pixelpipe_ingest::links::{ConversionPolicy, LinkRequest, Links};
    let key = ("k1".to_owned(), "sink-test-secret-0123456789".to_owned());
    let p = Pipeline::start("signed", 1, |topic| {
        let mut c = common::edge::test_config(topic);
        c.links.keys.insert(key.0.clone(), key.1.clone());
        c.links.unsigned_conversions = ConversionPolicy::Flag;
        c
    })
    .await;
    let mut links_config = pixelpipe_ingest::links::LinksConfig::default();
    links_config.keys.insert(key.0.clone(), key.1.clone());
    let links = Links::new(&links_config).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let url = |msg: &str, kind: &str, sent: Option<u64>, sign: bool| {
        links
            .build(&LinkRequest {
                base_url: String::new(),
                site: "s".into(),
                kind: Some(kind.into()),
                params: vec![("msg".into(), msg.into())],
                sign,
                sent_at_unix_secs: sent,
                ..LinkRequest::default()
            })
            .unwrap()
    };
    let targets = [
        // Opened within a second of sending: a machine on delivery.
        url("instant", "open", Some(now), true),
        // Opened an hour later.
        url("later", "open", Some(now - 3600), true),
        // A send time on an unsigned URL is not believed.
        format!("/p.gif?site=s&e=open&msg=unsigned&st={now}"),
        url("conv-signed", "conversion", None, true),
        url("conv-unsigned", "conversion", None, false),
    ];
    let addr = p.edge.public;
    for t in &targets {
        let r = http(addr, "GET", t, &[("User-Agent", CHROME)], b"");
        assert_eq!(r.status, 200, "{t}");
    }
    let n = wait_for(
        &p.url,
        &format!("SELECT count() FROM {}", p.table),
        targets.len() as u64,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(n, targets.len() as u64);
    let rows: Vec<Signed> = ch(&p.url)
        .query(&format!(
            "SELECT message_id AS msg, kind, signature, toUInt32(sent_at) AS sent_at, unverified,
                    traffic_class, class_reason
             FROM {} ORDER BY msg",
            p.table
        ))
        .fetch_all()
        .await
        .unwrap();
    let got: Vec<(&str, &str, &str, bool, u8, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.msg.as_str(),
                r.kind.as_str(),
                r.signature.as_str(),
                r.sent_at > 0,
                r.unverified,
                r.class_reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "conv-signed",
                "conversion",
                "valid",
                false,
                0,
                "no_rule_matched"
            ),
            (
                "conv-unsigned",
                "conversion",
                "",
                false,
                1,
                "no_rule_matched"
            ),
            ("instant", "open", "valid", true, 0, "open_soon_after_send"),
            ("later", "open", "valid", true, 0, "no_rule_matched"),
            ("unsigned", "open", "", false, 0, "no_rule_matched"),
        ]
    );
    let instant = rows.iter().find(|r| r.msg == "instant").unwrap();
    assert_eq!(
        (instant.traffic_class.as_str(), u64::from(instant.sent_at)),
        ("scanner", now)
    );
    p.sink.stop().await;
}
