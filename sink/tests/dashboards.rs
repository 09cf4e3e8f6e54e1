//! Every ClickHouse query of the traffic dashboard (`deploy/grafana/traffic.json`) runs against
//! the real server, on hits that went through the real broker and sink, with the Grafana
//! ClickHouse plugin's macros expanded as the plugin expands them, and each answer is checked
//! against what the fixture was built to contain.

// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use pixelpipe_common::wire;

const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
const GOOGLEBOT: &str = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
const GMAIL_PROXY: &str =
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
/// What Apple Mail Privacy Protection's prefetch sends.
const APPLE_MPP: &str = "Mozilla/5.0";

/// One hit of the fixture: its kind, user agent, visitor, country and the rest as JSON fields.
struct Hit {
    /// Hours before the test's start it was received.
    hours_ago: u64,
    site: &'static str,
    kind: &'static str,
    ua: &'static str,
    visitor: &'static str,
    country: &'static str,
    extra: String,
}

/// Site `shop`: page /a seen 3 times by two people on desktop Chrome in DE (v1 twice, v2) and
/// once by Googlebot; page /b twice by one person on an iPhone in FR (v3). Campaign `spring`:
/// message s0 opened twice and s1 once in Chrome, s2 and s4 through Gmail's image proxy, s3
/// only by Apple's prefetch; two conversions of 10 EUR by v1 and v2 in DE and one by Googlebot; an
/// anonymised page view of /a in DE (no visitor id); and a page view two days old, which the time
/// filter must leave out. Site `blog`: one page view, which the site filter must leave out.
fn fixture() -> Vec<Hit> {
    let hit = |site, kind, ua, visitor, country, extra: &str| Hit {
        hours_ago: 0,
        site,
        kind,
        ua,
        visitor,
        country,
        extra: extra.to_owned(),
    };
    let page = |p: &str| format!(r#","url":"https://shop.example/{p}""#);
    let open = |m: &str| format!(r#","campaign":"spring","message_id":"{m}""#);
    let sale = r#","campaign":"spring","value":10.0,"currency":"EUR""#;
    vec![
        hit("shop", "pageview", CHROME, "v1", "DE", &page("a")),
        hit("shop", "pageview", CHROME, "v1", "DE", &page("a")),
        hit("shop", "pageview", CHROME, "v2", "DE", &page("a")),
        hit("shop", "pageview", GOOGLEBOT, "v9", "US", &page("a")),
        hit("shop", "pageview", IPHONE, "v3", "FR", &page("b")),
        hit("shop", "pageview", IPHONE, "v3", "FR", &page("b")),
        hit("shop", "open", CHROME, "v1", "", &open("s0")),
        hit("shop", "open", CHROME, "v1", "", &open("s0")),
        hit("shop", "open", CHROME, "v2", "", &open("s1")),
        hit("shop", "open", GMAIL_PROXY, "v4", "", &open("s2")),
        hit("shop", "open", GMAIL_PROXY, "v6", "", &open("s4")),
        hit("shop", "open", APPLE_MPP, "v5", "", &open("s3")),
        hit("shop", "conversion", CHROME, "v1", "DE", sale),
        hit("shop", "conversion", CHROME, "v2", "DE", sale),
        hit("shop", "conversion", GOOGLEBOT, "v9", "US", sale),
        // A browser that sent GPC: anonymised at the edge, which keeps neither its user agent
        // (a browser's leaves no class behind) nor a visitor id: a view, not a visitor.
        hit(
            "shop",
            "pageview",
            "",
            "",
            "DE",
            &format!(r#"{},"anonymized":true"#, page("a")),
        ),
        hit("blog", "pageview", CHROME, "v7", "DE", &page("a")),
        // Two days old: outside the dashboard's time range.
        Hit {
            hours_ago: 48,
            ..hit("shop", "pageview", CHROME, "v1", "DE", &page("a"))
        },
    ]
}

fn encode(h: &Hit, now_s: u64) -> Vec<u8> {
    let received_at_ms = (now_s - h.hours_ago * 3600) * 1000;
    let ua = if h.ua.is_empty() {
        String::new()
    } else {
        format!(r#","user_agent":"{}""#, h.ua)
    };
    let visitor = if h.visitor.is_empty() {
        String::new()
    } else {
        format!(r#","visitor_id":"{}""#, h.visitor)
    };
    let country = if h.country.is_empty() {
        String::new()
    } else {
        format!(r#","geo_country":"{}""#, h.country)
    };
    let json = format!(
        r#"{{"schema_version":1,"event_id":"{}","received_at_ms":{received_at_ms},"edge_id":"a",
            "transport":"pixel","kind":"{}","site_id":"{}","path":"/p.gif"
            {ua}{visitor}{country}{}}}"#,
        uuid::Uuid::now_v7(),
        h.kind,
        h.site,
        h.extra
    );
    let mut buf = Vec::new();
    wire::encode(&wire::decode(json.as_bytes()).unwrap(), &mut buf);
    buf
}

/// The Grafana ClickHouse plugin's expansion of the macros the dashboard uses, for a time range
/// of `from..=to` (Unix seconds) and the `site` variable set to `site`: `$__timeFilter(c)` is
/// `c >= toDateTime(from) AND c <= toDateTime(to)` (the plugin's README), and
/// `${site:singlequote}` is Grafana's quoted list of the chosen values.
fn expand(sql: &str, from: u64, to: u64, site: &str) -> String {
    let mut out = sql.replace("${site:singlequote}", &format!("'{site}'"));
    while let Some(start) = out.find("$__timeFilter(") {
        let rest = &out[start + "$__timeFilter(".len()..];
        let column = &rest[..rest.find(')').unwrap()];
        let filter = format!("{column} >= toDateTime({from}) AND {column} <= toDateTime({to})");
        out.replace_range(
            start..start + "$__timeFilter(".len() + column.len() + 1,
            &filter,
        );
    }
    assert!(
        !out.contains('$'),
        "a macro the test does not expand: {out}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn every_traffic_dashboard_query_runs_and_answers_right() {
    let url = clickhouse_url();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let hits = fixture();
    let payloads: Vec<Vec<u8>> = hits.iter().map(|h| encode(h, now_s)).collect();
    let total = payloads.len() as u64;
    let prefix = store_through_a_sink("dashboards", payloads, total, 0).await;
    let table = format!("pixelpipe.{prefix}hits");

    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/traffic.json"),
    )
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    // Each panel's query (and the site variable's), macros expanded, on the server the hits
    // went to; then the same rows under the modern DDL in chDB (compose runs a modern server).
    let mut titles = Vec::new();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(panel["datasource"]["uid"], "clickhouse", "{panel}");
        let [target] = panel["targets"].as_array().unwrap().as_slice() else {
            panic!("one query per panel: {panel}");
        };
        titles.push(panel["title"].as_str().unwrap().to_owned());
        queries.push(expand(
            target["rawSql"].as_str().unwrap(),
            now_s - 3600,
            now_s + 3600,
            "shop",
        ));
    }
    titles.push("site variable".to_owned());
    queries.push(
        dashboard["templating"]["list"][0]["query"]
            .as_str()
            .unwrap()
            .to_owned(),
    );
    let queries: Vec<String> = queries
        .iter()
        .map(|q| q.replace("pixelpipe.hits", &table))
        .collect();
    let mut on_18_16 = Vec::new();
    for q in &queries {
        on_18_16.push(tsv(&url, q).await);
    }
    let on_modern = on_a_modern_server(&url, &prefix, &queries).await;

    // Expected answers, from the fixture's construction (shop only; blog's page view is out).
    let shop: Vec<&Hit> = hits
        .iter()
        .filter(|h| h.site == "shop" && h.hours_ago == 0)
        .collect();
    let count = |kind: &str| shop.iter().filter(|h| h.kind == kind).count();
    let hour = now_s / 3600 * 3600;
    let hour = tsv(&url, &format!("SELECT toDateTime({hour}, 'UTC')")).await;
    let hour = hour.trim();
    let want = [
        (
            "Hits per hour, by kind (all traffic)",
            format!(
                "{hour}\tconversion\t{}\n{hour}\topen\t{}\n{hour}\tpageview\t{}\n",
                count("conversion"),
                count("open"),
                count("pageview")
            ),
        ),
        // People: 6 page views (one anonymised), 3 Chrome opens, 2 conversions; Googlebot's
        // page view and conversion; Gmail's proxy and Apple's prefetch.
        (
            "Hits by traffic class",
            "bot\t2\nemail_proxy\t3\nhuman\t11\n".to_owned(),
        ),
        // Opened: s0..s4 raw; s0, s1, s2 and s4 (Gmail opens when the reader does) by people.
        (
            "Email opens per campaign: raw and human",
            "spring\t5\t4\t0.8\n".to_owned(),
        ),
        (
            "Conversions and value per campaign",
            "spring\tEUR\t3\t2\t20\n".to_owned(),
        ),
        (
            "Top pages (people)",
            "https://shop.example/a\t4\t2\nhttps://shop.example/b\t2\t1\n".to_owned(),
        ),
        // DE: four page views (one anonymised) and two conversions by v1 and v2; FR: two page
        // views by v3.
        ("Countries (people)", "DE\t6\t2\nFR\t2\t1\n".to_owned()),
        // Desktop: 3 page views, 3 opens and 2 conversions in Chrome; mobile: the iPhone's 2;
        // the anonymised view has no user agent to tell.
        (
            "Devices (people)",
            "desktop\t8\nmobile\t2\nunknown\t1\n".to_owned(),
        ),
        ("site variable", "blog\nshop\n".to_owned()),
    ];
    assert_eq!(
        titles,
        want.iter().map(|(t, _)| t.to_string()).collect::<Vec<_>>(),
        "every panel has an expected answer, in the dashboard's order"
    );
    for (server, answers) in [("18.16", &on_18_16), ("modern", &on_modern)] {
        for ((title, expected), got) in want.iter().zip(answers) {
            assert_eq!(got, expected, "{title}, on the {server} server");
        }
    }
}

#[test]
fn the_macro_expansion_replaces_every_time_filter_and_the_site() {
    assert_eq!(
        expand(
            "WHERE $__timeFilter(received_at) AND x IN (${site:singlequote}) OR $__timeFilter(t)",
            10,
            20,
            "shop"
        ),
        "WHERE received_at >= toDateTime(10) AND received_at <= toDateTime(20) AND x IN ('shop') \
         OR t >= toDateTime(10) AND t <= toDateTime(20)"
    );
}
