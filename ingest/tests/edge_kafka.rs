//! The real edge on 127.0.0.1 against the real broker: what gets a 200/204 is on the topic.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use pixelpipe_ingest::wire::Transport;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn pixels_and_beacons_arrive_on_the_topic_with_their_fields() {
    let topic = unique_topic("fields");
    create_topic(&topic, 3).await;
    let edge = RunningEdge::start(test_config(&topic));
    assert!(
        edge.wait_ready(true, Duration::from_secs(20)).await,
        "edge never became ready"
    );

    let addr = edge.public;
    const PIXELS: usize = 40;
    const BEACONS: usize = 10; // each carries two hits
    let responses = tokio::task::spawn_blocking(move || {
        let mut statuses = Vec::new();
        for i in 0..PIXELS {
            let target = format!(
                "/p.gif?site=shop&e=open&campaign=spring&variant=B&uid=u{i}&msg=m{i}&value=1.5&currency=eur&seq={i}"
            );
            let r = http(addr, "GET", &target, &[
                ("User-Agent", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)"),
                ("Referer", "https://mail.example/"),
                ("Accept-Language", "de-DE"),
                ("DNT", "1"),
                ("Sec-GPC", "1"),
            ], b"");
            assert_eq!(r.body.len(), 43);
            statuses.push(r.status);
        }
        for i in 0..BEACONS {
            let body = format!(
                r#"[{{"site":"blog","e":"pageview","url":"https://blog.example/{i}","props":{{"seq":"b{i}"}}}},
                   {{"site":"blog","e":"conversion","value":9.99,"currency":"USD","props":{{"seq":"c{i}"}}}}]"#
            );
            let r = http(addr, "POST", "/collect", &[("Content-Type", "text/plain;charset=UTF-8")], body.as_bytes());
            statuses.push(r.status);
        }
        statuses
    })
    .await
    .unwrap();
    assert!(responses[..PIXELS].iter().all(|s| *s == 200));
    assert!(responses[PIXELS..].iter().all(|s| *s == 204));

    let want = PIXELS + 2 * BEACONS;
    let hits =
        tokio::task::spawn_blocking(move || read_hits(&topic, want, Duration::from_secs(60)))
            .await
            .unwrap();
    assert_eq!(hits.len(), want, "exactly one message per hit");
    let ids: HashSet<_> = hits.iter().map(|h| h.event_id).collect();
    assert_eq!(ids.len(), want, "event ids are unique");

    let seqs: HashSet<String> = hits
        .iter()
        .flat_map(|h| {
            h.props
                .iter()
                .filter(|(k, _)| k == "seq")
                .map(|(_, v)| v.clone())
        })
        .collect();
    for i in 0..PIXELS {
        assert!(seqs.contains(&i.to_string()), "pixel {i} missing");
    }
    for i in 0..BEACONS {
        assert!(
            seqs.contains(&format!("b{i}")) && seqs.contains(&format!("c{i}")),
            "beacon {i} missing"
        );
    }
    let pixel = hits
        .iter()
        .find(|h| h.props.contains(&("seq".into(), "7".into())))
        .unwrap();
    assert_eq!(pixel.transport, Transport::Pixel);
    assert_eq!(
        (pixel.site_id.as_str(), pixel.kind.as_str()),
        ("shop", "open")
    );
    assert_eq!(
        (pixel.campaign.as_deref(), pixel.variant.as_deref()),
        (Some("spring"), Some("B"))
    );
    assert_eq!(
        (pixel.user_id.as_deref(), pixel.message_id.as_deref()),
        (Some("u7"), Some("m7"))
    );
    assert_eq!(
        (pixel.value, pixel.currency.as_deref()),
        (Some(1.5), Some("EUR"))
    );
    assert_eq!(pixel.client_ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(
        pixel.user_agent.as_deref(),
        Some("Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)")
    );
    assert_eq!(pixel.referer.as_deref(), Some("https://mail.example/"));
    assert_eq!(pixel.accept_language.as_deref(), Some("de-DE"));
    assert_eq!(
        (pixel.dnt.as_deref(), pixel.sec_gpc.as_deref()),
        (Some("1"), Some("1"))
    );
    assert_eq!(
        (pixel.host.as_deref(), pixel.path.as_str()),
        (Some("px.test"), "/p.gif")
    );
    assert_eq!(pixel.edge_id, "it-edge");
    let conversion = hits
        .iter()
        .find(|h| h.props.contains(&("seq".into(), "c3".into())))
        .unwrap();
    assert_eq!(
        (conversion.transport, conversion.kind.as_str()),
        (Transport::Beacon, "conversion")
    );
    assert_eq!(
        (conversion.value, conversion.currency.as_deref()),
        (Some(9.99), Some("USD"))
    );

    // The delivery callback may trail the broker by a moment: wait for it rather than race it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while edge.metric("pixelpipe_ingest_kafka_delivered_total").await != Some(want as f64) {
        assert!(
            std::time::Instant::now() < deadline,
            "the delivered counter never reached {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let report = edge.shutdown().await;
    assert_eq!(
        (
            report.accepted,
            report.delivered,
            report.failed,
            report.dropped
        ),
        (want as u64, want as u64, 0, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn every_answered_hit_survives_shutdown_in_flight() {
    let topic = unique_topic("shutdown");
    create_topic(&topic, 2).await;
    let mut config = test_config(&topic);
    // A long linger keeps hits inside librdkafka when shutdown starts, so the flush is exercised.
    config.kafka.linger_ms = 2_000;
    let edge = RunningEdge::start(config);
    assert!(edge.wait_ready(true, Duration::from_secs(20)).await);

    let addr = edge.public;
    // Four clients send as fast as they can while the edge is told to stop.
    let clients: Vec<_> = (0..4)
        .map(|c| {
            tokio::task::spawn_blocking(move || {
                let mut answered = 0u64;
                for i in 0..100_000 {
                    let target = format!("/p.gif?site=s&seq={c}-{i}");
                    match std::panic::catch_unwind(|| http(addr, "GET", &target, &[], b"")) {
                        Ok(r) if r.status == 200 => answered += 1,
                        _ => break, // the listener closed: shutdown has begun
                    }
                }
                answered
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let report = edge.shutdown().await;
    let mut answered = 0;
    for c in clients {
        answered += c.await.unwrap();
    }
    assert!(answered > 0);
    assert_eq!(
        report.accepted, answered,
        "every answered pixel was accepted"
    );
    assert_eq!(
        (report.delivered, report.failed, report.dropped),
        (answered, 0, 0)
    );
    let hits = tokio::task::spawn_blocking(move || {
        read_hits(&topic, answered as usize, Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(
        hits.len() as u64,
        answered,
        "every answered hit is on the topic, once"
    );
}

/// Kafka away at shutdown, with deliveries that would wait longer than the flush: what
/// librdkafka still holds is purged into the spool before the final fsync and the report, even
/// after the metrics were scraped (the scrape reads the edge's readiness, and must not keep the
/// producer alive past the drain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scraped_edge_still_spools_what_kafka_holds_at_shutdown() {
    let mut config = test_config(&unique_topic("held"));
    config.kafka.brokers = "127.0.0.1:1".into();
    config.kafka.message_timeout_ms = 120_000;
    config.kafka.flush_timeout_ms = 300;
    let edge = RunningEdge::start(config);
    let addr = edge.public;
    tokio::task::spawn_blocking(move || {
        for i in 0..10 {
            assert_eq!(
                http(addr, "GET", &format!("/p.gif?site=s&n={i}"), &[], b"").status,
                200
            );
        }
    })
    .await
    .unwrap();
    assert_eq!(edge.metric("pixelpipe_ingest_ready").await, Some(0.0));
    let report = edge.shutdown().await;
    assert_eq!(
        (report.accepted, report.delivered, report.spooled),
        (10, 0, 10),
        "{report:?}"
    );
}

/// No broker at all: every pixel is still served, `/readyz` says why it is not ready, every
/// hit ends in the spool at shutdown, and the next edge on the same spool delivers each one to
/// the real broker, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn without_a_broker_hits_are_spooled_and_delivered_by_the_next_start() {
    let topic = unique_topic("no-broker");
    create_topic(&topic, 2).await;
    let mut config = test_config(&topic);
    // Nothing listens on port 1; librdkafka keeps retrying until message_timeout_ms.
    config.kafka.brokers = "127.0.0.1:1".into();
    config.kafka.message_timeout_ms = 1_500;
    config.kafka.flush_timeout_ms = 3_000;
    let spool_dir = config.spool.dir.clone();
    let edge = RunningEdge::start(config);
    let addr = edge.public;
    let statuses = tokio::task::spawn_blocking(move || {
        (0..25)
            .map(|i| http(addr, "GET", &format!("/p.gif?site=s&n={i}"), &[], b""))
            .map(|r| (r.status, r.body.len()))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(statuses.iter().all(|s| *s == (200, 43)), "{statuses:?}");
    let r = tokio::task::spawn_blocking(move || http(addr, "GET", "/readyz", &[], b""))
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(String::from_utf8_lossy(&r.body).contains("kafka not connected"));
    let report = edge.shutdown().await;
    assert_eq!(
        (
            report.accepted,
            report.delivered,
            report.dropped,
            report.spooled
        ),
        (25, 0, 0, 25),
        "{report:?}"
    );

    let mut config = test_config(&topic);
    config.spool.dir = spool_dir;
    let edge = RunningEdge::start(config);
    let hits = tokio::task::spawn_blocking(move || read_hits(&topic, 25, Duration::from_secs(60)))
        .await
        .unwrap();
    let mut seen: Vec<String> = hits.iter().map(|h| prop(h, "n").to_owned()).collect();
    seen.sort_by_key(|n| n.parse::<u32>().unwrap());
    assert_eq!(seen, (0..25).map(|i| i.to_string()).collect::<Vec<_>>());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while edge.metric("pixelpipe_ingest_spool_records").await != Some(0.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "the spool never emptied"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let report = edge.shutdown().await;
    assert_eq!((report.delivered, report.spooled), (25, 0), "{report:?}");
}

/// A delivery failure of another kind (the topic does not exist yet): the hits are spooled,
/// `/readyz` reports failing deliveries, and once the topic exists replay delivers them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn refused_hits_are_spooled_and_replayed_when_kafka_takes_them() {
    let topic = unique_topic("refused");
    let mut config = test_config(&topic);
    config.kafka.message_timeout_ms = 2_000;
    let edge = RunningEdge::start(config);
    let addr = edge.public;
    tokio::task::spawn_blocking(move || {
        for i in 0..30 {
            let r = http(addr, "GET", &format!("/p.gif?site=s&n={i}"), &[], b"");
            assert_eq!(r.status, 200);
        }
    })
    .await
    .unwrap();
    assert!(
        edge.wait_metric(
            "pixelpipe_ingest_spool_records",
            30.0,
            Duration::from_secs(30)
        )
        .await,
        "the failed hits never reached the spool"
    );
    assert!(
        edge.wait_ready(false, Duration::from_secs(5)).await,
        "/readyz must not say ready while deliveries fail"
    );
    create_topic(&topic, 2).await;
    let read = topic.clone();
    let hits = tokio::task::spawn_blocking(move || read_hits(&read, 30, Duration::from_secs(90)))
        .await
        .unwrap();
    let mut ns: Vec<u32> = hits.iter().map(|h| prop(h, "n").parse().unwrap()).collect();
    ns.sort_unstable();
    ns.dedup();
    assert_eq!(ns, (0..30).collect::<Vec<_>>());
    let report = edge.shutdown().await;
    assert_eq!((report.dropped, report.spooled), (0, 0), "{report:?}");
    assert!(report.failed >= 30, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_enforces_its_limits() {
    let mut config = test_config("limits");
    config.kafka.brokers = "127.0.0.1:1".into();
    config.kafka.message_timeout_ms = 500;
    config.http.header_read_timeout_ms = 300;
    config.http.max_connections = 2;
    let edge = RunningEdge::start(config);
    let addr = edge.public;
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        // A client that starts a request and never finishes it is cut off (slowloris).
        let mut slow = std::net::TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /p.gif?site=s HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let n = slow
            .read_to_end(&mut buf)
            .expect("closed by the server, not by our read timeout");
        let _ = n;
        // Oversized heads are refused by hyper before any handler runs.
        let huge = "a".repeat(20_000);
        let r = http(addr, "GET", &format!("/p.gif?site=s&x={huge}"), &[], b"");
        assert_eq!(r.status, 431, "{}", r.head);
    })
    .await
    .unwrap();
    // Both connections above are gone before the cap is tested, so it counts only the next ones.
    while edge.metric("pixelpipe_ingest_connections_open").await != Some(0.0) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        // Over the connection cap: the extra connection is closed without an answer.
        let _a = std::net::TcpStream::connect(addr).unwrap();
        let _b = std::net::TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut buf = Vec::new();
        let _ = c.read_to_end(&mut buf);
        assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    })
    .await
    .unwrap();
    assert_eq!(
        edge.metric("pixelpipe_ingest_connections_rejected_total")
            .await,
        Some(1.0)
    );
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn the_per_core_layout_serves_every_connection() {
    let topic = unique_topic("per-core");
    create_topic(&topic, 2).await;
    let mut config = test_config(&topic);
    config.http.runtime_layout = pixelpipe_ingest::RuntimeLayout::PerCore;
    config.http.worker_threads = 3;
    let edge = RunningEdge::start(config);
    assert!(edge.wait_ready(true, Duration::from_secs(20)).await);
    let addr = edge.public;
    // Fresh connections land on the three SO_REUSEPORT sockets as the kernel hashes them.
    let statuses = tokio::task::spawn_blocking(move || {
        (0..30)
            .map(|i| http(addr, "GET", &format!("/p.gif?site=s&n={i}"), &[], b"").status)
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(statuses.iter().all(|s| *s == 200));
    let report = edge.shutdown().await;
    assert_eq!((report.accepted, report.delivered), (30, 30));
    let hits = tokio::task::spawn_blocking(move || read_hits(&topic, 30, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(hits.len(), 30);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn privacy_policies_decide_what_reaches_kafka() {
    let topic = unique_topic("privacy");
    create_topic(&topic, 2).await;
    let edge = RunningEdge::start(privacy_config(&topic));
    assert!(edge.wait_ready(true, Duration::from_secs(20)).await);
    let addr = edge.public;
    let stored = tokio::task::spawn_blocking(move || send_privacy_hits(addr))
        .await
        .unwrap();
    let report = edge.shutdown().await;
    assert_eq!(
        (report.accepted, report.delivered, report.dropped),
        (9, 7, 2),
        "{report:?}"
    );

    let hits = tokio::task::spawn_blocking(move || {
        read_hits(&topic, stored.len(), Duration::from_secs(60))
    })
    .await
    .unwrap();
    assert_eq!(
        hits.len(),
        7,
        "the GPC hit of a dropping site and the opted-out hit never reach Kafka"
    );
    let by_case = |case: &str| {
        hits.iter()
            .find(|h| h.props.contains(&("case".to_string(), case.to_string())))
            .unwrap_or_else(|| panic!("{case} missing"))
            .clone()
    };
    let raw: std::net::IpAddr = PRIVACY_CLIENT_IP.parse().unwrap();
    let trunc = by_case("trunc");
    assert_eq!(
        (trunc.client_ip, trunc.ip_hash.as_deref()),
        (Some("214.78.120.0".parse().unwrap()), None)
    );
    assert_eq!(
        (
            trunc.user_id.as_deref(),
            trunc.user_agent.as_deref(),
            trunc.anonymized
        ),
        (Some("u-1"), Some("UA-test"), false)
    );
    assert_eq!(by_case("full").client_ip, Some(raw));
    let day = trunc.received_at_ms / 86_400_000;
    let want = pixelpipe_ingest::privacy::visitor_id(HASH_SECRET, day, "p-trunc", raw, "UA-test");
    assert_eq!(
        trunc.visitor_id.as_deref(),
        Some(want.as_str()),
        "computed from the full address"
    );
    // The place comes from the full address, looked up before the policy minimised it.
    for case in ["trunc", "full", "hash", "drop"] {
        let h = by_case(case);
        let place = (
            h.geo_country.as_deref(),
            h.geo_region.as_deref(),
            h.geo_city.as_deref(),
            h.asn,
            h.as_org.as_deref(),
        );
        assert_eq!(
            place,
            (
                Some("US"),
                Some("CA"),
                Some("San Diego"),
                Some(721),
                Some("DoD Network Information Center")
            ),
            "{case}"
        );
    }
    let hash = by_case("hash");
    let want =
        pixelpipe_ingest::privacy::hash_ip(HASH_SECRET, hash.received_at_ms / 86_400_000, raw);
    assert_eq!(
        (hash.client_ip, hash.ip_hash.as_deref()),
        (None, Some(want.as_str()))
    );
    let dropped = by_case("drop");
    assert_eq!(
        (dropped.client_ip, dropped.ip_hash.as_deref()),
        (None, None)
    );
    for case in ["gpc", "dnt", "noconsent"] {
        let h = by_case(case);
        assert!(h.anonymized, "{case}");
        assert_eq!(h.visitor_id, None, "{case}");
        assert_eq!(
            (h.geo_country.as_deref(), h.geo_city.as_deref(), h.asn),
            (Some("US"), None, None),
            "{case}: the country only"
        );
        assert_eq!(
            (
                h.client_ip,
                h.ip_hash.as_deref(),
                h.user_id.as_deref(),
                h.user_agent.as_deref()
            ),
            (None, None, None, None),
            "{case}"
        );
    }
    let serialized = hits
        .iter()
        .map(|h| serde_json::to_string(h).unwrap())
        .collect::<String>();
    assert_eq!(
        serialized.matches(PRIVACY_CLIENT_IP).count(),
        1,
        "the raw IP appears only in the `full` site's kept hit"
    );
}

/// A machine that sends a privacy signal is still a machine: the edge removes its user agent but
/// keeps the class the user agent gave, decided from the full request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn anonymous_machines_keep_their_class_on_the_topic() {
    use pixelpipe_common::classes::{Class, TrafficClass};
    let topic = unique_topic("uaclass");
    create_topic(&topic, 1).await;
    let edge = RunningEdge::start(privacy_config(&topic));
    assert!(edge.wait_ready(true, Duration::from_secs(20)).await);
    let addr = edge.public;
    let cases: [(&str, &str, (&str, &str)); 3] = [
        ("curl", "curl/8.5.0", ("DNT", "1")),
        (
            "scanner",
            "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))",
            ("Sec-GPC", "1"),
        ),
        (
            "browser",
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
            ("DNT", "1"),
        ),
    ];
    tokio::task::spawn_blocking(move || {
        for (case, ua, signal) in cases {
            let r = http(
                addr,
                "GET",
                &format!("/p.gif?site=p-trunc&e=open&case={case}"),
                &[("User-Agent", ua), signal],
                b"",
            );
            assert_eq!(r.status, 200, "{case}");
        }
    })
    .await
    .unwrap();
    let hits = tokio::task::spawn_blocking(move || read_hits(&topic, 3, Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(hits.len(), 3);
    let by_case = |case: &str| {
        hits.iter()
            .find(|h| h.props.contains(&("case".to_string(), case.to_string())))
            .unwrap_or_else(|| panic!("{case} missing"))
    };
    for (case, want) in [
        (
            "curl",
            Some(Class {
                class: TrafficClass::Bot,
                reason: "http_library",
            }),
        ),
        (
            "scanner",
            Some(Class {
                class: TrafficClass::Scanner,
                reason: "barracuda",
            }),
        ),
        ("browser", None),
    ] {
        let h = by_case(case);
        assert_eq!(
            (h.anonymized, h.user_agent.as_deref(), h.user_agent_class),
            (true, None, want),
            "{case}"
        );
    }
    edge.shutdown().await;
}

/// A hit larger than Kafka takes (here: a producer whose `message.max.bytes` is below what the
/// edge's limits allow, as a broker or topic with a smaller limit would be) is the one hit the
/// edge gives up: counted `too_large`, not spooled; the hits around it are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn a_hit_too_large_for_kafka_is_dropped_and_counted_the_rest_delivered() {
    let topic = unique_topic("too-large");
    create_topic(&topic, 1).await;
    let config = test_config(&topic);
    // The edge refuses to start with a message.max.bytes its limits can exceed; a broker or
    // topic with a smaller limit than the edge was told is what this stands for.
    let mut smaller = config.kafka.clone();
    smaller
        .properties
        .insert("message.max.bytes".into(), "1500".into());
    let edge = RunningEdge::start_with_producer(config, smaller);
    assert!(edge.wait_ready(true, Duration::from_secs(20)).await);
    let addr = edge.public;
    tokio::task::spawn_blocking(move || {
        let big = "x".repeat(1900);
        for target in [
            "/p.gif?site=s&n=small-1".to_owned(),
            format!("/p.gif?site=s&n=big&note={big}"),
            "/p.gif?site=s&n=small-2".to_owned(),
        ] {
            assert_eq!(http(addr, "GET", &target, &[], b"").status, 200);
        }
    })
    .await
    .unwrap();
    let read = topic.clone();
    let hits = tokio::task::spawn_blocking(move || read_hits(&read, 2, Duration::from_secs(60)))
        .await
        .unwrap();
    let mut ns: Vec<String> = hits.iter().map(|h| prop(h, "n").to_owned()).collect();
    ns.sort();
    assert_eq!(ns, ["small-1", "small-2"]);
    let report = edge.shutdown().await;
    assert_eq!(
        (report.delivered, report.dropped, report.spooled),
        (2, 1, 0),
        "{report:?}"
    );
}

/// librdkafka's default partitioner puts a keyed message on `crc32(key) % partitions`; the edge
/// packs hits to the partitions `pack::partition_for` gives, so both must agree for a visitor's
/// hits to stay on one partition whether they travel packed or alone (replay, a batch of one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn librdkafka_puts_a_keyed_message_where_packing_puts_its_hits() {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let topic = unique_topic("partitioner");
    create_topic(&topic, 7).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    for i in 0..40 {
        let key = format!("visitor-{i}");
        let partition = producer
            .send(
                FutureRecord::<str, [u8]>::to(&topic)
                    .key(&key)
                    .payload(b"{}"),
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("send: {e}"))
            .partition;
        assert_eq!(
            partition,
            pixelpipe_ingest::pack::partition_for(key.as_bytes(), 7),
            "key {key}"
        );
    }
}

/// Hits arriving together are packed several per message, each on its visitor's partition, in
/// the order sent, every one exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker: deploy/local/test.sh starts it"
)]
async fn hits_are_packed_per_partition_keeping_each_visitors_order() {
    let topic = unique_topic("packing");
    create_topic(&topic, 3).await;
    let mut config = test_config(&topic);
    // Batches gather for 200 ms, so a quick burst packs.
    config.queue.batch_linger_ms = 200;
    let edge = RunningEdge::start(config);
    assert!(edge.wait_ready(true, Duration::from_secs(20)).await);
    let addr = edge.public;
    let pixel = move |uid: &str, seq: usize| {
        let target = format!("/p.gif?site=shop&uid={uid}&seq={seq}");
        http(addr, "GET", &target, &[], b"").status
    };
    // Until the producer knows the partition count, hits travel one per message.
    assert_eq!(
        tokio::task::spawn_blocking(move || pixel("warm-up", 0))
            .await
            .unwrap(),
        200
    );
    assert!(
        edge.wait_metric(
            "pixelpipe_ingest_kafka_topic_partitions",
            3.0,
            Duration::from_secs(20)
        )
        .await
    );
    const VISITORS: usize = 12;
    const EACH: usize = 5;
    let statuses = tokio::task::spawn_blocking(move || {
        let mut s = Vec::new();
        for seq in 0..EACH {
            for v in 0..VISITORS {
                s.push(pixel(&format!("v{v}"), seq));
            }
        }
        s
    })
    .await
    .unwrap();
    assert!(statuses.iter().all(|s| *s == 200));

    let want = 1 + VISITORS * EACH;
    let messages =
        tokio::task::spawn_blocking(move || read_messages(&topic, want, Duration::from_secs(60)))
            .await
            .unwrap();
    let mut seen: Vec<(String, usize)> = Vec::new();
    let mut largest = 0;
    for (partition, payload) in &messages {
        largest = largest.max(pixelpipe_ingest::wire::hits_in(payload));
        for one in pixelpipe_ingest::wire::unpack(payload) {
            let hit = pixelpipe_ingest::wire::decode(one).unwrap();
            let uid = hit.user_id.clone().unwrap();
            assert_eq!(
                *partition,
                pixelpipe_ingest::pack::partition_for(uid.as_bytes(), 3),
                "{uid} on its key's partition"
            );
            seen.push((uid, prop(&hit, "seq").parse().unwrap()));
        }
    }
    assert_eq!(seen.len(), want, "every hit exactly once");
    assert!(largest > 1, "some message packs several hits");
    assert!(messages.len() < want);
    for v in 0..VISITORS {
        let uid = format!("v{v}");
        let seqs: Vec<usize> = seen
            .iter()
            .filter(|(u, _)| *u == uid)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(seqs, (0..EACH).collect::<Vec<_>>(), "{uid} in order");
    }
    let messages_metric = edge
        .metric("pixelpipe_ingest_kafka_message_hits_count")
        .await
        .unwrap();
    assert_eq!(messages_metric as usize, messages.len());
    edge.shutdown().await;
}
