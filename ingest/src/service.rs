//! The edge's HTTP routes, as a plain async function from request to response.
//!
//! Owns routing and the handlers: what each route reads from the request, records as a hit and
//! counts. It does not own sockets, connection limits or timeouts (`server`, and the shared loop
//! in `pixelpipe_common::http`), how an answer is built (`response`), or what a signature or the
//! conversion policy allows (`links`). Tests call [`Edge::handle`] directly with an in-memory
//! body. The pixel handler awaits nothing: it reads the request, offers the hit to the queue and
//! returns static bytes.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Body;
use hyper::header::{self, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};

use crate::body;
use crate::client_ip::TrustedProxies;
use crate::config::{Config, HttpConfig, LimitsConfig, Output};
use crate::error::Error;
use crate::hit::{apply_json_object, apply_query, CutReason, Draft, InvalidReason, RequestMeta};
use crate::json;
use crate::ledger::Ledger;
use crate::links::{ClickRefusal, Links};
use crate::metrics::{Metrics, Route};
use crate::produce::SharedProducer;
use crate::queue::HitQueue;
use crate::redirect::parse_target;
use crate::response::{self, RequestError, ResponseBody};
use crate::wire::{kind, Signature, Transport};
use pixelpipe_common::layers::ConfigError;

/// Shared state of the public routes.
pub struct Edge {
    edge_id: String,
    limits: LimitsConfig,
    http: HttpConfig,
    trusted: TrustedProxies,
    queue: HitQueue,
    producer: SharedProducer,
    /// Which output the producer is, for the reasons `/readyz` gives.
    output: Output,
    ledger: Arc<Ledger>,
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
        ledger: Arc<Ledger>,
    ) -> Result<Edge, Error> {
        let trusted =
            TrustedProxies::parse(&config.http.trusted_proxies, config.http.client_ip_header)
                .map_err(|reason| ConfigError::setting("http.trusted_proxies", reason))?;
        Ok(Edge {
            edge_id: config.edge_id.clone(),
            limits: config.limits.clone(),
            http: config.http.clone(),
            trusted,
            queue,
            producer,
            output: config.output,
            metrics: ledger.metrics().clone(),
            ledger,
            shutting_down: AtomicBool::new(false),
            optout_cookie: config.privacy.optout_cookie.clone(),
            links: Links::new(&config.links)?,
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
            "/p.gif" => (Route::Pixel, self.pixel(&req, peer)),
            "/c" => (Route::Click, self.click(&req, peer)),
            "/px.js" => (
                Route::Script,
                only_get(&method).map(|()| response::script()),
            ),
            "/collect" => {
                // Every answer, errors too, so that a page's script can read why.
                let origin = req.headers().get(header::ORIGIN).cloned();
                let answer = self
                    .collect(req, peer)
                    .await
                    .unwrap_or_else(response::error);
                (Route::Collect, Ok(response::cors(answer, origin.as_ref())))
            }
            "/healthz" => (
                Route::Healthz,
                only_get(&method).map(|()| response::text(StatusCode::OK, "ok")),
            ),
            "/readyz" => (Route::Readyz, only_get(&method).map(|()| self.readyz())),
            "/optout" => (
                Route::Optout,
                only_get(&method).map(|()| response::opt_page(true, &self.optout_cookie)),
            ),
            "/optin" => (
                Route::Optin,
                only_get(&method).map(|()| response::opt_page(false, &self.optout_cookie)),
            ),
            _ => (Route::Other, Err(RequestError::NotFound)),
        };
        let response = result.unwrap_or_else(response::error);
        self.metrics.request(route, response.status());
        response
    }

    fn pixel<B>(
        &self,
        req: &Request<B>,
        peer: IpAddr,
    ) -> Result<Response<ResponseBody>, RequestError> {
        let mut draft = self.get_draft(req, peer)?;
        match self.apply_signed_query(req, &mut draft) {
            Ok(_) => {
                self.finish(draft);
            }
            Err(reason) => self.metrics.invalid(reason),
        }
        Ok(response::gif())
    }

    /// `GET /c?site=..&u=<target>`: records a click and redirects, but only to a target that is
    /// signed or on the site's allowlist; anything else is answered 400 and counted, so the edge
    /// can never be used as an open redirect.
    fn click<B>(
        &self,
        req: &Request<B>,
        peer: IpAddr,
    ) -> Result<Response<ResponseBody>, RequestError> {
        let mut draft = self.get_draft(req, peer)?;
        let signature = match self.apply_signed_query(req, &mut draft) {
            Ok(signature) => signature,
            Err(reason) => {
                self.metrics.invalid(reason);
                return Err(self.refuse_click(ClickRefusal::QueryTooLong));
            }
        };
        let target = parse_target(draft.target().unwrap_or(""))
            .map_err(|e| self.refuse_click(ClickRefusal::Target(e)))?;
        self.links
            .check_click(draft.site(), &target, signature)
            .map_err(|refusal| self.refuse_click(refusal))?;
        draft.default_kind(kind::CLICK);
        if !self.finish(draft) {
            // Counted as invalid by `finish`; a redirect with no record would be an untracked
            // way through the edge.
            return Err(self.refuse_click(ClickRefusal::InvalidHit));
        }
        response::redirect(&target.url)
            .ok_or_else(|| self.refuse_click(ClickRefusal::NotAHeaderValue))
    }

    fn refuse_click(&self, refusal: ClickRefusal) -> RequestError {
        self.metrics.click_refused(&refusal);
        RequestError::ClickRefused(refusal)
    }

    /// The start of every GET route that records a hit (`/p.gif`, `/c`): `GET` or `HEAD` only,
    /// and a draft from the request's headers.
    fn get_draft<B>(&self, req: &Request<B>, peer: IpAddr) -> Result<Draft<'_>, RequestError> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Err(RequestError::MethodNotAllowed { allow: "GET, HEAD" }),
        };
        let mut meta = self.meta(req, peer);
        meta.head_request = head;
        Ok(Draft::new(
            meta,
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
    ) -> Result<Response<ResponseBody>, RequestError>
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match *req.method() {
            Method::POST => {}
            // The CORS preflight of a beacon or `fetch` with a JSON content type or an encoded
            // body; `handle` adds the headers that answer it.
            Method::OPTIONS => return Ok(response::empty(StatusCode::NO_CONTENT)),
            _ => {
                return Err(RequestError::MethodNotAllowed {
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
            return Err(RequestError::BodyTooLarge { limit_bytes });
        }
        let meta = self.meta(&req, peer);
        let encoding: Vec<HeaderValue> = req
            .headers()
            .get_all(header::CONTENT_ENCODING)
            .iter()
            .cloned()
            .collect();
        let timeout_ms = self.http.body_read_timeout_ms;
        let read = Limited::new(req.into_body(), limit_bytes).collect();
        let body = match tokio::time::timeout(Duration::from_millis(timeout_ms), read).await {
            Err(_) => return Err(RequestError::BodyTimeout { timeout_ms }),
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return Err(RequestError::BodyTooLarge { limit_bytes })
            }
            Ok(Err(e)) => return Err(RequestError::BodyRead(e.to_string())),
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let body = body::decode(&encoding, body, self.http.max_decoded_body_bytes)?;
        let body = json::Body::new(&body);
        let events = body.events().map_err(RequestError::BadJson)?;
        let limit = self.http.max_events_per_request;
        if events.len() > limit {
            self.metrics
                .invalid_many(InvalidReason::TooManyEvents, events.len() as u64);
            return Err(RequestError::TooManyEvents {
                count: events.len(),
                limit,
            });
        }
        for event in events {
            match body.members(event) {
                Some(members) => {
                    let mut draft =
                        Draft::new(meta.clone(), Transport::Beacon, &self.edge_id, &self.limits);
                    apply_json_object(&mut draft, &body, &members);
                    self.finish(draft);
                }
                None => self.metrics.invalid(InvalidReason::NotAnObject),
            }
        }
        Ok(response::empty(StatusCode::NO_CONTENT))
    }

    fn meta<B>(&self, req: &Request<B>, peer: IpAddr) -> RequestMeta {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let client_ip = self.trusted.client_ip(peer, req.headers());
        let mut meta = RequestMeta::new(
            now_ms,
            client_ip,
            req.uri().path(),
            req.headers(),
            &self.limits,
        );
        if client_ip.is_none() {
            meta.cuts.add(CutReason::UnknownClientIp);
        }
        if self.trusted.ignored_forwarding(peer, req.headers()) {
            self.metrics.forwarding_ignored();
        }
        meta.opted_out = has_cookie(req.headers(), &self.optout_cookie);
        meta
    }

    /// Validates a draft, lets the site's conversion policy admit it and offers the hit; every
    /// outcome is counted. Returns whether the hit was valid (whatever became of it after).
    fn finish(&self, draft: Draft<'_>) -> bool {
        let (result, cuts) = draft.finish();
        match result {
            Ok(mut hit) => {
                self.metrics.cuts(&cuts);
                match self.links.admit(&mut hit) {
                    // A dropped hit is counted by the queue; the client gets its answer
                    // regardless.
                    Ok(()) => {
                        self.queue.offer(hit);
                    }
                    Err(reason) => self.metrics.dropped(reason),
                }
                true
            }
            Err(reason) => {
                self.metrics.invalid(reason);
                false
            }
        }
    }

    /// Ready only when every condition holds; otherwise 503 naming each that does not.
    fn readyz(&self) -> Response<ResponseBody> {
        let why = self.not_ready();
        if why.is_empty() {
            return response::text(StatusCode::OK, "ready");
        }
        response::text(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("not ready: {}", why.join("; ")),
        )
    }

    /// Why `/readyz` would answer 503 now; empty when ready.
    pub fn not_ready(&self) -> Vec<&'static str> {
        let (not_connected, failing) = match self.output {
            Output::Kafka => ("kafka not connected", "kafka deliveries failing"),
            // The file producer is "connected" while its latest write succeeded.
            Output::File => ("file output failing", "file writes failing"),
        };
        let problems = [
            (self.shutting_down.load(Ordering::SeqCst), "shutting down"),
            (!self.producer.connected(), not_connected),
            (self.ledger.failing(), failing),
            (
                self.queue.above_high_water(),
                "queue above its high-water mark",
            ),
            (
                self.ledger.spool().above_high_water(),
                "spool above its high-water mark",
            ),
        ];
        problems
            .iter()
            .filter(|(bad, _)| *bad)
            .map(|(_, what)| *what)
            .collect()
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

fn only_get(method: &Method) -> Result<(), RequestError> {
    if method == Method::GET || method == Method::HEAD {
        Ok(())
    } else {
        Err(RequestError::MethodNotAllowed { allow: "GET, HEAD" })
    }
}

fn check_content_type(headers: &hyper::HeaderMap) -> Result<(), RequestError> {
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
        _ => Err(RequestError::UnsupportedMediaType(
            text.chars().take(100).collect(),
        )),
    }
}

#[cfg(test)]
mod tests;
