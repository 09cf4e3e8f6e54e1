//! `pixelpipe-loadgen`: sends the sample mix of pixel and beacon requests to a running edge over
//! keep-alive connections, and reports what came back.
//!
//! `pixelpipe-loadgen --addr 127.0.0.1:8080 --requests 200` (the local demo), or
//! `pixelpipe-loadgen --connections 64 --duration-s 10` for load. For raw request rates of one
//! URL, `wrk` is the reference; this tool's value is the realistic, varied mix.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use pixelpipe_bench::{hits_in, sample_request};

/// Send sample tracking-pixel traffic to a pixelpipe edge.
#[derive(Parser)]
struct Args {
    /// Edge address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 4)]
    connections: u64,
    /// Stop after this many requests in all (0: no limit, use --duration-s).
    #[arg(long, default_value_t = 200)]
    requests: u64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    hits: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (tally, next, limit, addr) = (tally.clone(), next.clone(), args.requests, args.addr);
        workers.push(tokio::spawn(async move {
            connection(addr, limit, deadline, next, tally).await
        }));
    }
    for w in workers {
        w.await?.map_err(|e| e.to_string())?;
    }
    let secs = started.elapsed().as_secs_f64();
    let sent = tally.sent.load(Ordering::Relaxed);
    println!(
        "sent {sent} requests carrying {} hits in {secs:.2} s ({:.0} req/s): {} answered 2xx, {} not",
        tally.hits.load(Ordering::Relaxed),
        sent as f64 / secs,
        tally.ok.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    if tally.failed.load(Ordering::Relaxed) > 0 {
        return Err("some requests were not answered 2xx".into());
    }
    Ok(())
}

async fn connection(
    addr: SocketAddr,
    limit: u64,
    deadline: Instant,
    next: Arc<AtomicU64>,
    tally: Arc<Tally>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    while Instant::now() < deadline {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if limit > 0 && i >= limit {
            break;
        }
        let s = sample_request(i);
        let req = Request::builder()
            .method(s.method)
            .uri(&s.target)
            .header("host", addr.to_string())
            .header("user-agent", s.user_agent)
            .header("content-type", "text/plain;charset=UTF-8")
            .body(Full::new(Bytes::from(s.body)))?;
        sender.ready().await?;
        let resp = sender.send_request(req).await?;
        let ok = resp.status().is_success();
        resp.into_body().collect().await?;
        tally.sent.fetch_add(1, Ordering::Relaxed);
        tally.hits.fetch_add(hits_in(i), Ordering::Relaxed);
        if ok { &tally.ok } else { &tally.failed }.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
