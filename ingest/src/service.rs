//! The edge's HTTP routes, as a plain async function from request to response.
//!
//! Owns routing, the pixel and beacon handlers, health and readiness, and the response headers.
//! It does not own sockets, connection limits or timeouts (see `server`), so tests call
//! [`Edge::handle`] directly with an in-memory body. The pixel handler awaits nothing: it reads
//! the request, offers the hit to the queue and returns static bytes.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::header::{self, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::batcher::SharedProducer;
use crate::client_ip::TrustedProxies;
use crate::config::{Config, HttpConfig, LimitsConfig};
use crate::error::Error;
use crate::hit::{apply_json_object, apply_query, Draft, InvalidReason, RequestMeta};
use crate::links::{ConversionPolicy, Links};
use crate::metrics::Metrics;
use crate::queue::HitQueue;
use crate::redirect::parse_target;
use crate::signing::Signature;
use crate::wire::Transport;

/// The transparent 1x1 GIF every pixel request gets: GIF89a, a two-colour table, a graphic
/// control extension marking colour 0 transparent, one pixel of colour 0.
pub const PIXEL_GIF: &[u8; 43] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\
\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

/// The page snippet (`GET /px.js`), served from the binary so that it always matches the edge.
pub const SNIPPET_JS: &str = include_str!("../static/px.js");

/// The response body type of every route.
pub type ResponseBody = Full<Bytes>;

/// Shared state of the public routes.
pub struct Edge {
    edge_id: String,
    limits: LimitsConfig,
    http: HttpConfig,
    trusted: TrustedProxies,
    queue: HitQueue,
    producer: SharedProducer,
    metrics: Metrics,
    shutting_down: AtomicBool,
    optout_cookie: String,
    links: Links,
}

impl Edge {
    /// Builds the routes' state from a validated config.
    pub fn new(
        config: &Config,
        queue: HitQueue,
        producer: SharedProducer,
        metrics: Metrics,
    ) -> Result<Edge, Error> {
        let trusted = TrustedProxies::parse(&config.http.trusted_proxies)
            .map_err(|reason| Error::config("http.trusted_proxies", reason))?;
        Ok(Edge {
            edge_id: config.edge_id.clone(),
            limits: config.limits.clone(),
            http: config.http.clone(),
            trusted,
            queue,
            producer,
            metrics,
            shutting_down: AtomicBool::new(false),
            optout_cookie: config.privacy.optout_cookie.clone(),
            links: Links::new(&config.links)
                .map_err(|(setting, reason)| Error::config(setting, reason))?,
        })
    }

