//! Sockets every pixelpipe listener shares: binding, the accept loop with its connection cap,
//! per-connection HTTP/1.1 settings, and graceful shutdown.
//!
//! Owns the connection cap (a connection over [`ServeSettings::max_connections`] is closed at
//! once and counted), the header-read timeout that also bounds idle keep-alive connections, and
//! the rule for stopping: stop accepting, let in-flight requests finish within the grace period,
//! then cut what is left. It knows no routes: a listener brings its handler.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use std::panic::AssertUnwindSafe;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// The response body type of every route of every listener.
pub type ResponseBody = Full<Bytes>;

/// An operating-system error, with what the process was doing when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {source}")]
pub struct IoError {
    /// What the process was doing, e.g. `cannot listen on 0.0.0.0:8080 (http.listen_addr)`.
    pub context: String,
    /// The operating system's error.
    #[source]
    pub source: std::io::Error,
}

impl IoError {
    /// `source`, while doing `context`.
    pub fn new(context: impl Into<String>, source: std::io::Error) -> Self {
        IoError {
            context: context.into(),
            source,
        }
    }
}

/// Binds `count` listening sockets on `addr` with a deep accept backlog (bursts of new
/// connections are normal for a pixel server). More than one socket share the port through
/// `SO_REUSEPORT`, so the kernel spreads connections across them. `setting` names the config
/// entry in errors.
pub fn bind(
    addr: SocketAddr,
    count: usize,
    setting: &str,
) -> Result<Vec<std::net::TcpListener>, IoError> {
    let first = bind_one(addr, count > 1, setting)?;
    // With port 0 the kernel picked a port; the other sockets must join that one.
    let actual = first
        .local_addr()
        .map_err(|source| IoError::new(format!("{setting} address"), source))?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(bind_one(actual, true, setting)?);
    }
    Ok(all)
}

fn bind_one(
    addr: SocketAddr,
    reuse_port: bool,
    setting: &str,
) -> Result<std::net::TcpListener, IoError> {
    let io = |source| IoError::new(format!("cannot listen on {addr} ({setting})"), source);
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, None).map_err(io)?;
    socket.set_reuse_address(true).map_err(io)?;
    if reuse_port {
        socket.set_reuse_port(true).map_err(io)?;
    }
    socket.bind(&addr.into()).map_err(io)?;
    socket.listen(4096).map_err(io)?;
    socket.set_nonblocking(true).map_err(io)?;
    Ok(socket.into())
}

/// How a listener serves connections.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    /// Open connections at most.
    pub max_connections: usize,
    /// Request-head (and keep-alive idle) timeout.
    pub header_read_timeout: Duration,
    /// Largest request head, in bytes; hyper needs at least 8192.
    pub max_header_bytes: usize,
    /// How long in-flight requests may finish after stop.
    pub shutdown_grace: Duration,
}

/// The two connection metrics a listener keeps, so each service hands in its own.
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: prometheus::IntGauge,
    /// Connections closed at once because the cap was reached.
    pub rejected: prometheus::IntCounter,
    /// Requests whose handler panicked; each was answered 500.
    pub panics: prometheus::IntCounter,
}

/// Serves `listener` with `handler` until `stop` turns true, then shuts down gracefully.
/// Returns once every connection has finished or been cut.
pub async fn serve<H, F>(
    listener: std::net::TcpListener,
    handler: H,
    settings: ServeSettings,
    metrics: ConnectionMetrics,
    mut stop: watch::Receiver<bool>,
) -> Result<(), IoError>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let local = listener.local_addr().ok();
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|source| IoError::new(format!("listener {local:?}"), source))?;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes)
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(settings.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(error) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    metrics.rejected.inc();
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                let panics = metrics.panics.clone();
                let service = service_fn(move |req| {
                    // A bug in one handler must not cost the client its answer or the
                    // connection: the panic becomes a 500, is counted and logged.
                    let response = AssertUnwindSafe(handler(req, peer)).catch_unwind();
                    let panics = panics.clone();
                    async move {
                        Ok::<_, Infallible>(response.await.unwrap_or_else(|panic| {
                            panics.inc();
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(|s| (*s).to_owned())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            tracing::error!(panic = %what, "a request handler panicked; answered 500");
                            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
                        }))
                    }
                });
                let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                let open = metrics.open.clone();
                open.inc();
                connections.spawn(async move {
                    // Client resets and timeouts end connections; they are not the server's errors.
                    let _ = connection.await;
                    open.dec();
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(settings.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "shutdown grace elapsed; cutting remaining connections"
        );
        connections.abort_all();
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// A short `text/plain` answer ending in a newline, never cached.
pub fn text(status: StatusCode, body: &str) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// Reads one HTTP/1.1 response with a Content-Length; returns its status line and body.
    fn read_response(r: &mut BufReader<std::net::TcpStream>) -> (String, String) {
        let mut status = String::new();
        r.read_line(&mut status).unwrap();
        let mut len = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        (status.trim().to_owned(), String::from_utf8(body).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_handler_answers_500_and_the_connection_keeps_serving() {
        let listener = bind("127.0.0.1:0".parse().unwrap(), 1, "test")
            .unwrap()
            .remove(0);
        let addr = listener.local_addr().unwrap();
        let metrics = ConnectionMetrics {
            open: prometheus::IntGauge::new("open", "h").unwrap(),
            rejected: prometheus::IntCounter::new("rejected", "h").unwrap(),
            panics: prometheus::IntCounter::new("panics", "h").unwrap(),
        };
        let handler = |req: Request<Incoming>, _peer| async move {
            if req.uri().path() == "/boom" {
                panic!("a bug");
            }
            text(StatusCode::OK, "fine")
        };
        let (stop, stopped) = watch::channel(false);
        let settings = ServeSettings {
            max_connections: 4,
            header_read_timeout: Duration::from_secs(5),
            max_header_bytes: 16 * 1024,
            shutdown_grace: Duration::from_secs(1),
        };
        let server = tokio::spawn(serve(listener, handler, settings, metrics.clone(), stopped));
        let answers = tokio::task::spawn_blocking(move || {
            let stream = std::net::TcpStream::connect(addr).unwrap();
            let mut writer = stream.try_clone().unwrap();
            let mut reader = BufReader::new(stream);
            ["/boom", "/ok", "/boom", "/ok"]
                .iter()
                .map(|path| {
                    write!(writer, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                    read_response(&mut reader)
                })
                .collect::<Vec<_>>()
        })
        .await
        .unwrap();
        let statuses: Vec<_> = answers
            .iter()
            .map(|(s, b)| (s.as_str(), b.as_str()))
            .collect();
        assert_eq!(
            statuses,
            [
                ("HTTP/1.1 500 Internal Server Error", "internal error\n"),
                ("HTTP/1.1 200 OK", "fine\n"),
                ("HTTP/1.1 500 Internal Server Error", "internal error\n"),
                ("HTTP/1.1 200 OK", "fine\n"),
            ]
        );
        assert_eq!(metrics.panics.get(), 2);
        stop.send(true).unwrap();
        server.await.unwrap().unwrap();
    }
}
