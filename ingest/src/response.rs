//! What the edge answers: the static GIF and the headers that keep caches from answering for us,
//! the page snippet, empty and CORS answers, the opt-out pages, click redirects, and
//! [`RequestError`], the errors of one request, which become a status and a one-line body here
//! and nowhere else.
//!
//! Pure: no state, no metrics. Routes and what a request records are `service`'s.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderName, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Response, StatusCode};

pub use pixelpipe_common::http::{text, ResponseBody};

use crate::links::ClickRefusal;

/// The transparent 1x1 GIF every pixel request gets: GIF89a, a two-colour table, a graphic
/// control extension marking colour 0 transparent, one pixel of colour 0.
pub const PIXEL_GIF: &[u8; 43] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\
\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";

/// The page snippet (`GET /px.js`), served from the binary so that it always matches the edge.
pub const SNIPPET_JS: &str = include_str!("../static/px.js");

/// Why one request is answered with an error. Start-up errors are `error::Error`; an invalid
/// *hit* is no error at all (the pixel is still served, the hit counted by reason).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// A request body was larger than `http.max_body_bytes`.
    #[error("body larger than {limit_bytes} bytes")]
    BodyTooLarge {
        /// The configured limit.
        limit_bytes: usize,
    },
    /// A request body was not sent within `http.body_read_timeout_ms`.
    #[error("body not received within {timeout_ms} ms")]
    BodyTimeout {
        /// The configured timeout.
        timeout_ms: u64,
    },
    /// The body could not be read from the connection.
    #[error("body could not be read: {0}")]
    BodyRead(String),
    /// A `/collect` body decodes (`Content-Encoding`) to more than
    /// `http.max_decoded_body_bytes`.
    #[error("body larger than {limit_bytes} bytes once decoded (http.max_decoded_body_bytes)")]
    DecodedTooLarge {
        /// The configured limit.
        limit_bytes: usize,
    },
    /// A `/collect` body in a `Content-Encoding` the edge does not decode.
    #[error("unsupported Content-Encoding `{0}`: send gzip, deflate or no encoding")]
    UnsupportedEncoding(String),
    /// A `/collect` body that is not valid in its `Content-Encoding`.
    #[error("body not valid in its Content-Encoding: {0}")]
    BadEncoding(String),
    /// A `/collect` array with more events than `http.max_events_per_request`.
    #[error("{count} events in one request; at most {limit} (http.max_events_per_request): send them in several")]
    TooManyEvents {
        /// Events in the request.
        count: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A `/collect` body is not JSON of the accepted shape.
    #[error("malformed JSON: {0}")]
    BadJson(String),
    /// A `/collect` body with a content type other than JSON or text.
    #[error("unsupported content type `{0}`: send application/json or text/plain")]
    UnsupportedMediaType(String),
    /// The route exists but not for this method.
    #[error("method not allowed; allowed: {allow}")]
    MethodNotAllowed {
        /// Value for the `Allow` header.
        allow: &'static str,
    },
    /// `GET /c` will not redirect to this target (see `links`).
    #[error("click refused: {0}")]
    ClickRefused(ClickRefusal),
    /// No such route.
    #[error("not found")]
    NotFound,
}

impl RequestError {
    /// The HTTP status the error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            RequestError::BodyTooLarge { .. }
            | RequestError::DecodedTooLarge { .. }
            | RequestError::TooManyEvents { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RequestError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            RequestError::BodyRead(_)
            | RequestError::BadEncoding(_)
            | RequestError::BadJson(_)
            | RequestError::ClickRefused(_) => StatusCode::BAD_REQUEST,
            RequestError::UnsupportedMediaType(_) | RequestError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            RequestError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            RequestError::NotFound => StatusCode::NOT_FOUND,
        }
    }
}