    /// From now on `/readyz` says not ready, so load balancers stop sending traffic.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    /// Answers one request from `peer`.
    pub async fn handle<B>(&self, req: Request<B>, peer: IpAddr) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let method = req.method().clone();
        let (route, result) = match req.uri().path() {
            "/p.gif" => ("pixel", self.pixel(&req, peer)),
            "/c" => ("click", self.click(&req, peer)),
            "/px.js" => ("script", only_get(&method).map(|()| script_response())),
            "/collect" => ("collect", self.collect(req, peer).await),
            "/healthz" => (
                "healthz",
                only_get(&method).map(|()| text(StatusCode::OK, "ok")),
            ),
            "/readyz" => ("readyz", only_get(&method).map(|()| self.readyz())),
            "/optout" => ("optout", only_get(&method).map(|()| self.opt(true))),
            "/optin" => ("optin", only_get(&method).map(|()| self.opt(false))),
            _ => ("other", Err(Error::NotFound)),
        };
        let response = result.unwrap_or_else(error_response);
        self.metrics.request(route, response.status());
        response
    }

    fn pixel<B>(&self, req: &Request<B>, peer: IpAddr) -> Result<Response<ResponseBody>, Error> {
        let mut draft = self.get_draft(req, peer)?;
        match self.apply_signed_query(req, &mut draft) {
            Ok(_) => {
                self.finish(draft);
            }
            Err(reason) => self.metrics.invalid(reason),
        }
        Ok(gif_response())
    }

    /// `GET /c?site=..&u=<target>`: records a click and redirects, but only to a target that is
    /// signed or on the site's allowlist; anything else is answered 400 and counted, so the edge
    /// can never be used as an open redirect.
    fn click<B>(&self, req: &Request<B>, peer: IpAddr) -> Result<Response<ResponseBody>, Error> {
        let mut draft = self.get_draft(req, peer)?;
        let signature = match self.apply_signed_query(req, &mut draft) {
            Ok(signature) => signature,
            Err(reason) => {
                self.metrics.invalid(reason);
                return Err(self.refuse_click("query_too_long", "the query is too long"));
            }
        };
        let target = match parse_target(draft.target().unwrap_or("")) {
            Ok(t) => t,
            Err(e) => return Err(self.refuse_click(e.as_str(), &e.to_string())),
        };
        // Computed over the whole query, so `u` is covered; expiry was checked too.
        let signed = signature == Some(Signature::Valid);
        if !signed && !self.links.redirect_allowed(draft.site(), &target.host) {
            let (reason, why) = match signature {
                Some(_) => (
                    "bad_signature",
                    "the link's signature is not valid and the target host is not allowed",
                ),
                None => (
                    "not_allowed",
                    "the target host is not on this site's redirect allowlist",
                ),
            };
            return Err(self.refuse_click(reason, why));
        }
        draft.default_kind("click");
        if !self.finish(draft) {
            // Counted as invalid by `finish`; a redirect with no record would be an untracked
            // way through the edge.
            return Err(self.refuse_click("invalid_hit", "the click has no valid site or kind"));
        }
        let mut r = empty(StatusCode::FOUND);
        let h = r.headers_mut();
        h.insert(
            header::LOCATION,
            HeaderValue::from_str(&target.url).map_err(|_| {
                self.refuse_click("bad_character", "the target cannot be a header value")
            })?,
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(r)
    }

    fn refuse_click(&self, reason: &'static str, why: &str) -> Error {
        self.metrics.click_refused(reason);
        Error::ClickRefused(why.to_owned())
    }

    /// The start of every GET route that records a hit (`/p.gif`, `/c`): `GET` or `HEAD` only,
    /// and a draft from the request's headers.
    fn get_draft<B>(&self, req: &Request<B>, peer: IpAddr) -> Result<Draft<'_>, Error> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Err(Error::MethodNotAllowed { allow: "GET, HEAD" }),
        };
        let mut meta = self.meta(req, peer);
        meta.head_request = head;
        Ok(Draft::new(
            &meta,
            Transport::Pixel,
            &self.edge_id,
            &self.limits,
        ))
    }

    /// Applies a GET query to a draft and checks the URL's signature when it has one.
    fn apply_signed_query<B>(
        &self,
        req: &Request<B>,
        draft: &mut Draft<'_>,
    ) -> Result<Option<Signature>, InvalidReason> {
        let query = req.uri().query().unwrap_or("");
        apply_query(draft, query)?;
        if !draft.is_signed() {
            return Ok(None);
        }
        let now_secs = draft.received_at_ms() / 1000;
        let checked = self.links.verify(req.uri().path(), query, now_secs);
        let recorded = draft.signature(checked);
        self.metrics.signature(recorded);
        Ok(Some(recorded))
    }

    async fn collect<B>(
        &self,
        req: Request<B>,
        peer: IpAddr,
    ) -> Result<Response<ResponseBody>, Error>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match *req.method() {
            Method::POST => {}
            // CORS preflight for `fetch` with a JSON content type; sendBeacon needs none.
            Method::OPTIONS => return Ok(cors(empty(StatusCode::NO_CONTENT))),
            _ => {
                return Err(Error::MethodNotAllowed {
                    allow: "POST, OPTIONS",
                })
            }
        }
        check_content_type(req.headers())?;
        let limit_bytes = self.http.max_body_bytes;
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit_bytes as u64) {
            return Err(Error::BodyTooLarge { limit_bytes });
        }
        let meta = self.meta(&req, peer);
        let timeout_ms = self.http.body_read_timeout_ms;
        let read = Limited::new(req.into_body(), limit_bytes).collect();
        let body = match tokio::time::timeout(Duration::from_millis(timeout_ms), read).await {
            Err(_) => return Err(Error::BodyTimeout { timeout_ms }),
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(Error::BodyTooLarge { limit_bytes })
            }
            Ok(Err(e)) => return Err(Error::BodyRead(e.to_string())),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let value: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| Error::BadJson(e.to_string()))?;
        let objects = match &value {
            serde_json::Value::Object(_) => std::slice::from_ref(&value),
            serde_json::Value::Array(items) => items.as_slice(),
            _ => {
                return Err(Error::BadJson(
                    "expected an object or an array of objects".into(),
                ))
            }
        };
        for item in objects {
            match item {
                serde_json::Value::Object(object) => {
                    let mut draft =
                        Draft::new(&meta, Transport::Beacon, &self.edge_id, &self.limits);
                    apply_json_object(&mut draft, object);
                    self.finish(draft);
                }
                _ => self.metrics.invalid(InvalidReason::NotAnObject),
            }
        }
        Ok(cors(empty(StatusCode::NO_CONTENT)))
    }

    /// `/optout` sets the first-party opt-out cookie, `/optin` clears it; both answer a short
    /// page. No redirect target is taken from the request, so neither can be an open redirect.
    fn opt(&self, out: bool) -> Response<ResponseBody> {
        let (cookie, page) = if out {
            (
                format!(
                    "{}=1; Max-Age=63072000; Path=/; HttpOnly; SameSite=Lax",
                    self.optout_cookie
                ),
                "You are opted out: hits from this browser are no longer recorded.",
            )
        } else {
            (
                format!(
                    "{}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax",
                    self.optout_cookie
                ),
                "You are opted in again: hits from this browser are recorded.",
            )
        };
        let html = format!(
            "<!doctype html><meta charset=utf-8><title>pixelpipe</title><p>{page}</p><p><a href=\"/{}\">{}</a></p>",
            if out { "optin" } else { "optout" },
            if out { "Opt in again" } else { "Opt out" }
        );
        let mut r = Response::new(Full::new(Bytes::from(html)));
        let h = r.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        h.insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&cookie).expect("cookie names are validated"),
        );
        r
    }

    fn meta<B>(&self, req: &Request<B>, peer: IpAddr) -> RequestMeta {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let client_ip = self.trusted.client_ip(peer, req.headers());
        let mut meta = RequestMeta::new(
            now_ms,
            Some(client_ip),
            req.uri().path(),
            req.headers(),
            &self.limits,
        );
        meta.opted_out = has_cookie(req.headers(), &self.optout_cookie);
        meta
    }

    /// Validates a draft, applies the site's conversion policy and offers the hit; every outcome
    /// is counted. Returns whether the hit was valid (whatever became of it after).
    fn finish(&self, draft: Draft<'_>) -> bool {
        let (result, cuts) = draft.finish();
        match result {
            Ok(mut hit) => {
                self.metrics.cuts(&cuts);
                if hit.kind == "conversion" && hit.signature.as_deref() != Some("valid") {
                    match self.links.conversion_policy(&hit.site_id) {
                        ConversionPolicy::Accept => {}
                        ConversionPolicy::Flag => hit.unverified = true,
                        ConversionPolicy::Drop => {
                            self.metrics
                                .hits_dropped
                                .with_label_values(&["unsigned_conversion"])
                                .inc();
                            return true;
                        }
                    }
                }
                // A dropped hit is counted by the queue; the client gets its answer regardless.
                self.queue.offer(hit);
                true
            }
            Err(reason) => {
                self.metrics.invalid(reason);
                false
            }
        }
    }

    fn readyz(&self) -> Response<ResponseBody> {
        let problem = if self.shutting_down.load(Ordering::SeqCst) {
            Some("shutting down")
        } else if !self.producer.connected() {
            Some("kafka not connected")
        } else if self.queue.above_high_water() {
            Some("queue above its high-water mark")
        } else {
            None
        };
        match problem {
            None => text(StatusCode::OK, "ready"),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}"),
            ),
        }
    }
}

