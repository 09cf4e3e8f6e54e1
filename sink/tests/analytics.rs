//! Every query in docs/analytics.md runs against the real server on hits that went through the
//! real pipeline (Kafka, the sink), and the ones with a known answer are checked.

// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::kafka::unique_topic;
use common::*;
use pixelpipe_common::wire;

const CHROME: &str = r#","user_agent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36""#;
const APPLE_MPP: &str = r#","user_agent":"Mozilla/5.0""#;
const GMAIL: &str = r#","user_agent":"Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)""#;
const SCANNER: &str = r#","user_agent":"Mozilla/5.0 (compatible; Barracuda Sentinel (EE))""#;
const BOT: &str =
    r#","user_agent":"Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)""#;

/// 40 emails of campaign `spring` (variant A/B), 20 opened (4 of them twice), 6 conversions of
/// 10.0 EUR with plan=pro/basic; 50 of `summer`, 10 opened, 2 conversions of 5.5 EUR; 5 page views.
/// Browsers are Chrome except: spring s14-s15 opened through Gmail's image proxy (a real open),
/// s16-s19 only by Apple Mail Privacy Protection's prefetch; summer m8-m9 only by a mail scanner,
/// and m1's conversion came from a crawler.
fn fixture() -> Vec<Vec<u8>> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut hits = Vec::new();
    let mut push = |kind: &str, campaign: &str, variant: &str, msg: &str, extra: &str| {
        let ua = if extra.contains("user_agent") {
            ""
        } else {
            CHROME
        };
        let json = format!(
            r#"{{"schema_version":1,"event_id":"{}","received_at_ms":{now_ms},"edge_id":"a","transport":"pixel",
                "kind":"{kind}","site_id":"mail","path":"/p.gif","campaign":"{campaign}","variant":"{variant}",
                "message_id":"{msg}"{extra}{ua}}}"#,
            uuid::Uuid::now_v7()
        );
        let mut buf = Vec::new();
        wire::encode(&wire::decode(json.as_bytes()).unwrap(), &mut buf);
        hits.push(buf);
    };
    for i in 0..20 {
        let variant = if i % 2 == 0 { "A" } else { "B" };
        let opener = match i {
            14 | 15 => GMAIL,
            16.. => APPLE_MPP,
            _ => "",
        };
        push("open", "spring", variant, &format!("s{i}"), opener);
        if i < 4 {
            push("open", "spring", variant, &format!("s{i}"), "");
        }
        if i < 6 {
            let plan = if i < 4 { "pro" } else { "basic" };
            push(
                "conversion",
                "spring",
                variant,
                &format!("s{i}"),
                &format!(r#","value":10.0,"currency":"EUR","props":[["plan","{plan}"]]"#),
            );
        }
    }
    for i in 0..10 {
        push(
            "open",
            "summer",
            "",
            &format!("m{i}"),
            if i >= 8 { SCANNER } else { "" },
        );
    }
    for i in 0..2 {
        push(
            "conversion",
            "summer",
            "",
            &format!("m{i}"),
            &format!(
                r#","value":5.5,"currency":"EUR"{}"#,
                if i == 1 { BOT } else { "" }
            ),
        );
    }
    for _ in 0..5 {
        push("pageview", "", "", "", "");
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn every_documented_query_runs_and_answers_right() {
    let topic = unique_topic("analytics");
    create_topics(&topic, 2).await;
    let prefix = format!("{}_", unique("analytics"));
    let url = clickhouse_url();
    let mut payloads = fixture();
    let total = payloads.len() as u64;
    payloads.push(b"not a hit".to_vec());
    let t = topic.clone();
    tokio::task::spawn_blocking(move || produce(&t, &payloads))
        .await
        .unwrap();
    let sink = RunningSink::start(sink_config(&topic, &prefix));
    let table = format!("pixelpipe.{prefix}hits");
    assert_eq!(
        wait_for(
            &url,
            &format!("SELECT uniqExact(event_id) FROM {table}"),
            total,
            Duration::from_secs(60)
        )
        .await,
        total
    );
    assert_eq!(
        wait_for(
            &url,
            &format!("SELECT count() FROM pixelpipe.{prefix}bad_hits"),
            1,
            Duration::from_secs(30)
        )
        .await,
        1
    );
    sink.stop().await;

    let doc = include_str!("../../docs/analytics.md");
    let queries: Vec<String> = doc
        .split("```sql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap().to_owned())
        .map(|q| {
            q.replace("pixelpipe.hits", &table)
                .replace("pixelpipe.bad_hits", &format!("pixelpipe.{prefix}bad_hits"))
        })
        .collect();
    assert_eq!(queries.len(), 10, "every query block is found");
    let mut answers = Vec::new();
    for q in &queries {
        answers.push(tsv(&url, q).await);
    }
    let expect = [
        format!("{total}\t{total}\n"),
        String::new(), // per day: checked below, the date is today's
        "spring\t40\t20\t0.5\nsummer\t50\t10\t0.2\n".to_string(),
        "spring\tEUR\t6\t60\nsummer\tEUR\t2\t11\n".to_string(),
        "spring\tA\t10\t3\t0.3\nspring\tB\t10\t3\t0.3\n".to_string(),
        "basic\t2\npro\t4\n".to_string(),
        "spring\t40\t20\t16\t0.5\t0.4\nsummer\t50\t10\t8\t0.2\t0.16\n".to_string(),
        "spring\tEUR\t6\t6\t60\nsummer\tEUR\t2\t1\t5.5\n".to_string(),
        "bot\tcrawler_ua\t1\nemail_proxy\tapple_mail_privacy\t4\nemail_proxy\tgmail_image_proxy\t2\nhuman\tno_rule_matched\t38\nscanner\tbarracuda\t2\n".to_string(),
        "undecodable\t1\n".to_string(),
    ];
    for (i, (got, want)) in answers.iter().zip(&expect).enumerate() {
        if !want.is_empty() {
            assert_eq!(
                got,
                want,
                "query {} of docs/analytics.md:\n{}",
                i + 1,
                queries[i]
            );
        }
    }
    let per_day: Vec<&str> = answers[1]
        .lines()
        .map(|l| l.split_once('\t').unwrap().1)
        .collect();
    assert_eq!(
        per_day,
        vec!["conversion\t8", "open\t34", "pageview\t5"],
        "{}",
        answers[1]
    );
}
