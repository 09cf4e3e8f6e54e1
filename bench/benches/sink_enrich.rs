//! The sink's per-hit enrichment: parsing a user agent with uap-core's rules, with and without
//! the cache, classifying a hit, and the whole step from Kafka payload to enriched row.
//!
//! `cargo bench -p pixelpipe-bench --bench sink_enrich`

// Set-up failures in a benchmark should stop it loudly.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion};
use pixelpipe_bench::USER_AGENTS;
use pixelpipe_ingest::wire;
use pixelpipe_sink::config::EnrichConfig;
use pixelpipe_sink::enrich::Enricher;
use pixelpipe_sink::row::{decode_hit, Decoded, Lineage};

/// More real user agents than the load mix, so an uncached run does not favour one rule.
const MORE: [&str; 5] = [
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/119.0.6045.163 Mobile Safari/537.36",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36 Edg/120.0.0.0",
    "Mozilla/4.0 (compatible; ms-office; MSOffice 16)",
];

fn sink_enrich(c: &mut Criterion) {
    let agents: Vec<&str> = USER_AGENTS.iter().chain(MORE.iter()).copied().collect();
    let start = std::time::Instant::now();
    let mut enricher = Enricher::new(&EnrichConfig::default()).unwrap();
    eprintln!("compiling uap-core's rules took {:?}", start.elapsed());

    let mut group = c.benchmark_group("sink_enrich");
    let mut i = 0;
    group.bench_function("ua_parse_uncached", |b| {
        b.iter(|| {
            i += 1;
            enricher.user_agent_uncached(agents[i % agents.len()])
        })
    });
    group.bench_function("ua_parse_cached", |b| {
        b.iter(|| {
            i += 1;
            enricher.user_agent(agents[i % agents.len()])
        })
    });

    let payloads: Vec<Vec<u8>> = agents
        .iter()
        .enumerate()
        .map(|(n, ua)| {
            let json = format!(
                r#"{{"schema_version":1,"event_id":"01890a5d-ac96-774b-bcce-b302099a8057","received_at_ms":1790000000000,
                "edge_id":"e","transport":"pixel","kind":"open","site_id":"shop","client_ip":"203.0.113.{n}",
                "user_agent":{ua:?},"path":"/p.gif","campaign":"spring","asn":3320}}"#
            );
            let mut buf = Vec::new();
            wire::encode(&wire::decode(json.as_bytes()).unwrap(), &mut buf);
            buf
        })
        .collect();
    let hit = wire::decode(&payloads[0]).unwrap();
    let ua = enricher.user_agent(hit.user_agent.as_deref().unwrap());
    group.bench_function("classify", |b| {
        b.iter(|| enricher.classify(&hit, Some(&ua)))
    });
    group.bench_function("payload_to_enriched_row_cached", |b| {
        b.iter(|| {
            i += 1;
            let at = Lineage {
                partition: 0,
                offset: i as i64,
                index: 0,
            };
            match decode_hit(
                "t",
                at,
                &payloads[i % payloads.len()],
                usize::MAX,
                &mut enricher,
            ) {
                Decoded::Hit(row) => row,
                Decoded::Bad(bad) => panic!("{bad:?}"),
            }
        })
    });
    group.finish();
}

criterion_group!(benches, sink_enrich);
criterion_main!(benches);
