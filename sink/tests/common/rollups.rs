//! Hits for the rollup tests, how the sink would write them, and what the rollups must answer
//! for them, computed in Rust from the hits' description.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use pixelpipe_common::wire;
use pixelpipe_sink::batch::Batch;
use pixelpipe_sink::config::EnrichConfig;
use pixelpipe_sink::enrich::Enricher;
use pixelpipe_sink::row::{decode_message, Decoded};

use super::{ch, date, datetime};

pub const HOUR: u64 = 3_600;
pub const DAY: u64 = 86_400;

/// One hit: its time, kind, campaign and visitor id (empty for an anonymised hit).
pub struct Hit {
    pub at: u64,
    pub kind: &'static str,
    pub campaign: String,
    pub visitor: String,
}

/// Hits `from..to`, spread over two days and four hours of each from `base`, two kinds, two
/// campaigns and seven visitors, every tenth anonymised.
pub fn hits(base: u64, from: u64, to: u64) -> Vec<Hit> {
    (from..to)
        .map(|i| Hit {
            at: base + (i / 40) * DAY + (i % 4) * HOUR + i,
            kind: if i % 3 == 0 { "pageview" } else { "open" },
            campaign: format!("c{}", i % 2),
            visitor: if i % 10 == 0 {
                String::new()
            } else {
                format!("v{}", i % 7)
            },
        })
        .collect()
}

/// The hits as the sink would write them: decoded and enriched from what the edge sends.
pub fn batch(hits: &[Hit]) -> Batch {
    let mut enricher = Enricher::new(&EnrichConfig::default()).unwrap();
    let mut batch = Batch::default();
    for (i, h) in hits.iter().enumerate() {
        let mut json = serde_json::json!({
            "schema_version": 1,
            "event_id": uuid::Uuid::now_v7().to_string(),
            "received_at_ms": h.at * 1000,
            "edge_id": "a",
            "transport": "pixel",
            "kind": h.kind,
            "site_id": "s",
            "path": "/p.gif",
            "campaign": h.campaign,
            "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        });
        if !h.visitor.is_empty() {
            json["visitor_id"] = h.visitor.as_str().into();
        }
        let mut payload = Vec::new();
        wire::encode(
            &wire::decode(json.to_string().as_bytes()).unwrap(),
            &mut payload,
        );
        batch.took(0, i as i64, payload.len());
        for decoded in decode_message("t", 0, i as i64, &payload, 1 << 20, &mut enricher) {
            match decoded {
                Decoded::Hit(row) => batch.push_hit(row),
                Decoded::Bad(bad) => panic!("a valid hit was refused: {bad:?}"),
            }
        }
    }
    batch
}

/// The rollups read the documented way (merged states), per hour and per day, from the tables
/// named `<prefix>hits_hourly<suffix>` and `<prefix>hits_daily<suffix>` (`_local` for a
/// replica's own on a cluster).
pub fn questions(prefix: &str, suffix: &str) -> [String; 2] {
    [
        format!(
            "SELECT hour, kind, campaign, uniqMerge(hits), uniqIfMerge(visitors) FROM pixelpipe.{prefix}hits_hourly{suffix}
             GROUP BY hour, kind, campaign ORDER BY hour, kind, campaign"
        ),
        format!(
            "SELECT day, kind, uniqMerge(hits), uniqIfMerge(visitors) FROM pixelpipe.{prefix}hits_daily{suffix}
             GROUP BY day, kind ORDER BY day, kind"
        ),
    ]
}

/// What [`questions`] must answer for these hits, each counted once: distinct hits and distinct
/// non-empty visitors per group.
pub fn answers(hits: &[&Hit]) -> [String; 2] {
    let mut hourly: BTreeMap<(String, &str, &str), (u64, BTreeSet<&str>)> = BTreeMap::new();
    let mut daily: BTreeMap<(String, &str), (u64, BTreeSet<&str>)> = BTreeMap::new();
    for h in hits {
        let hour = hourly
            .entry((datetime(h.at / HOUR * HOUR), h.kind, &h.campaign))
            .or_default();
        let day = daily.entry((date(h.at), h.kind)).or_default();
        for (n, visitors) in [(&mut hour.0, &mut hour.1), (&mut day.0, &mut day.1)] {
            *n += 1;
            if !h.visitor.is_empty() {
                visitors.insert(&h.visitor);
            }
        }
    }
    [
        hourly
            .iter()
            .map(|((hour, kind, campaign), (n, v))| {
                format!("{hour}\t{kind}\t{campaign}\t{n}\t{}\n", v.len())
            })
            .collect(),
        daily
            .iter()
            .map(|((day, kind), (n, v))| format!("{day}\t{kind}\t{n}\t{}\n", v.len()))
            .collect(),
    ]
}

pub async fn ask(url: &str, questions: &[String; 2]) -> [String; 2] {
    let mut out = [String::new(), String::new()];
    for (q, a) in questions.iter().zip(&mut out) {
        let bytes = ch(url)
            .query(q)
            .fetch_bytes("TabSeparated")
            .unwrap()
            .collect()
            .await
            .unwrap();
        *a = String::from_utf8(bytes.to_vec()).unwrap();
    }
    out
}

/// [`ask`] until the answer is `want` (replication is asynchronous) or 60 s pass; returns the last
/// answer.
pub async fn wait_ask(url: &str, questions: &[String; 2], want: &[String; 2]) -> [String; 2] {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = ask(url, questions).await;
        if got == *want || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
