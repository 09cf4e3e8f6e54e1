//! The routes called directly with in-memory requests: what each answers, queues and counts.

use super::*;
use crate::produce::{DeliveryFailure, Origin};
use crate::response::PIXEL_GIF;
use crate::testing::TempLedger;
use crate::wire::Hit;
use crossbeam_channel::Receiver;
use http_body_util::Full;
use hyper::header::HeaderValue;

struct Fixture {
    edge: Edge,
    rx: Receiver<Box<Hit>>,
    metrics: Metrics,
    spool: TempLedger,
}

fn fixture(config: Config, capacity: usize) -> Fixture {
    fixture_with(config, capacity, TempLedger::new())
}

fn fixture_with(config: Config, capacity: usize, spool: TempLedger) -> Fixture {
    let (edge, rx) = spool.edge(&config, capacity);
    Fixture {
        edge,
        rx,
        metrics: spool.metrics().clone(),
        spool,
    }
}

fn config() -> Config {
    Config {
        edge_id: "test-edge".into(),
        ..Config::default()
    }
}

fn req(method: &str, uri: &str, body: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap()
}

fn peer() -> IpAddr {
    "198.51.100.7".parse().unwrap()
}

async fn call(f: &Fixture, r: Request<Full<Bytes>>) -> (StatusCode, hyper::HeaderMap, Bytes) {
    let resp = f.edge.handle(r, peer()).await;
    let (parts, body) = resp.into_parts();
    (
        parts.status,
        parts.headers,
        body.collect().await.unwrap().to_bytes(),
    )
}

fn counter(f: &Fixture, series: &str) -> u64 {
    let text = f.metrics.render();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} not in\n{text}"))
}

#[tokio::test]
async fn pixel_answers_the_gif_and_queues_the_hit() {
    let f = fixture(config(), 16);
    let mut r = req("GET", "/p.gif?site=shop&e=open&campaign=spring&k=v", "");
    r.headers_mut().insert(
        header::USER_AGENT,
        HeaderValue::from_static("Mozilla/5.0 test"),
    );
    let (status, headers, body) = call(&f, r).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], &PIXEL_GIF[..]);
    assert_eq!(headers[CONTENT_TYPE], "image/gif");
    assert_eq!(headers[CONTENT_LENGTH], "43");
    assert_eq!(
        headers[header::CACHE_CONTROL],
        "no-store, no-cache, must-revalidate, max-age=0"
    );
    assert_eq!(headers[header::PRAGMA], "no-cache");
    assert_eq!(headers[header::EXPIRES], "0");
    let hit = f.rx.try_recv().unwrap();
    assert_eq!(
        (
            hit.site_id.as_str(),
            hit.kind.as_str(),
            hit.campaign.as_deref()
        ),
        ("shop", "open", Some("spring"))
    );
    assert_eq!(hit.client_ip, Some(peer()));
    assert_eq!(hit.user_agent.as_deref(), Some("Mozilla/5.0 test"));
    assert_eq!(hit.edge_id, "test-edge");
    assert_eq!(hit.props, vec![("k".to_string(), "v".to_string())]);
    assert!(!hit.head_request);
    assert_eq!(
        counter(
            &f,
            "pixelpipe_ingest_requests_total{route=\"pixel\",status=\"200\"}"
        ),
        1
    );
}

#[tokio::test]
async fn head_is_served_and_marked() {
    let f = fixture(config(), 16);
    let (status, headers, _) = call(&f, req("HEAD", "/p.gif?site=s", "")).await;
    assert_eq!(
        (status, &headers[CONTENT_LENGTH]),
        (StatusCode::OK, &HeaderValue::from_static("43"))
    );
    assert!(f.rx.try_recv().unwrap().head_request);
}

#[tokio::test]
async fn invalid_hits_still_get_the_gif_and_are_counted() {
    let f = fixture(config(), 16);
    for uri in [
        "/p.gif",
        "/p.gif?e=open",
        "/p.gif?site=bad%20site",
        "/p.gif?site=s&e=two%20words",
    ] {
        let (status, _, body) = call(&f, req("GET", uri, "")).await;
        assert_eq!((status, body.len()), (StatusCode::OK, 43), "{uri}");
    }
    assert!(f.rx.try_recv().is_err(), "nothing invalid is queued");
    assert_eq!(
        counter(
            &f,
            "pixelpipe_ingest_hits_invalid_total{reason=\"missing_site\"}"
        ),
        2
    );
    assert_eq!(
        counter(
            &f,
            "pixelpipe_ingest_hits_invalid_total{reason=\"bad_site\"}"
        ),
        1
    );
    assert_eq!(
        counter(
            &f,
            "pixelpipe_ingest_hits_invalid_total{reason=\"bad_kind\"}"
        ),
        1
    );
}

