//! The admin listener every pixelpipe service runs (`GET /metrics`), and the Prometheus text
//! rendering of a registry. What the metrics are is each service's own `metrics` module.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::sync::watch;

use crate::http::{self, ConnectionMetrics, IoError, ServeSettings};

/// The Prometheus text exposition (format 0.0.4) of every metric in `registry`.
pub fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .expect("text encoding");
    String::from_utf8(out).expect("exposition is UTF-8")
}

/// Serves `GET /metrics` with the text `render` returns, until `stop` turns true; other methods
/// get 405, other paths 404.
pub async fn serve_metrics<R>(
    listener: std::net::TcpListener,
    render: R,
    shutdown_grace: Duration,
    stop: watch::Receiver<bool>,
) -> Result<(), IoError>
where
    R: Fn() -> String + Clone + Send + Sync + 'static,
{
    let handler = move |req: Request<Incoming>, _peer| {
        let render = render.clone();
        async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/metrics") => {
                    let mut r = http::text(StatusCode::OK, render().trim_end());
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    r
                }
                (_, "/metrics") => http::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed; allowed: GET",
                ),
                _ => http::text(StatusCode::NOT_FOUND, "not found"),
            }
        }
    };
    let settings = ServeSettings {
        max_connections: 64,
        header_read_timeout: Duration::from_secs(10),
        max_header_bytes: 16 * 1024,
        shutdown_grace,
    };
    // Scrapes of the admin listener are not the service's traffic: count them nowhere.
    let connections = ConnectionMetrics {
        open: prometheus::IntGauge::new("admin_connections_open", "unregistered")
            .expect("valid metric"),
        rejected: prometheus::IntCounter::new("admin_connections_rejected", "unregistered")
            .expect("valid metric"),
    };
    http::serve(listener, handler, settings, connections, stop).await
}
