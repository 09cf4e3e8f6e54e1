//! pixelpipe's edge: answers every tracking pixel at once from static bytes and hands the hit,
//! lock-free, to batcher threads that produce it to Kafka.
//!
//! ```text
//! request ─► service (parse, build Hit) ─► queue (bounded channel, try_send) ─► batcher threads
//!    ▲                                        │ full: counted, GIF still served      │ encode (wire)
//!    └──────── 43-byte GIF, never waits ──────┘                                      ▼
//!                                     produce::HitProducer = kafka (ThreadedProducer, delivery callback)
//! ```
//!
//! [`run`] wires the parts together and owns the shutdown order; `main.rs` only parses the
//! configuration, sets up logging and binds. Tests and benches drive [`run_with_producer`] or
//! [`service::Edge`] directly. What the sink shares with the edge (the wire format, configuration
//! layering, the admin listener) is the `pixelpipe-common` crate; [`wire`] is re-exported here.

#![forbid(unsafe_code)]

pub mod batcher;
pub mod client_ip;
pub mod config;
pub mod error;
pub mod form;
pub mod geo;
pub mod hit;
pub mod kafka;
pub mod links;
pub mod metrics;
pub mod params;
pub mod privacy;
pub mod produce;
pub mod queue;
pub mod redirect;
pub mod response;
pub mod server;
pub mod service;
pub mod signing;

pub use pixelpipe_common::wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pixelpipe_common::{admin, http, layers};
use tokio::sync::watch;

pub use config::{Config, RuntimeLayout};
pub use error::{Error, Result};
pub use metrics::Report;

use batcher::{BatcherSettings, Batchers};
use kafka::KafkaProducer;
use metrics::Metrics;
use produce::SharedProducer;
use queue::HitQueue;
use service::Edge;

/// The sockets the edge serves, bound by the caller (so tests can bind port 0).
pub struct Listeners {
    /// Pixels, beacons, health (`http.listen_addr`): one socket, or one per thread in the
    /// `per_core` layout.
    pub public: Vec<std::net::TcpListener>,
    /// Metrics (`admin.listen_addr`).
    pub admin: std::net::TcpListener,
}

impl Listeners {
    /// Binds both addresses from the configuration.
    pub fn bind(config: &Config) -> Result<Listeners> {
        let public_sockets = match config.http.runtime_layout {
            RuntimeLayout::MultiThread => 1,
            RuntimeLayout::PerCore => config.http_threads(),
        };
        let mut admin = http::bind(config.admin.listen_addr, 1, "admin.listen_addr")?;
        Ok(Listeners {
            public: http::bind(config.http.listen_addr, public_sockets, "http.listen_addr")?,
            admin: admin.remove(0),
        })
    }

    /// The public address (with the port the kernel chose for port 0).
    pub fn public_addr(&self) -> Option<std::net::SocketAddr> {
        self.public.first()?.local_addr().ok()
    }
}

/// Runs the edge with a Kafka producer until `shutdown` completes.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<Report> {
    let metrics = Metrics::new();
    let producer = Arc::new(KafkaProducer::new(&config.kafka, metrics.clone())?);
    run_with_producer(config, listeners, producer, metrics, shutdown).await
}