#[tokio::test]
async fn a_full_queue_still_serves_and_turns_not_ready() {
    let f = fixture(config(), 2);
    for _ in 0..3 {
        let (status, _, _) = call(&f, req("GET", "/p.gif?site=s", "")).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(counter(&f, "pixelpipe_ingest_queue_spilled_total"), 1);
    assert_eq!(
        f.spool.spool().stats().records,
        1,
        "the third hit is spooled"
    );
    let (status, _, body) = call(&f, req("GET", "/readyz", "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: queue above its high-water mark\n");
    f.rx.try_recv().unwrap();
    f.rx.try_recv().unwrap();
    let (status, _, _) = call(&f, req("GET", "/readyz", "")).await;
    assert_eq!(status, StatusCode::OK);
    f.edge.begin_shutdown();
    let (status, _, _) = call(&f, req("GET", "/readyz", "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

/// `/readyz` names every reason it is not ready: failing deliveries (not only a lost
/// connection), a spool above its high-water mark, and both at once.
#[tokio::test]
async fn readiness_tells_failing_deliveries_and_a_filling_spool() {
    let spool = TempLedger::with(|c| {
        c.segment_bytes = 64 * 1024;
        c.max_bytes = 128 * 1024;
        c.high_water_percent = 1;
    });
    let ledger = spool.ledger();
    let f = fixture_with(config(), 16, spool);
    let readyz = || async { call(&f, req("GET", "/readyz", "")).await };
    assert_eq!(readyz().await.0, StatusCode::OK);

    ledger.delivered(Origin::Memory, std::time::Instant::now(), 1);
    ledger.failed(
        Origin::Memory,
        None,
        &[0; 400],
        DeliveryFailure::BrokerError,
    );
    let (status, _, body) = readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: kafka deliveries failing\n");
    assert_eq!(
        counter(
            &f,
            "pixelpipe_ingest_kafka_failed_total{reason=\"broker_error\"}"
        ),
        1
    );

    // Three more failures take the spool over 1 % of 128 KiB.
    for _ in 0..3 {
        ledger.failed(Origin::Memory, None, &[0; 400], DeliveryFailure::Transport);
    }
    let (_, _, body) = readyz().await;
    assert_eq!(
        body,
        "not ready: kafka deliveries failing; spool above its high-water mark\n"
    );

    // A delivery after the failures: deliveries work again; the spool is still too full.
    ledger.delivered(Origin::Memory, std::time::Instant::now(), 1);
    let (_, _, body) = readyz().await;
    assert_eq!(body, "not ready: spool above its high-water mark\n");
}

/// With `output = "file"` the reasons name the file output, not Kafka.
#[tokio::test]
async fn readiness_names_the_file_output() {
    let spool = TempLedger::new();
    let ledger = spool.ledger();
    let f = fixture_with(
        Config {
            output: crate::Output::File,
            ..config()
        },
        16,
        spool,
    );
    ledger.failed(Origin::Memory, None, &[0; 40], DeliveryFailure::WriteFailed);
    let (status, _, body) = call(&f, req("GET", "/readyz", "")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "not ready: file writes failing\n");
}

#[tokio::test]
async fn collect_takes_one_or_many_hits() {
    let f = fixture(config(), 16);
    let (status, headers, _) = call(
        &f,
        req(
            "POST",
            "/collect",
            r#"{"site":"s","e":"conversion","value":5}"#,
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let hit = f.rx.try_recv().unwrap();
    assert_eq!(
        (hit.kind.as_str(), hit.value, hit.transport),
        ("conversion", Some(5.0), Transport::Beacon)
    );
    let mut r = req(
        "POST",
        "/collect",
        r#"[{"site":"a"},{"site":"b"},7,{"e":"x"}]"#,
    );
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain;charset=UTF-8"),
    );
    let (status, _, _) = call(&f, r).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        f.rx.try_iter().map(|h| h.site_id).collect::<Vec<_>>(),
        vec!["a", "b"]
    );
    assert_eq!(
        counter(
            &f,
            "pixelpipe_ingest_hits_invalid_total{reason=\"not_an_object\"}"
        ),
        1
    );
    assert_eq!(
        counter(
            &f,
            "pixelpipe_ingest_hits_invalid_total{reason=\"missing_site\"}"
        ),
        1
    );
}

/// A browser sends credentials with every beacon, and refuses a credentialed answer that says
/// `Access-Control-Allow-Origin: *` (Fetch standard, CORS check): the origin is echoed instead.
#[tokio::test]
async fn collect_answers_a_credentialed_origin_by_name() {
    let f = fixture(config(), 16);
    let origin = "https://shop.example";
    let with_origin = |method: &str, body: &str, extra: &[(&'static str, &'static str)]| {
        let mut r = req(method, "/collect", body);
        r.headers_mut()
            .insert(header::ORIGIN, HeaderValue::from_static(origin));
        for (name, value) in extra {
            r.headers_mut()
                .insert(*name, HeaderValue::from_static(value));
        }
        r
    };
    let preflight = with_origin(
        "OPTIONS",
        "",
        &[
            ("access-control-request-method", "POST"),
            ("access-control-request-headers", "content-type"),
        ],
    );
    let beacon = with_origin(
        "POST",
        r#"{"site":"s","e":"signup"}"#,
        &[("content-type", "application/json")],
    );
    let bad = with_origin("POST", "{not json", &[]);
    for (what, r, want) in [
        ("preflight", preflight, StatusCode::NO_CONTENT),
        ("beacon", beacon, StatusCode::NO_CONTENT),
        ("error, readable by the page", bad, StatusCode::BAD_REQUEST),
    ] {
        let (status, headers, _) = call(&f, r).await;
        assert_eq!(status, want, "{what}");
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            origin,
            "{what}"
        );
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_CREDENTIALS],
            "true",
            "{what}"
        );
        assert_eq!(headers[header::VARY], "origin", "{what}");
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_METHODS],
            "POST, OPTIONS",
            "{what}"
        );
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "content-type, content-encoding",
            "{what}"
        );
    }
    assert_eq!(f.rx.try_recv().unwrap().kind, "signup");
    assert!(f.rx.try_recv().is_err(), "one hit: the beacon's");
}

