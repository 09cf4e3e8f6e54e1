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
        panics: prometheus::IntCounter::new("admin_panics", "unregistered").expect("valid metric"),
    };
    http::serve(listener, handler, settings, connections, stop).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn get(addr: std::net::SocketAddr, request: &str) -> String {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn serves_the_rendered_registry_and_nothing_else() {
        let registry = Registry::new();
        let c = prometheus::IntCounter::new("pixelpipe_test_things_total", "Things.").unwrap();
        registry.register(Box::new(c.clone())).unwrap();
        c.inc_by(3);
        let listener = http::bind("127.0.0.1:0".parse().unwrap(), 1, "test")
            .unwrap()
            .remove(0);
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = watch::channel(false);
        let server = tokio::spawn(serve_metrics(
            listener,
            move || render(&registry),
            Duration::from_secs(1),
            stopped,
        ));
        let answers = tokio::task::spawn_blocking(move || {
            ["GET /metrics", "POST /metrics", "GET /other"].map(|line| {
                get(
                    addr,
                    &format!("{line} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
                )
            })
        })
        .await
        .unwrap();
        assert!(answers[0].starts_with("HTTP/1.1 200"), "{}", answers[0]);
        assert!(answers[0].contains("text/plain; version=0.0.4"));
        assert!(answers[0].contains("pixelpipe_test_things_total 3"));
        assert!(answers[1].starts_with("HTTP/1.1 405"), "{}", answers[1]);
        assert!(answers[2].starts_with("HTTP/1.1 404"), "{}", answers[2]);
        stop.send(true).unwrap();
        server.await.unwrap().unwrap();
    }
}
