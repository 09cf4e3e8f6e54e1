//! End to end, over the real services: hits sent to a real edge go through the real broker and
//! a real sink into the real ClickHouse server, and the rows carry what the edge recorded, what
//! its privacy policy and signed links decided, and what the sink's enrichment added.
//!
//! These live with the edge because they need both services, and the sink does not depend on
//! the edge (the edge's tests may depend on the sink).
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

#[path = "../../sink/tests/common/mod.rs"]
mod sink;
// The broker helpers, loaded once by the sink's helpers, serve the edge's helpers too.
use sink::kafka;
#[path = "common/edge.rs"]
mod edge;

use std::time::Duration;

use edge::*;
use kafka::*;
use pixelpipe_ingest::links::{ConversionPolicy, LinkRequest, Links, LinksConfig};
use pixelpipe_ingest::privacy::IpMode;
use pixelpipe_ingest::Config;
use pixelpipe_sink::SinkConfig;
use sink::{ch, clickhouse_url, create_topics, number, sink_config, unique, wait_for, RunningSink};

/// The whole pipeline for one test: its topics, an edge and a sink, and the table they fill.
struct Pipeline {
    edge: RunningEdge,
    sink: RunningSink,
    url: String,
    table: String,
}

impl Pipeline {
    /// Creates `name`'s topics, starts an edge with `edge_config(topic)` and a sink, and waits
    /// until the edge is ready.
    async fn start(
        name: &str,
        partitions: i32,
        edge_config: impl FnOnce(&str) -> Config,
    ) -> Pipeline {
        Pipeline::start_with(name, partitions, edge_config, |_| {}).await
    }

