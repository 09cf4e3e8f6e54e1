//! `pixelpipe-loadgen`: sends tracking-pixel traffic to a running edge over keep-alive
//! connections and reports what came back: requests and hits sent, answers that were not 2xx,
//! and latency percentiles from an HDR histogram.
//!
//! - `--mix sample` (default): the sample mix of page views, opens, impressions, conversions and
//!   `/collect` beacons with real user agents (`pixelpipe_bench::sample_request`); `--mix pixel`:
//!   one pixel URL with six parameters, the one `bench/compare.sh` gives nginx and wrk.
//! - `--rate N`: a fixed N requests/s (open loop, like wrk2: each request has a due time, and its
//!   latency counts from then, so a stalled server is not hidden by requests never sent); `0`
//!   (default): as fast as the connections go.
//! - `--clickhouse-url URL --table T`: afterwards, waits until ClickHouse holds this run's rows
//!   (every request carries `run=<tag>`) and prints how many arrived of those answered 2xx.
//!
//! `pixelpipe-loadgen --addr 127.0.0.1:8080 --requests 200` (the local demo);
//! `pixelpipe-loadgen --mix pixel --rate 20000 --connections 64 --duration-s 10` (load).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;
use pixelpipe_bench::{connect, hits_in, sample_request, SampleRequest, USER_AGENTS};

/// Send tracking-pixel traffic to a pixelpipe edge and report what came back.
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
    /// Requests per second in all, at fixed intervals; 0: as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// What to send.
    #[arg(long, value_enum, default_value_t = Mix::Sample)]
    mix: Mix,
    /// Tag sent as `run=` with every hit (default: the start time), for the ClickHouse check.
    #[arg(long)]
    run: Option<String>,
    /// ClickHouse HTTP URL: after sending, count this run's rows there.
    #[arg(long, requires = "table")]
    clickhouse_url: Option<String>,
    /// Table of hits for --clickhouse-url, e.g. `pixelpipe.hits`.
    #[arg(long)]
    table: Option<String>,
    /// How long to wait for ClickHouse to hold every answered hit.
    #[arg(long, default_value_t = 120)]
    clickhouse_wait_s: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mix {
    /// Page views, email opens, ad impressions, conversions and beacons with real user agents.
    Sample,
    /// One pixel URL with six parameters.
    Pixel,
}

#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    hits_answered: AtomicU64,
    ok: AtomicU64,
    not_2xx: AtomicU64,
    failed: AtomicU64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Arc::new(Args::parse());
    let run = args.run.clone().unwrap_or_else(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        format!("lg{ms}")
    });
    let tally = Arc::new(Tally::default());
    let latency = Arc::new(Mutex::new(new_histogram()));
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.connections {
        let (args, run, tally, latency, next) = (
            args.clone(),
            run.clone(),
            tally.clone(),
            latency.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            connection(&args, &run, started, &next, &tally, &latency).await
        }));
    }
    for w in workers {
        w.await?.map_err(|e| e.to_string())?;
    }
    let secs = started.elapsed().as_secs_f64();
    let sent = tally.sent.load(Ordering::Relaxed);
    let h = latency.lock().map_err(|_| "a connection panicked")?.clone();
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "sent {sent} requests in {secs:.2} s ({:.0} req/s): {} answered 2xx carrying {} hits, {} answered otherwise, {} failed",
        sent as f64 / secs,
        tally.ok.load(Ordering::Relaxed),
        tally.hits_answered.load(Ordering::Relaxed),
        tally.not_2xx.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    println!(
        "latency ms{}: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        if args.rate > 0 {
            " (from each request's due time)"
        } else {
            ""
        },
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        h.max() as f64 / 1000.0
    );
    println!(
        "result requests={sent} rps={:.0} ok={} not_2xx={} failed={} p50_ms={:.3} p99_ms={:.3} run={run}",
        sent as f64 / secs,
        tally.ok.load(Ordering::Relaxed),
        tally.not_2xx.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
        ms(0.5),
        ms(0.99),
    );
    if let (Some(url), Some(table)) = (&args.clickhouse_url, &args.table) {
        let want = tally.hits_answered.load(Ordering::Relaxed);
        let stored = wait_for_rows(url, table, &run, want, args.clickhouse_wait_s).await?;
        println!("clickhouse: {stored} of {want} answered hits stored for run={run}");
        if stored != want {
            return Err(
                format!("{} answered hits are not in {table}", want.abs_diff(stored)).into(),
            );
        }
    }
    if tally.not_2xx.load(Ordering::Relaxed) + tally.failed.load(Ordering::Relaxed) > 0 {
        return Err("some requests were not answered 2xx".into());
    }
    Ok(())
}

