//! pixelpipe's edge: answers every tracking pixel at once from static bytes and hands the hit,
//! lock-free, to batcher threads that produce it to Kafka.
//!
//! ```text
//! request ─► service (parse, build Hit) ─► queue (bounded channel, try_send) ─► batcher threads
//!    ▲                                        │ full: spilled to the spool           │ outbound: geo,
//!    └──────── 43-byte GIF, never waits ──────┘                                      │ privacy, encode
//!                                                        (disk durability: spool) ◄──┤
//!      produce::HitProducer = kafka (ThreadedProducer) or file_producer (JSON Lines) ▼
//!                                        delivery report ─► ledger: settle, or spool ─► replay
//! ```
//!
//! [`run`] wires the parts together and owns the shutdown order; `main.rs` only parses the
//! configuration, sets up logging and binds. Tests and benches drive [`run_with_producer`] or
//! [`service::Edge`] directly. What the sink shares with the edge (the wire format, configuration
//! layering, the admin listener) is the `pixelpipe-common` crate; [`wire`] is re-exported here.

#![forbid(unsafe_code)]

pub mod batcher;
pub mod body;
pub mod client_ip;
pub mod config;
pub mod dir_lock;
pub mod error;
pub mod file_producer;
pub mod form;
pub mod geo;
pub mod hit;
pub mod json;
pub mod kafka;
pub mod ledger;
pub mod links;
pub mod metrics;
pub mod outbound;
pub mod pack;
pub mod params;
pub mod privacy;
pub mod produce;
pub mod queue;
pub mod redirect;
pub mod replay;
pub mod response;
pub mod server;
pub mod service;
pub mod signing;
pub mod spool;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;

pub use pixelpipe_common::wire;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use pixelpipe_common::{admin, http, layers};
use tokio::sync::watch;

pub use config::{Config, Output, RuntimeLayout};
pub use error::{Error, Result};
pub use metrics::Report;

use batcher::{BatcherSettings, Batchers};
use file_producer::FileProducer;
use kafka::KafkaProducer;
use ledger::Ledger;
use metrics::Metrics;
use outbound::Outbound;
use produce::SharedProducer;
use queue::HitQueue;
use replay::{Replay, ReplaySettings};
use service::Edge;
use spool::Spool;

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

/// Runs the edge with the producer `output` names (Kafka or files) until `shutdown` completes.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<Report> {
    run_with_producer(
        config,
        listeners,
        |config, ledger| -> Result<SharedProducer> {
            Ok(match config.output {
                Output::Kafka => Arc::new(KafkaProducer::new(&config.kafka, ledger)?),
                Output::File => Arc::new(FileProducer::new(&config.file, ledger)?),
            })
        },
        shutdown,
    )
    .await
}

/// Runs the edge until `shutdown` completes, with the producer `make_producer` builds once the
/// spool is open (it reports every delivery to the ledger it is given). Stops in this order:
/// readiness off, stop accepting, finish in-flight requests, hand every queued hit over (or to
/// the spool), stop replay, flush the producer, drop it (librdkafka fails what it still held,
/// and the ledger spools it), fsync the spool, stop the admin listener.
pub async fn run_with_producer(
    config: Config,
    listeners: Listeners,
    make_producer: impl FnOnce(&Config, Arc<Ledger>) -> Result<SharedProducer>,
    shutdown: impl Future<Output = ()>,
) -> Result<Report> {
    layers::Validate::validate(&config)?;
    let metrics = Metrics::new();
    let spool = Arc::new(Spool::open(&config.spool, metrics.clone())?);
    let ledger = Arc::new(Ledger::new(spool.clone(), metrics.clone()));
    let producer = make_producer(&config, ledger.clone())?;
    let geo = Arc::new(geo::Geo::open(&config.geoip)?);
    let outbound = Outbound {
        message_key: config.kafka.message_key,
        privacy: privacy::Privacy::new(config.privacy.clone()),
        geo: geo.clone(),
        ledger: ledger.clone(),
    };
    let (queue, rx) = HitQueue::new(
        config.queue.capacity_hits,
        config.queue.high_water_percent,
        outbound.clone(),
    );
    // Everything that can refuse the configuration comes before any thread starts.
    let edge = Arc::new(Edge::new(&config, queue, producer.clone(), ledger.clone())?);
    let (stop_reload, reload_stopped) = watch::channel(false);
    let reloader = tokio::spawn(reload_geo(geo, metrics.clone(), reload_stopped));
    let batchers = Batchers::spawn(
        rx,
        producer.clone(),
        BatcherSettings {
            threads: config.queue.batcher_threads,
            batch_max_hits: config.queue.batch_max_hits,
            linger: Duration::from_millis(config.queue.batch_linger_ms),
            durability: config.spool.durability,
            outbound,
        },
        metrics.clone(),
    )
    .map_err(|source| Error::io("starting batcher threads", source))?;
    let replay = Replay::spawn(
        ledger,
        producer.clone(),
        ReplaySettings {
            rate_hits_per_s: config.spool.replay_rate_hits_per_s,
            fsync_interval: Duration::from_millis(config.spool.fsync_interval_ms),
        },
    )
    .map_err(|source| Error::io("starting the spool replay thread", source))?;
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
        // Weak: the edge owns the producer, whose last reference must go at the end of the
        // drain below (that purge spools what Kafka still holds), not when this task ends.
        let edge = Arc::downgrade(&edge);
        let grace = std::time::Duration::from_millis(config.http.shutdown_grace_ms);
        tokio::spawn(admin::serve_metrics(
            listeners.admin,
            move || {
                // Taken at each scrape, so an alert on it needs no probe of `/readyz`.
                let ready = edge.upgrade().is_some_and(|e| e.not_ready().is_empty());
                m.set_ready(ready);
                m.render()
            },
            grace,
            admin_stopped,
        ))
    };
    match config.output {
        Output::Kafka => {
            tracing::info!(public = ?public_addr, admin = ?admin_addr, output = "kafka", topic = %config.kafka.topic, "edge serving")
        }
        Output::File => {
            tracing::info!(public = ?public_addr, admin = ?admin_addr, output = "file", dir = %config.file.dir.display(), "edge serving")
        }
    }

    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests");
    edge.begin_shutdown();
    let _ = stop_public.send(true);
    join(public).await?;
    // After this no scrape can take the edge again (only a weak reference is left); one taking it
    // right now holds it while it reads the edge's state, which the wait below outlasts.
    let edge_gone = Arc::downgrade(&edge);
    drop(edge);

    tracing::info!("draining the queue into the producer");
    let flush_timeout = Duration::from_millis(config.kafka.flush_timeout_ms);
    tokio::task::spawn_blocking(move || {
        batchers.stop_and_drain();
        replay.stop();
        producer.flush(flush_timeout);
        while edge_gone.strong_count() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        // The last reference: dropping it purges what librdkafka still holds, which its
        // delivery callback reports failed and the ledger spools, so the report below is
        // complete and nothing answered is lost.
        drop(producer);
        if let Err(error) = spool.sync() {
            tracing::error!(%error, "the final spool fsync failed");
        }
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
        spooled = report.spooled,
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