/// Runs the edge with any producer until `shutdown` completes, then stops in this order: readiness
/// off, stop accepting, finish in-flight requests, produce every queued hit, flush the producer,
/// drop it (librdkafka reports what it still held as failed), stop the admin listener.
pub async fn run_with_producer(
    config: Config,
    listeners: Listeners,
    producer: SharedProducer,
    metrics: Metrics,
    shutdown: impl Future<Output = ()>,
) -> Result<Report> {
    layers::Validate::validate(&config)?;
    let (queue, rx) = HitQueue::new(
        config.queue.capacity_hits,
        config.queue.high_water_percent,
        metrics.clone(),
    );
    let geo = Arc::new(geo::Geo::open(&config.geoip)?);
    let (stop_reload, reload_stopped) = watch::channel(false);
    let reloader = tokio::spawn(reload_geo(geo.clone(), metrics.clone(), reload_stopped));
    let batchers = Batchers::spawn(
        rx,
        producer.clone(),
        BatcherSettings {
            threads: config.queue.batcher_threads,
            batch_max_hits: config.queue.batch_max_hits,
            message_key: config.kafka.message_key,
            drain_timeout: Duration::from_millis(config.kafka.flush_timeout_ms),
            privacy: privacy::Privacy::new(config.privacy.clone()),
            geo,
        },
        metrics.clone(),
    )
    .map_err(|source| Error::io("starting batcher threads", source))?;
    let edge = Arc::new(Edge::new(
        &config,
        queue,
        producer.clone(),
        metrics.clone(),
    )?);

    let (stop_public, public_stopped) = watch::channel(false);
    let (stop_admin, admin_stopped) = watch::channel(false);
    let public_addr = listeners.public_addr();
    let admin_addr = listeners.admin.local_addr().ok();
    let public = {
        let edge = edge.clone();
        let handler = move |req, peer: std::net::SocketAddr| {
            let edge = edge.clone();
            async move { edge.handle(req, peer.ip()).await }
        };
        let settings = server::serve_settings(&config.http);
        match config.http.runtime_layout {
            // The caller's runtime is the multi-thread one (main.rs sizes it).
            RuntimeLayout::MultiThread => {
                let tasks: Vec<_> = (listeners.public.into_iter())
                    .map(|l| {
                        tokio::spawn(http::serve(
                            l,
                            handler.clone(),
                            settings.clone(),
                            metrics.connections(),
                            public_stopped.clone(),
                        ))
                    })
                    .collect();
                tokio::spawn(async move {
                    for t in tasks {
                        join(t).await?;
                    }
                    Ok(())
                })
            }
            RuntimeLayout::PerCore => tokio::spawn(server::serve_per_core(
                listeners.public,
                handler,
                settings,
                metrics.connections(),
                public_stopped,
            )?),
        }
    };
    let admin = {
        let m = metrics.clone();
        let grace = std::time::Duration::from_millis(config.http.shutdown_grace_ms);
        tokio::spawn(admin::serve_metrics(
            listeners.admin,
            move || m.render(),
            grace,
            admin_stopped,
        ))
    };
    tracing::info!(public = ?public_addr, admin = ?admin_addr, topic = %config.kafka.topic, "edge serving");

    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests");
    edge.begin_shutdown();
    let _ = stop_public.send(true);
    join(public).await?;
    drop(edge);

    tracing::info!("draining the queue into the producer");
    let flush_timeout = Duration::from_millis(config.kafka.flush_timeout_ms);
    tokio::task::spawn_blocking(move || {
        batchers.stop_and_drain();
        producer.flush(flush_timeout);
        // The last reference: dropping it purges what librdkafka still holds, which its
        // delivery callback counts as failed, so the report below is complete.
        drop(producer);
    })
    .await
    .map_err(|e| Error::io("draining batchers", std::io::Error::other(e.to_string())))?;

    let report = metrics.report();
    tracing::info!(
        accepted = report.accepted,
        delivered = report.delivered,
        failed = report.failed,
        dropped = report.dropped,
        invalid = report.invalid,
        "edge stopped"
    );
    let _ = stop_reload.send(true);
    let _ = reloader.await;
    let _ = stop_admin.send(true);
    join(admin).await?;
    Ok(report)
}

/// Checks the GeoIP files every `geoip.reload_interval_ms` and loads new versions, until `stop`.
/// The file reading runs on a blocking thread: a city database is tens of megabytes.
async fn reload_geo(geo: Arc<geo::Geo>, metrics: Metrics, mut stop: watch::Receiver<bool>) {
    let Some(interval) = geo.reload_interval() else {
        return;
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let g = geo.clone();
        match tokio::task::spawn_blocking(move || g.reload_if_changed()).await {
            Ok(report) => metrics.geoip_reloads(report.loaded, report.failed),
            Err(e) => tracing::error!(error = %e, "GeoIP reload panicked"),
        }
    }
}

/// Waits for a server task; a panic in it is reported as an I/O error of the task.
async fn join(
    task: tokio::task::JoinHandle<Result<(), http::IoError>>,
) -> Result<(), http::IoError> {
    task.await
        .map_err(|e| http::IoError::new("server task", std::io::Error::other(e.to_string())))?
}
