//! How the public listener is run: the settings it takes from `[http]`, and the two runtime
//! layouts (`http.runtime_layout`).
//!
//! The accept loop itself (connection cap, header timeout, graceful shutdown) is the shared one in
//! `pixelpipe_common::http`; this module only arranges threads around it. It knows nothing of
//! routes (see `service`).

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use pixelpipe_common::http::{self, ConnectionMetrics, IoError, ResponseBody, ServeSettings};
use tokio::sync::watch;

use crate::config::HttpConfig;

/// The public listener's settings.
pub fn serve_settings(h: &HttpConfig) -> ServeSettings {
    ServeSettings {
        max_connections: h.max_connections,
        header_read_timeout: Duration::from_millis(h.header_read_timeout_ms),
        max_header_bytes: h.max_header_bytes,
        shutdown_grace: Duration::from_millis(h.shutdown_grace_ms),
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
) -> Result<impl Future<Output = Result<(), IoError>>, IoError>
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
            .map_err(|source| IoError::new("starting an HTTP runtime", source))?;
        std::thread::Builder::new()
            .name(format!("http-{i}"))
            .spawn(move || {
                let _ = tx.send(
                    runtime.block_on(http::serve(listener, handler, settings, metrics, stop)),
                );
            })
            .map_err(|source| IoError::new("starting an HTTP thread", source))?;
        done.push(rx);
    }
    Ok(async move {
        for rx in done {
            rx.await
                .map_err(|_| IoError::new("HTTP thread", std::io::Error::other("panicked")))??;
        }
        Ok(())
    })
}
