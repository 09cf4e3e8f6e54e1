//! `pixelpipe-chaosload`: the chaos suite's load generator. Sends `--hits` distinct pixel hits,
//! numbered `n=0..hits-1` and tagged `run=<--run>`, at a fixed `--rate` per second, spread over
//! `--connections` keep-alive connections to the `--addr` edges in turn, and prints how many were
//! answered 2xx. A request that fails is not retried (a browser loading a pixel does not retry
//! either, and a retry is how a client makes a duplicate); the numbers of the hits not answered
//! 2xx are written to `--unanswered-out`, so the suite counts as missing only answered hits.
//!
//! `pixelpipe-chaosload --addr 127.0.0.1:18081 --addr 127.0.0.1:18082 --hits 20000 --rate 200 --run r1`

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use pixelpipe_bench::connect;

/// Send numbered pixel hits at a fixed rate and report which were answered.
#[derive(Parser)]
struct Args {
    /// Edge addresses; connections are spread over them in turn.
    #[arg(long, required = true)]
    addr: Vec<SocketAddr>,
    /// Distinct hits to send.
    #[arg(long, default_value_t = 10_000)]
    hits: u64,
    /// Hits per second.
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 8)]
    connections: u64,
    /// Tag of this run, sent as `run=` with every hit.
    #[arg(long)]
    run: String,
    /// Site id of the hits.
    #[arg(long, default_value = "chaos.example")]
    site: String,
    /// File to write the numbers of hits not answered 2xx to, one per line.
    #[arg(long)]
    unanswered_out: Option<std::path::PathBuf>,
}

#[derive(Default)]
struct Tally {
    answered: AtomicU64,
    unanswered: Mutex<Vec<u64>>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    let tally = Arc::new(Tally::default());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.connections)
        .map(|c| {
            let (args, tally, next) = (args.clone(), tally.clone(), next.clone());
            tokio::spawn(async move { worker(c as usize, &args, started, &next, &tally).await })
        })
        .collect();
    for w in workers {
        w.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let mut unanswered = std::mem::take(&mut *tally.unanswered.lock().expect("not poisoned"));
    unanswered.sort_unstable();
    if let Some(path) = &args.unanswered_out {
        let text: String = unanswered.iter().map(|n| format!("{n}\n")).collect();
        std::fs::write(path, text)?;
    }
    println!(
        "sent={} answered={} unanswered={} seconds={secs:.1}",
        args.hits,
        tally.answered.load(Ordering::Relaxed),
        unanswered.len()
    );
    Ok(())
}

/// Takes the next number, waits for its slot in the schedule, sends it; reconnects (to the next
/// edge in turn) after any failure.
async fn worker(c: usize, args: &Args, started: Instant, next: &AtomicU64, tally: &Tally) {
    let mut edge = c;
    let mut conn: Option<(SocketAddr, SendRequest<Full<Bytes>>)> = None;
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= args.hits {
            return;
        }
        let due = started + Duration::from_secs_f64(n as f64 / args.rate as f64);
        tokio::time::sleep_until(due.into()).await;
        if conn.is_none() {
            let addr = args.addr[edge % args.addr.len()];
            edge += 1;
            conn = connect(addr).await.map(|s| (addr, s));
        }
        let ok = match &mut conn {
            Some((addr, sender)) => send(sender, *addr, args, n).await,
            None => false,
        };
        if ok {
            tally.answered.fetch_add(1, Ordering::Relaxed);
        } else {
            tally.unanswered.lock().expect("not poisoned").push(n);
            conn = None;
        }
    }
}

/// One pixel request; true when answered 2xx within 5 s.
async fn send(
    sender: &mut SendRequest<Full<Bytes>>,
    addr: SocketAddr,
    args: &Args,
    n: u64,
) -> bool {
    let exchange = async {
        let req = Request::get(format!(
            "/p.gif?site={}&e=pageview&run={}&n={n}",
            args.site, args.run
        ))
        .header("host", addr.to_string())
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) pixelpipe-chaos",
        )
        .body(Full::new(Bytes::new()))
        .ok()?;
        sender.ready().await.ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let ok = resp.status().is_success();
        resp.into_body().collect().await.ok()?;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), exchange).await,
        Ok(Some(true))
    )
}
