//! The hot path of one pixel request, without sockets: parse the request, build the hit, enqueue
//! it; and the same for a signed email pixel, whose HMAC the edge checks on that path. And, separately, the batcher's per-hit costs: the privacy policy, and encoding for Kafka.
//!
//! `cargo bench -p pixelpipe-bench --bench request_path`

// Set-up failures in a benchmark should stop it loudly.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use http_body_util::Full;
use hyper::Request;
use pixelpipe_bench::pixel_request;
use pixelpipe_ingest::geo::{Geo, GeoConfig};
use pixelpipe_ingest::links::{LinkRequest, Links};
use pixelpipe_ingest::privacy::{IpMode, Privacy, PrivacyConfig};
use pixelpipe_ingest::testing::TempLedger;
use pixelpipe_ingest::{wire, Config};

fn request_path(c: &mut Criterion) {
    let config = Config::default();
    let spool = TempLedger::new();
    let (edge, rx) = spool.edge(&config, 1 << 16);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let peer = "203.0.113.9".parse().unwrap();
    // Pixel requests only (every tenth sample is a beacon): the bench measures the pixel path.
    let requests: Vec<_> = (0..1000u64)
        .filter(|i| i % 10 != 9)
        .map(pixel_request)
        .collect();

    let mut group = c.benchmark_group("request_path");
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("pixel_request_to_enqueued_hit", |b| {
        b.iter_batched(
            || {
                i = (i + 1) % requests.len();
                requests[i].clone()
            },
            |req| {
                let resp = runtime.block_on(edge.handle(req, peer));
                // Keep the channel from filling: the batcher's side is not what this measures.
                let _ = rx.try_recv();
                resp
            },
            criterion::BatchSize::SmallInput,
        )
    });

    // The same path for a signed email pixel: the edge checks the HMAC on the request path.
    let mut signed_config = Config::default();
    signed_config
        .links
        .keys
        .insert("k1".into(), "bench-signing-secret-0123".into());
    let links = Links::new(&signed_config.links).unwrap();
    let signed_spool = TempLedger::new();
    let (signed_edge, signed_rx) = signed_spool.edge(&signed_config, 1 << 16);
    let signed_url = links
        .build(&LinkRequest {
            base_url: String::new(),
            site: "shop".into(),
            kind: Some("open".into()),
            params: vec![
                ("campaign".into(), "spring-sale".into()),
                ("msg".into(), "0190a5d2-7c1e-7b3e".into()),
            ],
            sign: true,
            sent_at_unix_secs: Some(1_790_000_000),
            expires_at_unix_secs: Some(4_000_000_000),
            ..LinkRequest::default()
        })
        .unwrap();
    let signed_request = || {
        Request::builder()
            .method("GET")
            .uri(signed_url.as_str())
            .header("host", "px.example")
            .header("user-agent", pixelpipe_bench::USER_AGENTS[1])
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    group.bench_function("signed_pixel_request_to_enqueued_hit", |b| {
        b.iter_batched(
            signed_request,
            |req| {
                let resp = runtime.block_on(signed_edge.handle(req, peer));
                let hit = signed_rx.try_recv().expect("the signed hit was enqueued");
                assert_eq!(hit.signature.map(wire::Signature::as_str), Some("valid"));
                resp
            },
            criterion::BatchSize::SmallInput,
        )
    });
    let query = signed_url.split_once('?').unwrap().1.to_owned();
    group.bench_function("verify_signature", |b| {
        b.iter(|| links.verify("/p.gif", &query, 1_800_000_000))
    });

    let hit = {
        runtime.block_on(edge.handle(pixel_request(5), peer));
        rx.try_recv().unwrap()
    };
    let mut buf = Vec::with_capacity(1024);
    group.bench_function("encode_hit_for_kafka", |b| {
        b.iter(|| {
            buf.clear();
            wire::encode(&hit, &mut buf);
            buf.len()
        })
    });

    // The batcher's privacy step per hit: default truncation, and the daily-salted hash.
    for (name, mode) in [
        ("privacy_truncate_ip", IpMode::Truncate),
        ("privacy_hash_ip", IpMode::Hash),
    ] {
        let privacy = Privacy::new(PrivacyConfig {
            ip_mode: mode,
            hash_secret: "bench-secret-0123456789".into(),
            ..PrivacyConfig::default()
        });
        group.bench_function(name, |b| {
            b.iter_batched(
                || hit.clone(),
                |mut h| {
                    privacy.apply(&mut h);
                    h
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }

    // The batcher's GeoIP step per hit: city and ASN lookups in MaxMind's test databases.
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../ingest/tests/data/geoip");
    let geo = Geo::open(&GeoConfig {
        city_db_path: format!("{data}/GeoIP2-City-Test.mmdb"),
        asn_db_path: format!("{data}/GeoLite2-ASN-Test.mmdb"),
        ..GeoConfig::default()
    })
    .unwrap();
    let mut located = hit.clone();
    located.client_ip = Some("214.78.120.5".parse().unwrap());
    group.bench_function("geoip_city_and_asn", |b| {
        b.iter_batched(
            || located.clone(),
            |mut h| {
                geo.enrich(&mut h);
                h
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