/// 1 µs to 60 s, 3 significant digits.
fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// One keep-alive connection: takes the next request number, waits for its due time when a rate
/// is set, sends it, records the latency; reconnects after a failure.
async fn connection(
    args: &Args,
    run: &str,
    started: Instant,
    next: &AtomicU64,
    tally: &Tally,
    latency: &Mutex<Histogram<u64>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let deadline = started + Duration::from_secs(args.duration_s);
    let mut local = new_histogram();
    let mut sender: Option<SendRequest<Full<Bytes>>> = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if args.requests > 0 && i >= args.requests {
            break;
        }
        let due = if args.rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
            due
        } else {
            Instant::now()
        };
        if due >= deadline {
            break;
        }
        if sender.is_none() {
            sender = connect(args.addr).await;
        }
        let Some(s) = &mut sender else {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            tally.sent.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let status = send(s, request(args, run, i)?).await;
        let _ = local.record(due.elapsed().as_micros().max(1) as u64);
        tally.sent.fetch_add(1, Ordering::Relaxed);
        match status {
            Some(status) if (200..300).contains(&status) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                let hits = if args.mix == Mix::Sample {
                    hits_in(i)
                } else {
                    1
                };
                tally.hits_answered.fetch_add(hits, Ordering::Relaxed);
            }
            Some(_) => {
                tally.not_2xx.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
                sender = None;
            }
        }
    }
    latency.lock().map_err(|_| "poisoned")?.add(&local)?;
    Ok(())
}

fn request(
    args: &Args,
    run: &str,
    i: u64,
) -> Result<Request<Full<Bytes>>, Box<dyn std::error::Error + Send + Sync>> {
    let s = match args.mix {
        Mix::Sample => sample_request(i),
        Mix::Pixel => SampleRequest {
            method: "GET",
            target: PIXEL.into(),
            user_agent: USER_AGENTS[0],
            body: String::new(),
        },
    };
    let (target, body) = if s.method == "GET" {
        (format!("{}&run={run}", s.target), s.body)
    } else {
        // Each event of a beacon gets the tag as one more member.
        let tagged = s
            .body
            .replace(r#"{"site""#, &format!(r#"{{"run":"{run}","site""#));
        (s.target, tagged)
    };
    Ok(Request::builder()
        .method(s.method)
        .uri(target)
        .header("host", args.addr.to_string())
        .header("user-agent", s.user_agent)
        .header("content-type", "text/plain;charset=UTF-8")
        .body(Full::new(Bytes::from(body)))?)
}

/// The pixel URL of `--mix pixel` (the same as `bench/compare.sh`'s).
const PIXEL: &str = "/p.gif?site=bench.example&e=pageview&url=https%3A%2F%2Fbench.example%2Fa&campaign=spring&variant=B&uid=u42";

/// The answer's status, or `None` when the exchange failed or took over 10 s.
async fn send(sender: &mut SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Option<u16> {
    let exchange = async {
        sender.ready().await.ok()?;
        let resp = sender.send_request(req).await.ok()?;
        let status = resp.status().as_u16();
        resp.into_body().collect().await.ok()?;
        Some(status)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

/// Polls ClickHouse until `table` holds `want` rows tagged `run`, or `wait_s` pass; returns the
/// last count. Plain HTTP on the ClickHouse interface, so the load generator needs no client.
async fn wait_for_rows(
    url: &str,
    table: &str,
    run: &str,
    want: u64,
    wait_s: u64,
) -> Result<u64, Box<dyn std::error::Error>> {
    let sql = format!(
        "SELECT count() FROM {table} WHERE prop_values[indexOf(prop_keys, 'run')] = '{run}'"
    );
    let deadline = Instant::now() + Duration::from_secs(wait_s);
    loop {
        let count = query_count(url, &sql).await?;
        if count >= want || Instant::now() >= deadline {
            return Ok(count);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn query_count(url: &str, sql: &str) -> Result<u64, Box<dyn std::error::Error>> {
    let uri: hyper::Uri = url.parse()?;
    let authority = uri
        .authority()
        .ok_or("--clickhouse-url needs host:port")?
        .clone();
    let stream = tokio::net::TcpStream::connect(authority.as_str()).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::post("/")
        .header("host", authority.as_str())
        .body(Full::new(Bytes::from(sql.to_owned())))?;
    let resp = sender.send_request(req).await?;
    let ok = resp.status().is_success();
    let body = resp.into_body().collect().await?.to_bytes();
    let text = String::from_utf8_lossy(&body);
    if !ok {
        return Err(format!("ClickHouse: {}", text.trim()).into());
    }
    Ok(text.trim().parse()?)
}