/// The one place a request error becomes a response: its status, its message as the body, and
/// `Allow` for a wrong method (RFC 9110, section 15.5.6).
pub fn error(e: RequestError) -> Response<ResponseBody> {
    let mut r = text(e.status(), &e.to_string());
    if let RequestError::MethodNotAllowed { allow } = e {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    r
}

/// The pixel response: static bytes and headers that stop every cache from answering for us.
/// Inserted one by one rather than through [`with_headers`]: on the pixel path, building that
/// array costs about 65 instructions a request (callgrind, see docs/benchmarks.md).
pub fn gif() -> Response<ResponseBody> {
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

/// `GET /px.js`: the page snippet. Browsers may cache it for an hour; it changes only with the
/// edge's version.
pub fn script() -> Response<ResponseBody> {
    with_headers(
        Response::new(Full::new(Bytes::from_static(SNIPPET_JS.as_bytes()))),
        [
            (
                CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=3600"),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
        ],
    )
}

/// `302 Found` to `location`, never cached; `None` when `location` cannot be a header value.
pub fn redirect(location: &str) -> Option<Response<ResponseBody>> {
    let location = HeaderValue::from_str(location).ok()?;
    let mut r = empty(StatusCode::FOUND);
    let h = r.headers_mut();
    h.insert(header::LOCATION, location);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Some(r)
}

/// `/optout` (`out`) sets the first-party opt-out cookie `cookie_name`, `/optin` clears it; both
/// answer a short page. No redirect target is taken from the request, so neither can be an open
/// redirect. `cookie_name` must be a validated token (`privacy.optout_cookie`).
pub fn opt_page(out: bool, cookie_name: &str) -> Response<ResponseBody> {
    let (cookie, page) = if out {
        (
            format!("{cookie_name}=1; Max-Age=63072000; Path=/; HttpOnly; SameSite=Lax"),
            "You are opted out: hits from this browser are no longer recorded.",
        )
    } else {
        (
            format!("{cookie_name}=; Max-Age=0; Path=/; HttpOnly; SameSite=Lax"),
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

/// A response with `status` and no body.
pub fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = status;
    r
}

/// `r` with the CORS headers every `/collect` answer carries (Fetch standard, "CORS protocol"):
/// the request's `Origin` echoed with `Access-Control-Allow-Credentials: true`, because
/// `navigator.sendBeacon` always sends credentials and a credentialed request is refused when
/// the answer says `*`; `*` when there is no `Origin` (not a browser's CORS request, answered as
/// ever). Any origin is answered: the answer holds nothing to read but a status and a reason.
/// The preflight allows `POST` with `Content-Type` and `Content-Encoding` (bodies may be gzip),
/// and `Vary: Origin` keeps a cache from giving one origin's answer to another.
pub fn cors(r: Response<ResponseBody>, origin: Option<&HeaderValue>) -> Response<ResponseBody> {
    let mut r = with_headers(
        r,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("POST, OPTIONS"),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("content-type, content-encoding"),
            ),
            (
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            ),
            (header::VARY, HeaderValue::from_static("origin")),
        ],
    );
    let h = r.headers_mut();
    match origin {
        Some(origin) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        None => {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
    r
}

/// `r` with `headers` set, in order. The values are made where they are written, with
/// `HeaderValue::from_static` on a literal, which the compiler folds: checked once at build time,
/// not on every pixel.
fn with_headers<const N: usize>(
    mut r: Response<ResponseBody>,
    headers: [(HeaderName, HeaderValue); N],
) -> Response<ResponseBody> {
    let h = r.headers_mut();
    for (name, value) in headers {
        h.insert(name, value);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn every_request_error_has_its_status() {
        for (e, status) in [
            (
                RequestError::BodyTooLarge { limit_bytes: 1 },
                StatusCode::PAYLOAD_TOO_LARGE,
            ),
            (
                RequestError::BodyTimeout { timeout_ms: 1 },
                StatusCode::REQUEST_TIMEOUT,
            ),
            (RequestError::BodyRead("x".into()), StatusCode::BAD_REQUEST),
            (RequestError::BadJson("x".into()), StatusCode::BAD_REQUEST),
            (
                RequestError::ClickRefused(ClickRefusal::NotAllowed),
                StatusCode::BAD_REQUEST,
            ),
            (
                RequestError::UnsupportedMediaType("x".into()),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ),
            (
                RequestError::MethodNotAllowed { allow: "GET" },
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (RequestError::NotFound, StatusCode::NOT_FOUND),
        ] {
            let line = e.to_string();
            let r = error(e);
            assert_eq!(r.status(), status, "{line}");
            assert_eq!(
                r.headers().contains_key(header::ALLOW),
                status == StatusCode::METHOD_NOT_ALLOWED
            );
        }
    }

    #[test]
    fn redirects_are_never_cached_and_refuse_bad_header_values() {
        let r = redirect("https://shop.example/a").unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[header::LOCATION], "https://shop.example/a");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert!(redirect("https://shop.example/\r\nSet-Cookie: a=b").is_none());
    }
}
