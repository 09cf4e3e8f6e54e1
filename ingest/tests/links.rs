//! Signed links end to end: `pixelpipe-ingest url` (the real binary) builds pixel and click URLs,
//! the real edge checks them, and what it decided is on the real broker's topic.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const KEY: (&str, &str) = ("k2026a", "a-test-signing-secret-0123");

fn url_command(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_pixelpipe-ingest"))
        .args(["--set", &format!("links.keys.{}={}", KEY.0, KEY.1)])
        .arg("url")
        .args(args)
        .output()
        .expect("run pixelpipe-ingest url");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn urls_built_by_the_cli_are_verified_by_the_edge() {
    let topic = unique_topic("links");
    create_topic(&topic, 1).await;
    let mut config = test_config(&topic);
    config.links.keys.insert(KEY.0.into(), KEY.1.into());
    config.links.sites.insert(
        "shop".into(),
        pixelpipe_ingest::links::SiteLinks {
            unsigned_conversions: Some(pixelpipe_ingest::links::ConversionPolicy::Flag),
            ..Default::default()
        },
    );
    let edge = RunningEdge::start(config);
    assert!(edge.wait_ready(true, Duration::from_secs(20)).await);
    let base = format!("http://{}", edge.public);

    let open = url_command(&[
        "--base",
        &base,
        "--site",
        "shop",
        "--kind",
        "open",
        "--campaign",
        "spring",
        "--msg",
        "m-7",
        "--sign",
        "--expires-in-days",
        "30",
        "--sent-at",
        "now",
    ]);
    let click = url_command(&[
        "--base",
        &base,
        "--site",
        "shop",
        "--campaign",
        "spring",
        "--click",
        "https://partner.example/offer?id=7",
        "--sign",
    ]);
    let conversion = url_command(&[
        "--base",
        &base,
        "--site",
        "shop",
        "--kind",
        "conversion",
        "--param",
        "value=49.90",
        "--param",
        "currency=EUR",
        "--sign",
    ]);
    let img = url_command(&[
        "--base", &base, "--site", "shop", "--kind", "open", "--html",
    ]);
    assert!(
        img.starts_with("<img src=\"http://") && img.contains("&amp;e=open"),
        "{img}"
    );

    let path = |url: &str| url.strip_prefix(&base).unwrap().to_owned();
    let addr = edge.public;
    let (open_p, click_p, conv_p) = (path(&open), path(&click), path(&conversion));
    let statuses = tokio::task::spawn_blocking(move || {
        let ua = [(
            "User-Agent",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
        )];
        let mut out = Vec::new();
        out.push(http(addr, "GET", &open_p, &ua, b"").status);
        let c = http(addr, "GET", &click_p, &ua, b"");
        assert!(
            c.head
                .contains("location: https://partner.example/offer?id=7"),
            "{}",
            c.head
        );
        out.push(c.status);
        out.push(http(addr, "GET", &conv_p, &ua, b"").status);
        // The same conversion with its value raised: still a GIF, stored as unverified.
        out.push(http(addr, "GET", &conv_p.replace("49.90", "4990"), &ua, b"").status);
        // A click whose target was swapped after signing: refused, nothing stored.
        out.push(
            http(
                addr,
                "GET",
                &click_p.replace("partner.example", "evil.example"),
                &ua,
                b"",
            )
            .status,
        );
        out
    })
    .await
    .unwrap();
    assert_eq!(statuses, vec![200, 302, 200, 200, 400]);

    let hits = read_hits(&topic, 4, Duration::from_secs(30));
    assert_eq!(hits.len(), 4);
    let by_kind = |kind: &str| hits.iter().filter(|h| h.kind == kind).collect::<Vec<_>>();
    let open = by_kind("open")[0];
    assert_eq!(
        open.signature
            .map(pixelpipe_ingest::wire::Signature::as_str),
        Some("valid")
    );
    assert_eq!(open.message_id.as_deref(), Some("m-7"));
    let sent = open
        .sent_at_ms
        .expect("a valid signature carries the send time");
    assert!(open.received_at_ms >= sent && open.received_at_ms - sent < 120_000);
    let click = by_kind("click")[0];
    assert_eq!(
        click.url.as_deref(),
        Some("https://partner.example/offer?id=7")
    );
    assert_eq!(
        click
            .signature
            .map(pixelpipe_ingest::wire::Signature::as_str),
        Some("valid")
    );
    let conversions = by_kind("conversion");
    let verdicts: Vec<(Option<f64>, Option<&str>, bool)> = conversions
        .iter()
        .map(|h| {
            (
                h.value,
                h.signature.map(pixelpipe_ingest::wire::Signature::as_str),
                h.unverified,
            )
        })
        .collect();
    assert_eq!(
        verdicts,
        vec![
            (Some(49.9), Some("valid"), false),
            (Some(4990.0), Some("invalid"), true)
        ]
    );
    let refused = edge
        .metric("pixelpipe_ingest_clicks_refused_total{reason=\"bad_signature\"}")
        .await;
    assert_eq!(refused, Some(1.0));
    edge.shutdown().await;
}