/// Whether a `Cookie` header carries `name` with a value other than empty or `0`.
fn has_cookie(headers: &hyper::HeaderMap, name: &str) -> bool {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .any(|pair| {
            pair.trim()
                .split_once('=')
                .is_some_and(|(k, v)| k.trim() == name && !matches!(v.trim(), "" | "0"))
        })
}

fn only_get(method: &Method) -> Result<(), Error> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(Error::MethodNotAllowed { allow: "GET, HEAD" })
    }
}

fn check_content_type(headers: &hyper::HeaderMap) -> Result<(), Error> {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return Ok(());
    };
    let text = value.to_str().unwrap_or("");
    let essence = text
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" | "text/plain" => Ok(()),
        _ => Err(Error::UnsupportedMediaType(
            text.chars().take(100).collect(),
        )),
    }
}

/// `GET /px.js`: the page snippet. Browsers may cache it for an hour; it changes only with the
/// edge's version.
fn script_response() -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::from_static(SNIPPET_JS.as_bytes())));
    let h = r.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    r
}

/// The pixel response: static bytes and headers that stop every cache from answering for us.
pub fn gif_response() -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::from_static(PIXEL_GIF)));
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("image/gif"));
    h.insert(CONTENT_LENGTH, HeaderValue::from_static("43"));
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store, no-cache, must-revalidate, max-age=0"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("0"));
    r
}

fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

fn cors(mut r: Response<ResponseBody>) -> Response<ResponseBody> {
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("content-type"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    r
}

/// A short `text/plain` answer ending in a newline.
pub fn text(status: StatusCode, body: &str) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// The one place a request error becomes a response.
fn error_response(e: Error) -> Response<ResponseBody> {
    let mut r = text(e.status(), &e.to_string());
    if let Error::MethodNotAllowed { allow } = e {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    r
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::batcher::tests::RecordingProducer;
    use crate::wire::Hit;
    use crossbeam_channel::Receiver;
    use std::sync::Arc;

    pub(crate) struct Fixture {
        pub(crate) edge: Edge,
        pub(crate) rx: Receiver<Hit>,
        pub(crate) metrics: Metrics,
    }

    pub(crate) fn fixture(config: Config, capacity: usize) -> Fixture {
        let metrics = Metrics::new();
        let (queue, rx) = HitQueue::new(capacity, config.queue.high_water_percent, metrics.clone());
        let edge = Edge::new(
            &config,
            queue,
            Arc::new(RecordingProducer::default()),
            metrics.clone(),
        )
        .unwrap();
        Fixture { edge, rx, metrics }
    }

    fn config() -> Config {
        Config {
            edge_id: "test-edge".into(),
            ..Config::default()
        }
    }

    pub(crate) fn req(method: &str, uri: &str, body: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .method(method)
            .uri(uri)
            .body(Full::new(Bytes::from(body.to_owned())))
            .unwrap()
    }

    fn peer() -> IpAddr {
        "198.51.100.7".parse().unwrap()
    }

    pub(crate) async fn call(
        f: &Fixture,
        r: Request<Full<Bytes>>,
    ) -> (StatusCode, hyper::HeaderMap, Bytes) {
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
        assert_eq!(
            counter(
                &f,
                "pixelpipe_ingest_hits_dropped_total{reason=\"queue_full\"}"
            ),
            1
        );
        let (status, _, body) = call(&f, req("GET", "/readyz", "")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(std::str::from_utf8(&body).unwrap().contains("high-water"));
        f.rx.try_recv().unwrap();
        f.rx.try_recv().unwrap();
        let (status, _, _) = call(&f, req("GET", "/readyz", "")).await;
        assert_eq!(status, StatusCode::OK);
        f.edge.begin_shutdown();
        let (status, _, _) = call(&f, req("GET", "/readyz", "")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
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
        let f = fixture(config(), 16);
        let mut r = req("GET", "/p.gif?site=s", "");
        r.headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_static("203.0.113.50"));
        call(&f, r).await;
        assert_eq!(f.rx.try_recv().unwrap().client_ip, Some(peer()));
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

    #[test]
    fn the_gif_is_a_transparent_1x1_gif() {
        assert_eq!(&PIXEL_GIF[..6], b"GIF89a");
        assert_eq!((PIXEL_GIF[6], PIXEL_GIF[8]), (1, 1), "1x1");
        assert_eq!(
            &PIXEL_GIF[19..22],
            &[0x21, 0xf9, 0x04],
            "graphic control extension"
        );
        assert_eq!(PIXEL_GIF[22] & 1, 1, "transparency flag");
        assert_eq!(PIXEL_GIF[42], 0x3b, "trailer");
    }
}

#[cfg(test)]
mod link_tests {
    use super::tests::{call, fixture, req};
    use super::*;
    use crate::links::{LinkRequest, LinksConfig, SiteLinks};

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
        assert_eq!(f.rx.try_recv().unwrap().signature.as_deref(), Some("valid"));
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
    fn counter(f: &super::tests::Fixture, series: &str) -> u64 {
        f.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn every_target_error_has_a_refusal_label() {
        for r in crate::redirect::TargetError::REASONS {
            assert!(crate::metrics::CLICK_REFUSED_REASONS.contains(&r), "{r}");
        }
    }

    #[tokio::test]
    async fn signatures_are_checked_and_send_times_believed_only_when_valid() {
        let config = links_config();
        let f = fixture(config.clone(), 64);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
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
            assert_eq!(hit.signature.as_deref(), Some(want), "{uri}");
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
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
            got.push(hit.signature.unwrap_or_default());
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
                (hit.signature.as_deref(), hit.sent_at_ms),
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
