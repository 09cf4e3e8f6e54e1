//! Sockets: binding, the accept loop, per-connection HTTP/1.1 settings and graceful shutdown.
//!
//! Owns the connection cap (a connection over `http.max_connections` is closed at once and
//! counted), the header-read timeout that also bounds idle keep-alive connections, and the rule
//! for stopping: stop accepting, let in-flight requests finish within `http.shutdown_grace_ms`,
//! then cut what is left. It knows nothing of routes (see `service`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::HttpConfig;
use crate::error::{Error, Result};
use crate::metrics::ConnectionMetrics;
use crate::service::ResponseBody;

/// Binds `count` listening sockets on `addr` with a deep accept backlog (bursts of new
/// connections are normal for a pixel server). More than one socket share the port through
/// `SO_REUSEPORT`, so the kernel spreads connections across them. `setting` names the config
/// entry in errors.
pub fn bind(addr: SocketAddr, count: usize, setting: &str) -> Result<Vec<std::net::TcpListener>> {
    let first = bind_one(addr, count > 1, setting)?;
    // With port 0 the kernel picked a port; the other sockets must join that one.
    let actual = first.local_addr().map_err(|source| Error::Io {
        context: format!("{setting} address"),
        source,
    })?;
    let mut all = vec![first];
    for _ in 1..count {
        all.push(bind_one(actual, true, setting)?);
    }
    Ok(all)
}

fn bind_one(addr: SocketAddr, reuse_port: bool, setting: &str) -> Result<std::net::TcpListener> {
    let io = |source| Error::Io {
        context: format!("cannot listen on {addr} ({setting})"),
        source,
    };
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
    /// Largest request head.
    pub max_header_bytes: usize,
    /// How long in-flight requests may finish after stop.
    pub shutdown_grace: Duration,
}

impl ServeSettings {
    /// The public listener's settings.
    pub fn from_http(h: &HttpConfig) -> ServeSettings {
        ServeSettings {
            max_connections: h.max_connections,
            header_read_timeout: Duration::from_millis(h.header_read_timeout_ms),
            max_header_bytes: h.max_header_bytes,
            shutdown_grace: Duration::from_millis(h.shutdown_grace_ms),
        }
    }
}

/// Serves every listener with its own single-threaded runtime on its own OS thread (the
/// `per_core` layout), until `stop` turns true. Completes when all have stopped.
pub fn serve_per_core<H, F>(
    listeners: Vec<std::net::TcpListener>,
    handler: H,
    settings: ServeSettings,
    metrics: ConnectionMetrics,
    stop: watch::Receiver<bool>,
) -> Result<impl Future<Output = Result<()>>>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let mut done = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (handler, settings, metrics, stop) = (
            handler.clone(),
            settings.clone(),
            metrics.clone(),
            stop.clone(),
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|source| Error::Io {
                context: "starting an HTTP runtime".into(),
                source,
            })?;
        std::thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || {
                let _ =
                    tx.send(runtime.block_on(serve(listener, handler, settings, metrics, stop)));
            })
            .map_err(|source| Error::Io {
                context: "starting an HTTP thread".into(),
                source,
            })?;
        done.push(rx);
    }
    Ok(async move {
        for rx in done {
            rx.await.map_err(|_| Error::Io {
                context: "HTTP thread".into(),
                source: std::io::Error::other("panicked"),
            })??;
        }
        Ok(())
    })
}

/// Serves `listener` with `handler` until `stop` turns true, then shuts down gracefully.
/// Returns once every connection has finished or been cut.
pub async fn serve<H, F>(
    listener: std::net::TcpListener,
    handler: H,
    settings: ServeSettings,
    metrics: ConnectionMetrics,
    mut stop: watch::Receiver<bool>,
) -> Result<()>
where
    H: Fn(Request<Incoming>, SocketAddr) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<ResponseBody>> + Send + 'static,
{
    let local = listener.local_addr().ok();
    let listener = tokio::net::TcpListener::from_std(listener).map_err(|source| Error::Io {
        context: format!("listener {local:?}"),
        source,
    })?;
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
                let service = service_fn(move |req| {
                    let response = handler(req, peer);
                    async move { Ok::<_, Infallible>(response.await) }
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

/// Serves `GET /metrics` with the text `render` returns, until `stop` turns true: the admin
/// listener of every pixelpipe service.
pub async fn serve_metrics<R>(
    listener: std::net::TcpListener,
    render: R,
    shutdown_grace: Duration,
    stop: watch::Receiver<bool>,
) -> Result<()>
where
    R: Fn() -> String + Clone + Send + Sync + 'static,
{
    use hyper::header::{HeaderValue, CONTENT_TYPE};
    use hyper::{Method, StatusCode};
    let handler = move |req: Request<Incoming>, _peer| {
        let render = render.clone();
        async move {
            match (req.method(), req.uri().path()) {
                (&Method::GET, "/metrics") => {
                    let mut r = crate::service::text(StatusCode::OK, render().trim_end());
                    r.headers_mut().insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    r
                }
                (_, "/metrics") => crate::service::text(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method not allowed; allowed: GET",
                ),
                _ => crate::service::text(StatusCode::NOT_FOUND, "not found"),
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
    serve(listener, handler, settings, connections, stop).await
}