    /// [`Pipeline::start`], with the sink's configuration adjusted by `sink`.
    async fn start_with(
        name: &str,
        partitions: i32,
        edge_config: impl FnOnce(&str) -> Config,
        sink: impl FnOnce(&mut SinkConfig),
    ) -> Pipeline {
        let topic = unique_topic(name);
        create_topics(&topic, partitions).await;
        let prefix = format!("{}_", unique(name));
        let edge = RunningEdge::start(edge_config(&topic));
        let mut sink_config = sink_config(&topic, &prefix);
        sink(&mut sink_config);
        let sink = RunningSink::start(sink_config);
        assert!(
            edge.wait_ready(true, Duration::from_secs(20)).await,
            "edge never became ready"
        );
        Pipeline {
            edge,
            sink,
            url: clickhouse_url(),
            table: format!("pixelpipe.{prefix}hits"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn hits_flow_from_the_edge_into_clickhouse_with_every_field() {
    let Pipeline {
        edge,
        sink,
        url,
        table,
    } = Pipeline::start("e2e", 3, test_config).await;

    let addr = edge.public;
    tokio::task::spawn_blocking(move || {
        for i in 0..30 {
            let target = format!("/p.gif?site=shop&e=open&campaign=spring&variant=B&msg=m{i}&uid=u{i}&seq={i}");
            let r = http(addr, "GET", &target, &[("User-Agent", "Mozilla/5.0 test"), ("DNT", "1")], b"");
            assert_eq!(r.status, 200);
        }
        for i in 0..5 {
            let body = format!(r#"[{{"site":"shop","e":"conversion","value":12.5,"currency":"eur","campaign":"spring","props":{{"order":"o{i}"}}}},{{"site":"blog","url":"https://blog.example/{i}"}}]"#);
            assert_eq!(http(addr, "POST", "/collect", &[], body.as_bytes()).status, 204);
        }
    })
    .await
    .unwrap();

    let n = wait_for(
        &url,
        &format!("SELECT uniqExact(event_id) FROM {table}"),
        40,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(n, 40, "every hit arrives");
    assert_eq!(
        number(&url, &format!("SELECT count() FROM {table} FINAL")).await,
        40,
        "and once"
    );

    #[derive(clickhouse::Row, serde::Deserialize, Debug)]
    struct Checked {
        kind: String,
        site_id: String,
        campaign: String,
        variant: String,
        message_id: String,
        user_id: String,
        ip: String,
        user_agent: String,
        dnt: String,
        edge_id: String,
        transport: String,
        prop: String,
        partition_ok: u8,
    }
    let row: Checked = ch(&url)
        .query(&format!(
            "SELECT kind, site_id, campaign, variant, message_id, user_id, IPv6NumToString(client_ip) AS ip, user_agent, dnt,
                    edge_id, transport, prop_values[indexOf(prop_keys, 'seq')] AS prop, toUInt8(kafka_partition >= 0) AS partition_ok
             FROM {table} WHERE message_id = 'm7'"
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!(
        (
            row.kind.as_str(),
            row.site_id.as_str(),
            row.campaign.as_str(),
            row.variant.as_str()
        ),
        ("open", "shop", "spring", "B")
    );
    assert_eq!(
        (
            row.message_id.as_str(),
            row.user_id.as_str(),
            row.prop.as_str()
        ),
        ("m7", "u7", "7")
    );
    assert_eq!(row.ip, "::ffff:127.0.0.1");
    assert_eq!(
        (row.user_agent.as_str(), row.dnt.as_str()),
        ("Mozilla/5.0 test", "1")
    );
    assert_eq!(
        (
            row.edge_id.as_str(),
            row.transport.as_str(),
            row.partition_ok
        ),
        ("it-edge", "pixel", 1)
    );
    let conversions = number(&url, &format!(
        "SELECT toUInt64(ifNull(sum(value), 0) * 10) FROM {table} WHERE kind = 'conversion' AND currency = 'EUR' AND transport = 'beacon'")).await;
    assert_eq!(conversions, 625, "5 conversions of 12.5");
    let received_ok = number(
        &url,
        &format!(
        "SELECT count() FROM {table} WHERE received_at > now() - 600 AND received_at <= now() + 5"),
    )
    .await;
    assert_eq!(received_ok, 40, "received_at is the edge's receive time");

    edge.shutdown().await;
    sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn privacy_policies_decide_what_reaches_clickhouse() {
    let Pipeline {
        edge,
        sink,
        url,
        table,
    } = Pipeline::start("privacy", 2, privacy_config).await;
    let addr = edge.public;
    let stored = tokio::task::spawn_blocking(move || send_privacy_hits(addr))
        .await
        .unwrap();
    let n = wait_for(
        &url,
        &format!("SELECT count() FROM {table}"),
        stored.len() as u64,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(n, 7, "every case but the two dropped ones");

    #[derive(clickhouse::Row, serde::Deserialize, Debug)]
    struct Seen {
        case: String,
        ip: String,
        ip_hash: String,
        anonymized: u8,
        user_id: String,
        user_agent: String,
        day: u32,
        place: String,
        visitor_id: String,
    }
    let rows: Vec<Seen> = ch(&url)
        .query(&format!(
            "SELECT prop_values[indexOf(prop_keys, 'case')] AS case, IPv6NumToString(client_ip) AS ip, ip_hash, anonymized,
                    user_id, user_agent, toUInt32(intDiv(toUInt32(received_at), 86400)) AS day,
                    concat(geo_country, '/', geo_region, '/', geo_city, '/', toString(asn), '/', as_org) AS place, visitor_id
             FROM {table} ORDER BY case"
        ))
        .fetch_all()
        .await
        .unwrap();
    let get = |c: &str| {
        rows.iter()
            .find(|r| r.case == c)
            .unwrap_or_else(|| panic!("{c} missing: {rows:?}"))
    };
    let raw: std::net::IpAddr = PRIVACY_CLIENT_IP.parse().unwrap();
    assert_eq!(get("trunc").ip, "::ffff:214.78.120.0");
    assert_eq!(
        (
            get("trunc").user_id.as_str(),
            get("trunc").user_agent.as_str()
        ),
        ("u-1", "UA-test")
    );
    assert_eq!(get("full").ip, format!("::ffff:{PRIVACY_CLIENT_IP}"));
    let hash = get("hash");
    assert_eq!(
        (hash.ip.as_str(), hash.ip_hash.as_str()),
        (
            "::",
            pixelpipe_ingest::privacy::hash_ip(HASH_SECRET, u64::from(hash.day), raw).as_str()
        )
    );
    assert_eq!(
        (get("drop").ip.as_str(), get("drop").ip_hash.as_str()),
        ("::", "")
    );
    for case in ["gpc", "dnt", "noconsent"] {
        let r = get(case);
        assert_eq!(
            (
                r.anonymized,
                r.ip.as_str(),
                r.ip_hash.as_str(),
                r.user_id.as_str(),
                r.user_agent.as_str()
            ),
            (1, "::", "", "", ""),
            "{case}"
        );
    }
    assert!(rows
        .iter()
        .all(|r| r.case != "gpcdrop" && r.case != "optout"));
    for case in ["trunc", "full", "hash", "drop"] {
        assert_eq!(
            get(case).place,
            "US/CA/San Diego/721/DoD Network Information Center",
            "{case}"
        );
    }
    assert_eq!(get("gpc").place, "US///0/", "anonymised: the country only");
    let trunc = get("trunc");
    let want = pixelpipe_ingest::privacy::visitor_id(
        HASH_SECRET,
        u64::from(trunc.day),
        "p-trunc",
        raw,
        "UA-test",
    );
    assert_eq!(trunc.visitor_id, want);
    assert_eq!(
        (
            get("gpc").visitor_id.as_str(),
            get("dnt").visitor_id.as_str()
        ),
        ("", "")
    );
    let report = edge.shutdown().await;
    assert_eq!(report.dropped, 2);
    sink.stop().await;
}

/// Behind a proxy (127.0.0.1, trusted) that writes only `X-Forwarded-For`: a client's own
/// `Forwarded` is ignored, nginx- and ALB-style chains name the client, and a chain that names no
/// address stores no IP (not the proxy's) and no place, with the cut counted on the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn the_client_ip_behind_a_proxy_is_the_one_its_header_names() {
    let Pipeline {
        edge,
        sink,
        url,
        table,
    } = Pipeline::start("proxy", 1, privacy_config).await;
    let addr = edge.public;
    // In the test databases 81.2.69.142 is London, GB; 214.78.120.5 and 2001:480:10::/48 are
    // San Diego, US.
    let cases: [(&str, &[(&str, &str)]); 4] = [
        (
            "forged",
            &[
                ("Forwarded", "for=214.78.120.5"),
                ("X-Forwarded-For", "81.2.69.142"),
            ],
        ),
        (
            "nginx",
            &[
                ("Forwarded", "for=214.78.120.5"),
                ("X-Forwarded-For", "214.78.120.5, 81.2.69.142, 127.0.0.1"),
            ],
        ),
        (
            "alb6",
            &[
                ("Forwarded", "for=81.2.69.142"),
                ("X-Forwarded-For", "[2001:480:10::7]:51234"),
            ],
        ),
        (
            "unknown",
            &[
                ("Forwarded", "for=214.78.120.5"),
                ("X-Forwarded-For", "81.2.69.142, unknown"),
            ],
        ),
    ];
    tokio::task::spawn_blocking(move || {
        for (case, headers) in cases {
            let target = format!("/p.gif?site=p-full&case={case}");
            assert_eq!(
                http(addr, "GET", &target, headers, b"").status,
                200,
                "{case}"
            );
        }
    })
    .await
    .unwrap();
    let n = wait_for(
        &url,
        &format!("SELECT count() FROM {table}"),
        cases.len() as u64,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(n, cases.len() as u64);

    #[derive(clickhouse::Row, serde::Deserialize, Debug, PartialEq)]
    struct Seen {
        case: String,
        ip: String,
        place: String,
        cut_fields: u16,
    }
    let rows: Vec<Seen> = ch(&url)
        .query(&format!(
            "SELECT prop_values[indexOf(prop_keys, 'case')] AS case, IPv6NumToString(client_ip) AS ip,
                    concat(geo_country, '/', geo_city) AS place, cut_fields
             FROM {table} ORDER BY case"
        ))
        .fetch_all()
        .await
        .unwrap();
    let seen = |case: &str, ip: &str, place: &str, cut_fields: u16| Seen {
        case: case.into(),
        ip: ip.into(),
        place: place.into(),
        cut_fields,
    };
    assert_eq!(
        rows,
        vec![
            seen("alb6", "2001:480:10::7", "US/San Diego", 0),
            seen("forged", "::ffff:81.2.69.142", "GB/London", 0),
            seen("nginx", "::ffff:81.2.69.142", "GB/London", 0),
            seen("unknown", "::", "/", 1),
        ]
    );
    edge.shutdown().await;
    sink.stop().await;
}

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
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn real_user_agents_and_signals_are_parsed_and_classified() {
    let p = Pipeline::start_with(
        "enrich",
        1,
        |topic| {
            let mut c = privacy_config(topic);
            // Keep the user agents: GPC/DNT are not sent here, but be explicit.
            c.privacy.ip_mode = IpMode::Truncate;
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
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn signed_send_times_and_unverified_conversions_reach_clickhouse() {
    let key = ("k1".to_owned(), "sink-test-secret-0123456789".to_owned());
    let p = Pipeline::start("signed", 1, |topic| {
        let mut c = test_config(topic);
        c.links.keys.insert(key.0.clone(), key.1.clone());
        c.links.unsigned_conversions = ConversionPolicy::Flag;
        c
    })
    .await;
    let mut links_config = LinksConfig::default();
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

/// A client that retries (the same `eid`, on a beacon and on a pixel) is counted once by the
/// documented exact-count query; hits without `eid` stay distinct, and one site cannot fold
/// another's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn client_retries_with_an_event_id_are_counted_once() {
    let Pipeline {
        edge,
        sink,
        url,
        table,
    } = Pipeline::start("eid", 2, test_config).await;
    let addr = edge.public;
    tokio::task::spawn_blocking(move || {
        let beacon =
            br#"{"site":"shop","e":"signup","eid":"0190a5d2-7c1e-7b3e-8f00-00000000000a"}"#;
        for _ in 0..3 {
            assert_eq!(http(addr, "POST", "/collect", &[], beacon).status, 204);
        }
        for target in [
            "/p.gif?site=shop&e=open&eid=0190a5d2-7c1e-7b3e-8f00-00000000000b",
            "/p.gif?site=shop&e=open&eid=0190a5d2-7c1e-7b3e-8f00-00000000000b",
            "/p.gif?site=blog&e=open&eid=0190a5d2-7c1e-7b3e-8f00-00000000000b",
            "/p.gif?site=shop&e=open",
            "/p.gif?site=shop&e=open",
        ] {
            assert_eq!(http(addr, "GET", target, &[], b"").status, 200);
        }
    })
    .await
    .unwrap();
    let rows = wait_for(
        &url,
        &format!("SELECT count() FROM {table}"),
        8,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(rows, 8, "every request reached ClickHouse");
    assert_eq!(
        number(&url, &format!("SELECT uniqExact(event_id) FROM {table}")).await,
        5,
        "signup once, shop's open once, blog's open, two opens without eid"
    );
    assert_eq!(
        number(&url, &format!("SELECT count() FROM {table} FINAL")).await,
        5
    );
    edge.shutdown().await;
    sink.stop().await;
}

/// A beacon whose events each hold one bad value (a lone surrogate, a number beyond `f64`, an
/// integer beyond 2^53, a repeated name) is answered `204` and every event is a row: the bad
/// value replaced, cut or kept as sent, custom properties in the order sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs Kafka (TEST_KAFKA_BROKERS) and ClickHouse (TEST_CLICKHOUSE_URL): run deploy/local/test.sh"
)]
async fn one_bad_value_in_a_beacon_costs_only_that_value() {
    let Pipeline {
        edge,
        sink,
        url,
        table,
    } = Pipeline::start("messy", 1, test_config).await;
    let addr = edge.public;
    tokio::task::spawn_blocking(move || {
        let beacon = br#"[{"site":"s","e":"read","msg":"a","title":"caf\ud83d"},
            {"site":"s","e":"conversion","msg":"b","value":1e400,"currency":"EUR"},
            {"site":"s","e":"signup","msg":"c","uid":123456789012345678901234,
             "zeta":"1","alpha":"2","zeta":"3","title":"first","title":"second"}]"#;
        assert_eq!(http(addr, "POST", "/collect", &[], beacon).status, 204);
    })
    .await
    .unwrap();
    let rows = wait_for(
        &url,
        &format!("SELECT count() FROM {table}"),
        3,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(rows, 3, "each event is a row");
    #[derive(clickhouse::Row, serde::Deserialize)]
    struct Row {
        message_id: String,
        title: String,
        has_value: u8,
        user_id: String,
        props: String,
        cut_fields: u16,
    }
    let rows: Vec<Row> = ch(&url)
        .query(&format!(
            "SELECT message_id, title, toUInt8(isNotNull(value)) AS has_value, user_id,
                    arrayStringConcat(arrayMap((k, v) -> concat(k, '=', v), prop_keys, prop_values), '&') AS props,
                    toUInt16(cut_fields) AS cut_fields
             FROM {table} ORDER BY message_id"
        ))
        .fetch_all()
        .await
        .unwrap();
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r.message_id.as_str(),
                r.title.as_str(),
                r.has_value,
                r.user_id.as_str(),
                r.props.as_str(),
                r.cut_fields,
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("a", "caf\u{FFFD}", 0, "", "", 1),
            ("b", "", 0, "", "", 1),
            (
                "c",
                "first",
                0,
                "123456789012345678901234",
                "zeta=1&alpha=2&zeta=3",
                1
            ),
        ]
    );
    edge.shutdown().await;
    sink.stop().await;
}

/// (request target, user agent, extra header, expected status)
type Request = (
    String,
    &'static str,
    Option<(&'static str, &'static str)>,
    u16,
);

#[derive(clickhouse::Row, serde::Deserialize, Debug)]
struct Judged {
    case: String,
    kind: String,
    user_agent: String,
    anonymized: u8,
    traffic_class: String,
    class_reason: String,
}

/// Machines stay machines: a script or scanner that sends `DNT: 1` or `Sec-GPC: 1` is stored
/// anonymised, without its user agent, but with the class that user agent (or its absence) gave
/// at the edge; and a signed click that follows its send time within seconds is a link scanner's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn anonymous_machines_and_instant_clicks_are_classed_as_machines() {
    let key = ("k1".to_owned(), "class-test-secret-0123456789".to_owned());
    let p = Pipeline::start("classes", 1, |topic| {
        // GPC and DNT get the default answer, `anonymous`.
        let mut c = privacy_config(topic);
        c.links.keys.insert(key.0.clone(), key.1.clone());
        c
    })
    .await;
    let mut links_config = LinksConfig::default();
    links_config.keys.insert(key.0.clone(), key.1.clone());
    let links = Links::new(&links_config).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let click = |case: &str, sent: u64| {
        links
            .build(&LinkRequest {
                site: "s".into(),
                params: vec![("case".into(), case.into())],
                click_target: Some("https://partner.example/offer".into()),
                sign: true,
                sent_at_unix_secs: Some(sent),
                ..LinkRequest::default()
            })
            .unwrap()
    };
    let requests: Vec<Request> = vec![
        (
            "/p.gif?site=s&e=open&case=curl_dnt".into(),
            "curl/8.5.0",
            Some(("DNT", "1")),
            200,
        ),
        (
            "/p.gif?site=s&e=open&case=scanner_gpc".into(),
            "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))",
            Some(("Sec-GPC", "1")),
            200,
        ),
        (
            "/p.gif?site=s&e=open&case=browser_dnt".into(),
            CHROME,
            Some(("DNT", "1")),
            200,
        ),
        // No `User-Agent` header at all (`curl -A ''`).
        (
            "/p.gif?site=s&e=open&case=no_ua_dnt".into(),
            "",
            Some(("DNT", "1")),
            200,
        ),
        // Clicked 2 s after the message was sent: on delivery.
        (click("click_2s", now - 2), CHROME, None, 302),
        (click("click_1h", now - 3600), CHROME, None, 302),
    ];
    let addr = p.edge.public;
    let sent = requests.len() as u64;
    tokio::task::spawn_blocking(move || {
        for (target, ua, signal, status) in requests {
            // An empty user agent stands for none: the header is left out.
            let mut headers: Vec<_> = (!ua.is_empty())
                .then_some(("User-Agent", ua))
                .into_iter()
                .collect();
            headers.extend(signal);
            assert_eq!(
                http(addr, "GET", &target, &headers, b"").status,
                status,
                "{target}"
            );
        }
    })
    .await
    .unwrap();
    let n = wait_for(
        &p.url,
        &format!("SELECT count() FROM {}", p.table),
        sent,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(n, sent);
    let rows: Vec<Judged> = ch(&p.url)
        .query(&format!(
            "SELECT prop_values[indexOf(prop_keys, 'case')] AS case, kind, user_agent, anonymized,
                    traffic_class, class_reason
             FROM {} ORDER BY case",
            p.table
        ))
        .fetch_all()
        .await
        .unwrap();
    let got: Vec<(&str, &str, &str, u8, &str, &str)> = rows
        .iter()
        .map(|r| {
            (
                r.case.as_str(),
                r.kind.as_str(),
                r.user_agent.as_str(),
                r.anonymized,
                r.traffic_class.as_str(),
                r.class_reason.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("browser_dnt", "open", "", 1, "human", "anonymized"),
            ("click_1h", "click", CHROME, 0, "human", "no_rule_matched"),
            (
                "click_2s",
                "click",
                CHROME,
                0,
                "scanner",
                "click_soon_after_send"
            ),
            ("curl_dnt", "open", "", 1, "bot", "http_library"),
            ("no_ua_dnt", "open", "", 1, "bot", "no_user_agent"),
            ("scanner_gpc", "open", "", 1, "scanner", "barracuda"),
        ]
    );
    p.edge.shutdown().await;
    p.sink.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and the ClickHouse cluster: deploy/local/test.sh starts them"
)]
async fn hits_from_the_edge_reach_both_replicas_of_a_cluster() {
    let replicas: Vec<String> = std::env::var("TEST_CLICKHOUSE_REPLICAS")
        .unwrap_or_else(|_| "http://127.0.0.1:8124,http://127.0.0.1:8125".into())
        .split(',')
        .map(str::to_owned)
        .collect();
    let first = replicas[0].clone();
    let Pipeline {
        edge, sink, table, ..
    } = Pipeline::start_with("e2ecluster", 2, test_config, |c| {
        c.clickhouse.url = first;
        c.clickhouse.cluster =
            std::env::var("TEST_CLICKHOUSE_CLUSTER").unwrap_or_else(|_| "pixelpipe".into());
    })
    .await;
    let addr = edge.public;
    tokio::task::spawn_blocking(move || {
        for i in 0..25 {
            let target = format!("/p.gif?site=shop&e=open&campaign=c{}&msg=m{i}", i % 5);
            assert_eq!(http(addr, "GET", &target, &[], b"").status, 200);
        }
    })
    .await
    .unwrap();
    // Each replica's own copy, then the exact count through the Distributed table on each.
    for url in &replicas {
        let local = wait_for(
            url,
            &format!("SELECT count() FROM {table}_local FINAL"),
            25,
            Duration::from_secs(60),
        )
        .await;
        assert_eq!(local, 25, "stored on {url}");
        let by_campaign = number(
            url,
            &format!(
                "SELECT uniqExact(campaign) FROM {table} WHERE site_id = 'shop' AND kind = 'open'"
            ),
        )
        .await;
        assert_eq!(
            by_campaign, 5,
            "queried through the Distributed table on {url}"
        );
    }
    edge.shutdown().await;
    sink.stop().await;
}