/// A request without `Origin` is no browser's CORS request: answered as before, `*` and no
/// credentials, but still `Vary: Origin`, since a browser's answer to the same URL differs.
#[tokio::test]
async fn collect_without_an_origin_is_answered_as_before() {
    let f = fixture(config(), 16);
    for (method, body) in [("OPTIONS", ""), ("POST", r#"{"site":"s"}"#)] {
        let (status, headers, _) = call(&f, req(method, "/collect", body)).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{method}");
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "*",
            "{method}"
        );
        assert!(
            !headers.contains_key(header::ACCESS_CONTROL_ALLOW_CREDENTIALS),
            "{method}"
        );
        assert_eq!(headers[header::VARY], "origin", "{method}");
    }
    assert_eq!(f.rx.try_recv().unwrap().site_id, "s");
}

#[tokio::test]
async fn collect_rejects_bad_bodies_with_a_reason() {
    let mut c = config();
    c.http.max_body_bytes = 64;
    let f = fixture(c, 16);
    let (status, _, body) = call(&f, req("POST", "/collect", "{not json")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let line = std::str::from_utf8(&body).unwrap();
    assert!(
        line.starts_with("malformed JSON: ") && line.trim_end().lines().count() == 1,
        "{line}"
    );
    let (status, _, body) = call(&f, req("POST", "/collect", "\"text\"")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:?}");
    let big = format!("{{\"site\":\"s\",\"x\":\"{}\"}}", "y".repeat(100));
    let (status, _, _) = call(&f, req("POST", "/collect", &big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut r = req("POST", "/collect", &big);
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from_static("100"));
    let (status, _, _) = call(&f, r).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut r = req("POST", "/collect", "{}");
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    );
    let (status, _, _) = call(&f, r).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(f.rx.try_recv().is_err());
    assert_eq!(
        counter(
            &f,
            "pixelpipe_ingest_requests_total{route=\"collect\",status=\"413\"}"
        ),
        2
    );
}

/// The events of one body stand alone: a lone surrogate, a number beyond `f64` or an integer
/// beyond 2^53 in one event costs that value (replaced, cut or kept as sent), never the others.
#[tokio::test]
async fn one_bad_value_never_costs_the_other_events() {
    let f = fixture(config(), 16);
    let body = r#"[{"site":"a","title":"caf\ud83d"},{"site":"b","e":"conversion","value":1e400},
        {"site":"c","uid":123456789012345678901234,"props":{"n":1.0e2}}]"#;
    let (status, _, _) = call(&f, req("POST", "/collect", body)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let hits: Vec<_> = f.rx.try_iter().collect();
    assert_eq!(hits.len(), 3);
    assert_eq!(hits[0].title.as_deref(), Some("caf\u{FFFD}"));
    assert_eq!((hits[1].kind.as_str(), hits[1].value), ("conversion", None));
    assert_eq!(hits[1].cut_fields, 1);
    assert_eq!(hits[2].user_id.as_deref(), Some("123456789012345678901234"));
    assert_eq!(hits[2].props, vec![("n".to_owned(), "1.0e2".to_owned())]);
    // Bytes that are not UTF-8 in one string cost that member; the body and its other events
    // are read.
    let mut r = req("POST", "/collect", "");
    *r.body_mut() = Full::new(Bytes::from_static(
        b"[{\"site\":\"d\",\"title\":\"x\xFFy\",\"url\":\"/d\"},{\"site\":\"e\"}]",
    ));
    let (status, _, _) = call(&f, r).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let hits: Vec<_> = f.rx.try_iter().collect();
    assert_eq!(hits.len(), 2);
    assert_eq!(
        (hits[0].title.as_deref(), hits[0].url.as_deref()),
        (None, Some("/d"))
    );
    assert_eq!(hits[1].site_id, "e");
    for (reason, n) in [
        ("lone_surrogate", 1),
        ("bad_number", 1),
        ("bad_encoding", 1),
    ] {
        let name = format!("pixelpipe_ingest_fields_cut_total{{reason=\"{reason}\"}}");
        assert_eq!(counter(&f, &name), n, "{reason}");
    }
}

#[tokio::test]
async fn routes_methods_and_health() {
    let f = fixture(config(), 16);
    let cases = [
        ("GET", "/healthz", StatusCode::OK),
        ("GET", "/nope", StatusCode::NOT_FOUND),
        ("GET", "/metrics", StatusCode::NOT_FOUND),
        ("POST", "/p.gif", StatusCode::METHOD_NOT_ALLOWED),
        ("DELETE", "/p.gif", StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/collect", StatusCode::METHOD_NOT_ALLOWED),
        ("OPTIONS", "/collect", StatusCode::NO_CONTENT),
        ("POST", "/healthz", StatusCode::METHOD_NOT_ALLOWED),
        ("GET", "/readyz", StatusCode::OK),
    ];
    for (method, uri, want) in cases {
        let (status, headers, _) = call(&f, req(method, uri, "")).await;
        assert_eq!(status, want, "{method} {uri}");
        if want == StatusCode::METHOD_NOT_ALLOWED {
            assert!(headers.contains_key(header::ALLOW), "{method} {uri}");
        }
    }
}

#[tokio::test]
async fn forwarded_addresses_only_from_trusted_proxies() {
    let mut c = config();
    c.http.trusted_proxies = vec!["198.51.100.0/24".into()];
    let f = fixture(c, 16);
    let mut r = req("GET", "/p.gif?site=s", "");
    r.headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_static("203.0.113.50"));
    call(&f, r).await;
    assert_eq!(
        f.rx.try_recv().unwrap().client_ip,
        Some("203.0.113.50".parse().unwrap())
    );
    assert_eq!(
        counter(&f, "pixelpipe_ingest_forwarding_ignored_total"),
        0,
        "believed, not ignored"
    );
    // No proxy trusted: the header is ignored, the peer recorded, and the ignoring counted, so
    // a proxy missing from http.trusted_proxies shows.
    let f = fixture(config(), 16);
    let mut r = req("GET", "/p.gif?site=s", "");
    r.headers_mut()
        .insert("x-forwarded-for", HeaderValue::from_static("203.0.113.50"));
    call(&f, r).await;
    let hit = f.rx.try_recv().unwrap();
    // Nothing of the hit is cut: its client is the peer, as it should be.
    assert_eq!((hit.client_ip, hit.cut_fields), (Some(peer()), 0));
    assert_eq!(counter(&f, "pixelpipe_ingest_forwarding_ignored_total"), 1);
}

#[tokio::test]
async fn an_unknown_forwarded_client_is_stored_without_an_ip_and_counted() {
    let mut c = config();
    c.http.trusted_proxies = vec!["198.51.100.0/24".into()];
    let f = fixture(c, 16);
    let unknown = || HeaderValue::from_static("203.0.113.50, unknown");
    let mut r = req("GET", "/p.gif?site=s", "");
    r.headers_mut().insert("x-forwarded-for", unknown());
    assert_eq!(call(&f, r).await.0, StatusCode::OK);
    let mut r = req("POST", "/collect", r#"[{"site":"a"},{"site":"b"}]"#);
    r.headers_mut().insert("x-forwarded-for", unknown());
    assert_eq!(call(&f, r).await.0, StatusCode::NO_CONTENT);
    let hits: Vec<Box<Hit>> = f.rx.try_iter().collect();
    assert_eq!(hits.len(), 3);
    for hit in &hits {
        assert_eq!(
            (hit.client_ip, hit.cut_fields),
            (None, 1),
            "not the proxy's address: {}",
            hit.site_id
        );
    }
    assert_eq!(
        counter(
            &f,
            "pixelpipe_ingest_fields_cut_total{reason=\"unknown_client_ip\"}"
        ),
        3
    );
}

#[tokio::test]
async fn optout_and_optin_set_and_clear_the_cookie_that_hits_carry() {
    let f = fixture(config(), 16);
    let (status, headers, body) = call(&f, req("GET", "/optout", "")).await;
    assert_eq!(status, StatusCode::OK);
    let cookie = headers[header::SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.starts_with("pixelpipe_optout=1;")
            && cookie.contains("Max-Age=63072000")
            && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert!(std::str::from_utf8(&body).unwrap().contains("opted out"));
    let (_, headers, _) = call(&f, req("GET", "/optin", "")).await;
    assert!(headers[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .starts_with("pixelpipe_optout=; Max-Age=0"));
    let (status, _, _) = call(&f, req("POST", "/optout", "")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    for (cookie, opted_out) in [
        ("a=1; pixelpipe_optout=1", true),
        ("pixelpipe_optout=0", false),
        ("other=1", false),
    ] {
        let mut r = req("GET", "/p.gif?site=s", "");
        r.headers_mut()
            .insert(header::COOKIE, HeaderValue::from_str(cookie).unwrap());
        call(&f, r).await;
        assert_eq!(f.rx.try_recv().unwrap().opted_out, opted_out, "{cookie}");
    }
}

/// Signed links, click redirects and the conversion policy, through the routes.
mod links {
    use super::*;
    use crate::links::{ConversionPolicy, LinkRequest, LinksConfig, SiteLinks};
    use crate::redirect::TargetError;

    fn links_config() -> Config {
        let mut c = Config {
            edge_id: "test-edge".into(),
            ..Config::default()
        };
        c.links = LinksConfig {
            keys: [
                ("old".to_owned(), "old-secret-0123456789".to_owned()),
                ("new".to_owned(), "new-secret-0123456789".to_owned()),
            ]
            .into(),
            sign_with: "new".into(),
            redirect_allowlist: vec!["shop.example".into(), ".shop.example".into()],
            ..LinksConfig::default()
        };
        c.links.sites.insert(
            "strict".into(),
            SiteLinks {
                unsigned_conversions: Some(ConversionPolicy::Drop),
                redirect_allowlist: Some(vec![]),
            },
        );
        c.links.sites.insert(
            "flagged".into(),
            SiteLinks {
                unsigned_conversions: Some(ConversionPolicy::Flag),
                ..SiteLinks::default()
            },
        );
        c
    }

    fn signed(config: &Config, req: LinkRequest) -> String {
        let url = Links::new(&config.links)
            .unwrap()
            .build(&LinkRequest {
                base_url: "http://px.test".into(),
                sign: true,
                ..req
            })
            .unwrap();
        url.strip_prefix("http://px.test").unwrap().to_owned()
    }

    fn now_secs() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn link(site: &str) -> LinkRequest {
        LinkRequest {
            site: site.into(),
            ..LinkRequest::default()
        }
    }

    #[tokio::test]
    async fn clicks_redirect_only_to_allowed_or_signed_targets() {
        let config = links_config();
        let f = fixture(config.clone(), 64);
        // On the allowlist: 302 and a click hit whose url is the target.
        let (status, headers, _) = call(
            &f,
            req(
                "GET",
                "/c?site=shop&u=https%3A%2F%2Fwww.shop.example%2Fsale%3Fa%3D1&campaign=spring",
                "",
            ),
        )
        .await;
        assert_eq!(status, StatusCode::FOUND);
        assert_eq!(
            headers[header::LOCATION],
            "https://www.shop.example/sale?a=1"
        );
        let hit = f.rx.try_recv().unwrap();
        assert_eq!(
            (
                hit.kind.as_str(),
                hit.url.as_deref(),
                hit.campaign.as_deref()
            ),
            (
                "click",
                Some("https://www.shop.example/sale?a=1"),
                Some("spring")
            )
        );
        assert!(hit.props.is_empty(), "u is not a custom property");

        // Elsewhere, signed: 302. The same URL with the target swapped: 400.
        let target = "https://partner.example/offer";
        let path = signed(
            &config,
            LinkRequest {
                click_target: Some(target.into()),
                ..link("shop")
            },
        );
        let (status, headers, _) = call(&f, req("GET", &path, "")).await;
        assert_eq!(status, StatusCode::FOUND, "{path}");
        assert_eq!(headers[header::LOCATION], target);
        assert_eq!(
            f.rx.try_recv().unwrap().signature.map(Signature::as_str),
            Some("valid")
        );
        let tampered = path.replace("partner.example", "evil.example");
        let (status, _, body) = call(&f, req("GET", &tampered, "")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            String::from_utf8_lossy(&body).contains("signature"),
            "{body:?}"
        );
        assert!(f.rx.try_recv().is_err(), "a refused click is not stored");

        // Not allowed, not signed; and a site whose own list is empty.
        for uri in [
            "/c?site=shop&u=https%3A%2F%2Fevil.example%2F",
            "/c?site=strict&u=https%3A%2F%2Fshop.example%2F",
        ] {
            assert_eq!(
                call(&f, req("GET", uri, "")).await.0,
                StatusCode::BAD_REQUEST,
                "{uri}"
            );
        }
        // An allowed target, but no site: not recorded, so not redirected either.
        let (status, _, _) = call(&f, req("GET", "/c?u=https%3A%2F%2Fshop.example%2F", "")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(f.rx.try_recv().is_err());
        let text = f.metrics.render();
        assert!(text.contains("pixelpipe_ingest_clicks_refused_total{reason=\"invalid_hit\"} 1"));
        assert!(
            text.contains("pixelpipe_ingest_clicks_refused_total{reason=\"not_allowed\"} 2"),
            "{text}"
        );
        assert!(text.contains("pixelpipe_ingest_clicks_refused_total{reason=\"bad_signature\"} 1"));
    }

    #[tokio::test]
    async fn redirect_attack_strings_are_refused() {
        let f = fixture(links_config(), 64);
        // Each target is percent-encoded into `u` the way an attacker would send it.
        for (target, reason) in [
            ("//evil.com", "not_http"),
            ("https:evil.com", "not_http"),
            ("/\\evil.com", "bad_character"),
            ("https://shop.example\\@evil.com", "bad_character"),
            ("https://shop.example@evil.com", "userinfo"),
            ("https://shop.example:x@evil.com/", "userinfo"),
            // Sent as `%2540`: one decoding leaves `%40` in the host, which is refused as such.
            ("https://shop.example%40evil.com", "bad_host"),
            ("https://shop.example/\r\nSet-Cookie: a=b", "bad_character"),
            (
                "https://shop.example/%0d%0aSet-Cookie:a=b",
                "not_allowed_if_decoded_twice",
            ),
            ("javascript:alert(1)", "not_http"),
            ("data:text/html,<script>alert(1)</script>", "not_http"),
            ("https://evil.com#https://shop.example", "not_allowed"),
            ("https://shop.example.evil.com/", "not_allowed"),
            ("", "missing"),
        ] {
            let encoded: String = target.bytes().map(|b| format!("%{b:02X}")).collect();
            let series = format!("pixelpipe_ingest_clicks_refused_total{{reason=\"{reason}\"}}");
            let before = counter(&f, &series);
            let (status, headers, _) =
                call(&f, req("GET", &format!("/c?site=shop&u={encoded}"), "")).await;
            if reason == "not_allowed_if_decoded_twice" {
                // `%0d%0a` reaches us as literal text `%0d%0a` after one decoding: the host is
                // allowed, and the Location header carries the escape, not a line break.
                assert_eq!(status, StatusCode::FOUND, "{target:?}");
                assert!(!headers[header::LOCATION].as_bytes().contains(&b'\n'));
                f.rx.try_recv().unwrap();
                continue;
            }
            assert_eq!(status, StatusCode::BAD_REQUEST, "{target:?}");
            assert!(headers.get(header::LOCATION).is_none());
            assert_eq!(
                counter(&f, &series),
                before + 1,
                "{target:?} refused as {reason}"
            );
        }
        assert!(f.rx.try_recv().is_err(), "no refused click was stored");
    }

    /// The value of one counter series in the metrics text (0 when absent).
    fn counter(f: &Fixture, series: &str) -> u64 {
        f.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn every_target_error_has_a_refusal_label() {
        let text = fixture(links_config(), 4).metrics.render();
        for r in TargetError::REASONS {
            let series = format!("pixelpipe_ingest_clicks_refused_total{{reason=\"{r}\"}} 0");
            assert!(text.contains(&series), "{series}");
        }
    }

    #[tokio::test]
    async fn signatures_are_checked_and_send_times_believed_only_when_valid() {
        let config = links_config();
        let f = fixture(config.clone(), 64);
        let now = now_secs();
        let open = LinkRequest {
            kind: Some("open".into()),
            params: vec![("msg".into(), "m-1".into())],
            sent_at_unix_secs: Some(now - 5),
            ..link("shop")
        };
        let good = signed(&config, open.clone());
        let expired = signed(
            &config,
            LinkRequest {
                expires_at_unix_secs: Some(now - 60),
                ..open.clone()
            },
        );
        let rotated_out = good.replace("kid=new", "kid=gone");
        for (uri, want, sent) in [
            (good.as_str(), "valid", Some((now - 5) * 1000)),
            (&good.replace("m-1", "m-2"), "invalid", None),
            (expired.as_str(), "expired", None),
            (rotated_out.as_str(), "unknown_key", None),
        ] {
            assert_eq!(call(&f, req("GET", uri, "")).await.0, StatusCode::OK);
            let hit = f.rx.try_recv().unwrap();
            assert_eq!(hit.signature.map(Signature::as_str), Some(want), "{uri}");
            assert_eq!(hit.sent_at_ms, sent, "{uri}");
            assert!(
                hit.props.is_empty(),
                "kid/exp/sig/st are not custom properties"
            );
        }
        // Unsigned: no status at all.
        call(&f, req("GET", "/p.gif?site=shop&e=open&st=5", "")).await;
        let hit = f.rx.try_recv().unwrap();
        assert_eq!((hit.signature, hit.sent_at_ms), (None, None));
    }

    #[tokio::test]
    async fn a_signed_url_cannot_be_reshaped_by_its_holder() {
        let config = links_config();
        let f = fixture(config.clone(), 64);
        let now = now_secs();
        let open = signed(
            &config,
            LinkRequest {
                kind: Some("open".into()),
                params: vec![("plan".into(), "basic".into())],
                ..link("shop")
            },
        );
        let mut got = Vec::new();
        for uri in [
            // A second value for a signed name, placed first so the parser would keep it.
            open.replace("?site=shop", "?plan=pro&site=shop"),
            // Cache busters are free to add, and do not push signed parameters past the limit.
            format!("{open}{}", "&cb=1".repeat(80)),
            // A signed URL whose own parameters exceed the limit stores less than was signed.
            signed(
                &config,
                LinkRequest {
                    params: (0..70).map(|i| (format!("p{i}"), "x".into())).collect(),
                    ..link("shop")
                },
            ),
        ] {
            assert_eq!(call(&f, req("GET", &uri, "")).await.0, StatusCode::OK);
            let hit = f.rx.try_recv().unwrap();
            got.push(hit.signature.map_or("", Signature::as_str));
        }
        assert_eq!(got, vec!["invalid", "valid", "invalid"]);

        // A send time in milliseconds, or far in the future, is not a send time.
        for st in [now * 1000, now + 3 * 86_400] {
            let uri = signed(
                &config,
                LinkRequest {
                    kind: Some("open".into()),
                    sent_at_unix_secs: Some(st),
                    ..link("shop")
                },
            );
            call(&f, req("GET", &uri, "")).await;
            let hit = f.rx.try_recv().unwrap();
            assert_eq!(
                (hit.signature.map(Signature::as_str), hit.sent_at_ms),
                (Some("valid"), None),
                "{st}"
            );
            assert_eq!(hit.cut_fields, 1, "counted as a bad number");
        }
    }

    #[tokio::test]
    async fn unsigned_conversions_follow_the_sites_policy() {
        let config = links_config();
        let f = fixture(config.clone(), 64);
        let conversion = |site: &str| LinkRequest {
            kind: Some("conversion".into()),
            params: vec![("value".into(), "30".into())],
            ..link(site)
        };
        // Signed conversions pass everywhere.
        for site in ["shop", "flagged", "strict"] {
            let (status, _, _) = call(&f, req("GET", &signed(&config, conversion(site)), "")).await;
            assert_eq!(status, StatusCode::OK);
            let hit = f.rx.try_recv().unwrap();
            assert!(!hit.unverified, "{site}");
        }
        // Unsigned (or tampered): accepted, flagged, or dropped and counted; the GIF either way.
        let tampered = signed(&config, conversion("flagged")).replace("value=30", "value=3000");
        for (uri, outcome) in [
            (
                "/p.gif?site=shop&e=conversion&value=30".to_owned(),
                Some(false),
            ),
            (
                "/p.gif?site=flagged&e=conversion&value=30".to_owned(),
                Some(true),
            ),
            (tampered, Some(true)),
            ("/p.gif?site=strict&e=conversion&value=30".to_owned(), None),
        ] {
            let (status, _, body) = call(&f, req("GET", &uri, "")).await;
            assert_eq!((status, body.len()), (StatusCode::OK, 43), "{uri}");
            assert_eq!(f.rx.try_recv().ok().map(|h| h.unverified), outcome, "{uri}");
        }
        // Other kinds are not affected by the policy.
        call(&f, req("GET", "/p.gif?site=strict&e=open", "")).await;
        assert!(!f.rx.try_recv().unwrap().unverified);
        assert!(f
            .metrics
            .render()
            .contains("pixelpipe_ingest_hits_dropped_total{reason=\"unsigned_conversion\"} 1"));
    }

    #[tokio::test]
    async fn the_page_snippet_is_served() {
        let f = fixture(links_config(), 4);
        let (status, headers, body) = call(&f, req("GET", "/px.js", "")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[CONTENT_TYPE], "text/javascript; charset=utf-8");
        let js = String::from_utf8(body.to_vec()).unwrap();
        assert!(js.contains("sendBeacon") && js.contains("/p.gif?"));
        assert_eq!(
            call(&f, req("POST", "/px.js", "")).await.0,
            StatusCode::METHOD_NOT_ALLOWED
        );
    }
}

mod properties {
    //! Hostile input: whatever the query or body, a pixel gets its GIF, a beacon gets a 2xx or a
    //! 4xx naming the problem, and nothing panics (a panic would fail the test, and in the server
    //! become a counted 500).
    use super::*;
    use proptest::prelude::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// Query text: mostly parameter-shaped, with escapes and separators.
    fn query() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("site=s".to_owned()),
                Just("&".to_owned()),
                Just("=".to_owned()),
                Just("%".to_owned()),
                Just("%zz".to_owned()),
                Just("%C3%A9".to_owned()),
                Just("%FF".to_owned()),
                Just("e=open".to_owned()),
                Just("value=1e999".to_owned()),
                Just("sig=".to_owned()),
                "[a-z_]{1,8}=[^&#]{0,16}",
                ".{0,12}",
            ],
            0..12,
        )
        .prop_map(|parts| parts.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn a_pixel_always_gets_its_gif(q in query()) {
            let rt = runtime();
            let f = fixture(config(), 1024);
            let uri = format!("/p.gif?{}", q.replace(['#', ' '], "+"));
            let Ok(r) = Request::builder().uri(uri.as_str()).body(Full::new(Bytes::new())) else {
                // Not a request hyper would ever hand us.
                return Ok(());
            };
            let (status, _, body) = rt.block_on(call(&f, r));
            prop_assert_eq!(status, StatusCode::OK);
            prop_assert_eq!(&body[..], PIXEL_GIF);
        }

        #[test]
        fn a_beacon_gets_an_answer_never_a_panic(body in prop_oneof![
            ".{0,300}",
            Just("[]".to_owned()),
            Just("{\"site\":\"s\",\"e\":\"pageview\",\"value\":1e400}".to_owned()),
            "\\{\"site\":\"s\"(,\"[a-z]{1,6}\":(\"[^\"\\\\]{0,10}\"|[0-9.e+-]{1,12}|true|null|\\[\\]|\\{\\}))*\\}",
            "\\[(\\{\"site\":\"[a-z]{0,4}\"\\},?){0,5}\\]",
        ]) {
            let rt = runtime();
            let f = fixture(config(), 1024);
            let r = req("POST", "/collect", &body);
            let (status, _, _) = rt.block_on(call(&f, r));
            prop_assert!(
                status == StatusCode::NO_CONTENT || status.is_client_error(),
                "{status} for {body:?}"
            );
        }
    }
}

/// Compressed and marked bodies are read like plain ones; a bomb, an unknown coding and too
/// many events are refused with a status and a message that name the limit or the coding.
#[tokio::test]
async fn collect_reads_gzip_deflate_and_a_bom_and_bounds_them() {
    use flate2::write::{GzEncoder, ZlibEncoder};
    use std::io::Write;
    let f = fixture(config(), 1024);
    let json = br#"[{"site":"s.example","e":"signup"},{"site":"s.example","e":"pageview"}]"#;
    let post = |coding: Option<&str>, body: Vec<u8>| {
        let mut b = Request::builder()
            .method("POST")
            .uri("/collect")
            .header(CONTENT_TYPE, "application/json");
        if let Some(c) = coding {
            b = b.header(header::CONTENT_ENCODING, c);
        }
        b.body(Full::new(Bytes::from(body))).unwrap()
    };
    let mut gz = GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(json).unwrap();
    let mut zl = ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    zl.write_all(json).unwrap();
    for (coding, body) in [
        (Some("gzip"), gz.finish().unwrap()),
        (Some("deflate"), zl.finish().unwrap()),
        (None, [&b"\xEF\xBB\xBF"[..], json].concat()),
    ] {
        let (status, _, body) = call(&f, post(coding, body)).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{coding:?}: {body:?}");
    }
    assert_eq!(f.rx.try_iter().count(), 6);

    let (status, _, body) = call(&f, post(Some("br"), json.to_vec())).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(String::from_utf8_lossy(&body).contains("`br`"));

    let mut bomb = GzEncoder::new(Vec::new(), flate2::Compression::best());
    bomb.write_all(&vec![b' '; 4 * 1024 * 1024]).unwrap();
    let (status, _, body) = call(&f, post(Some("gzip"), bomb.finish().unwrap())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("http.max_decoded_body_bytes"));

    let many = format!("[{}]", vec![r#"{"site":"s.example"}"#; 201].join(","));
    let (status, _, body) = call(&f, post(None, many.into_bytes())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("http.max_events_per_request"));
    assert_eq!(
        counter(
            &f,
            "pixelpipe_ingest_hits_invalid_total{reason=\"too_many_events\"}"
        ),
        201
    );
    assert_eq!(
        f.rx.try_iter().count(),
        0,
        "nothing of a refused request is kept"
    );
}
