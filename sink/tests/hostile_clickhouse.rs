//! The sink against a ClickHouse that misbehaves: a fault-injecting TCP proxy in front of the real
//! server answers errors, hangs, or cuts inserts off, and the sink must keep each batch, retry it,
//! count why, commit nothing meanwhile, and store every row exactly once when the server is
//! well again.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::kafka::unique_topic;
use common::*;
use pixelpipe_common::wire;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with a connection, chosen when it is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mode {
    /// Forwards bytes both ways to the real server. Such connections are cut when the mode
    /// changes, so a client's pooled keep-alive connection cannot carry on past a switch.
    Pass,
    /// Reads the whole request and answers 500 with a ClickHouse exception, never forwarding.
    Error500,
    /// Reads the request and never answers; the connection stays open until the client leaves.
    Hang,
    /// Reads the request head and the start of its body, then closes the connection.
    CloseMidRequest,
}

/// Requests the proxy saw, per mode: all of them, and the `INSERT`s among them.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    requests: u32,
    inserts: u32,
}

struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    seen: Arc<Mutex<HashMap<Mode, Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: String, mode: Mode) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(mode);
        let seen: Arc<Mutex<HashMap<Mode, Seen>>> = Arc::default();
        let counts = seen.clone();
        let task = tokio::spawn(async move {
            let mut rx = rx;
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                // Seen, so that the connection's copy wakes only on a later change.
                let mode = *rx.borrow_and_update();
                let (rx, counts, upstream) = (rx.clone(), counts.clone(), upstream.clone());
                tokio::spawn(async move {
                    // A connection ends with an I/O error whenever the sink gives up on it.
                    let _ = serve(client, mode, rx, counts, upstream).await;
                });
            }
        });
        Proxy {
            addr,
            mode: tx,
            seen,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }

    fn seen(&self, mode: Mode) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .get(&mode)
            .copied()
            .unwrap_or_default()
    }

    /// Waits until `ready` holds of what `mode` saw; fails after 60 s.
    async fn wait_seen(&self, mode: Mode, what: &str, ready: impl Fn(Seen) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(self.seen(mode)) {
            assert!(
                Instant::now() < deadline,
                "{mode:?}: {what} never happened ({:?})",
                self.seen(mode)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HTTP/1.1 request head as far as the proxy needs it.
struct Head {
    insert: bool,
    chunked: bool,
    content_length: u64,
}

/// Reads a request head; `None` when the client closed the connection first.
async fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    // The clickhouse client sends the statement in the URL: `?...&query=INSERT+INTO+...`.
    let insert = line.to_ascii_uppercase().contains("QUERY=INSERT");
    let (mut chunked, mut content_length) = (false, 0);
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let lower = line.trim_end().to_ascii_lowercase();
        if lower.is_empty() {
            break;
        }
        if let Some(v) = lower.strip_prefix("transfer-encoding:") {
            chunked = v.contains("chunked");
        }
        if let Some(v) = lower.strip_prefix("content-length:") {
            content_length = v.trim().parse().unwrap_or(0);
        }
    }
    Ok(Some(Head {
        insert,
        chunked,
        content_length,
    }))
}

/// Reads and drops `n` bytes.
async fn skip(r: &mut BufReader<TcpStream>, n: u64) -> std::io::Result<()> {
    let copied =
        tokio::io::copy(&mut AsyncReadExt::take(&mut *r, n), &mut tokio::io::sink()).await?;
    if copied < n {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// Reads and drops the request body.
async fn drain_body(r: &mut BufReader<TcpStream>, head: &Head) -> std::io::Result<()> {
    if !head.chunked {
        return skip(r, head.content_length).await;
    }
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await?;
        let size = line.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        skip(r, size + 2).await?;
    }
}

fn count(seen: &Mutex<HashMap<Mode, Seen>>, mode: Mode, head: &Head) {
    let mut seen = seen.lock().unwrap();
    let s = seen.entry(mode).or_default();
    s.requests += 1;
    s.inserts += u32::from(head.insert);
}

async fn serve(
    client: TcpStream,
    mode: Mode,
    mut changed: watch::Receiver<Mode>,
    seen: Arc<Mutex<HashMap<Mode, Seen>>>,
    upstream: String,
) -> std::io::Result<()> {
    if mode == Mode::Pass {
        let mut client = client;
        let mut server = TcpStream::connect(upstream).await?;
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut server) => { r?; }
            // Dropping both ends closes them.
            _ = changed.changed() => {}
        }
        return Ok(());
    }
    let mut r = BufReader::new(client);
    let Some(head) = read_head(&mut r).await? else {
        return Ok(());
    };
    count(&seen, mode, &head);
    match mode {
        Mode::Pass => unreachable!("handled above"),
        Mode::Error500 => {
            drain_body(&mut r, &head).await?;
            let body = "Code: 241, e.displayText() = DB::Exception: Memory limit (total) exceeded: \
                        would use 9.31 GiB (attempt to allocate chunk of 4194304 bytes), maximum: 9.31 GiB\n";
            let response = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain; charset=UTF-8\r\n\
                 X-ClickHouse-Exception-Code: 241\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let client = r.get_mut();
            client.write_all(response.as_bytes()).await?;
            client.shutdown().await?;
        }
        Mode::Hang => {
            // Take whatever comes, answer nothing, until the client gives up and closes.
            let mut buf = vec![0u8; 64 * 1024];
            while r.read(&mut buf).await? > 0 {}
        }
        Mode::CloseMidRequest => {
            // Some of the body, then the connection is gone (unread bytes make it a reset).
            let _ = r.fill_buf().await?;
        }
    }
    Ok(())
}

/// The offset the sink's group has committed for partition 0 of `topic` (-1001: none yet), as
/// the broker has it.
fn committed(group: &str, topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", common::kafka::brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, 0);
    let offsets = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    match offsets.elements()[0].offset() {
        Offset::Offset(o) => o,
        _ => -1001,
    }
}

/// Waits until the group's committed offset reaches `want`; returns the last one seen.
async fn wait_committed(group: &str, topic: &str, want: i64) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (g, t) = (group.to_owned(), topic.to_owned());
        let got = tokio::task::spawn_blocking(move || committed(&g, &t))
            .await
            .unwrap();
        if got >= want || Instant::now() >= deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `n` hits of `site`, numbered from `first`, and their event ids.
fn hits(site: &str, first: u64, n: u64) -> (Vec<Vec<u8>>, BTreeSet<String>) {
    let payloads: Vec<Vec<u8>> = (first..first + n).map(|i| encoded_hit(site, i)).collect();
    let ids = payloads
        .iter()
        .map(|p| wire::decode(p).unwrap().event_id.to_string())
        .collect();
    (payloads, ids)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs the local broker and ClickHouse: deploy/local/test.sh starts them"
)]
async fn a_clickhouse_that_errs_hangs_or_cuts_inserts_off_is_retried_without_commits_or_losses() {
    const PER_PHASE: u64 = 40;
    let topic = unique_topic("hostile");
    create_topics(&topic, 1).await;
    let prefix = format!("{}_", unique("hostile"));
    let url = clickhouse_url();
    let table = format!("pixelpipe.{prefix}hits");
    let upstream = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();

    // The server hangs from the start: the version check must time out and be tried again.
    let proxy = Proxy::start(upstream, Mode::Hang).await;
    let mut config = sink_config(&topic, &prefix).with_clickhouse(&proxy.url());
    config.clickhouse.insert_timeout_ms = 1_000;
    config.retry.max_backoff_ms = 500;
    let group = config.kafka.group_id.clone();
    let sink = RunningSink::start(config);
    proxy
        .wait_seen(Mode::Hang, "a second version check after a hung one", |s| {
            s.requests >= 2
        })
        .await;
    assert_eq!(proxy.seen(Mode::Hang).inserts, 0, "nothing consumed yet");

    // Well again: the sink migrates and stores.
    proxy.set(Mode::Pass);
    let (payloads, _) = hits("pass", 0, PER_PHASE);
    let t = topic.clone();
    tokio::task::spawn_blocking(move || produce(&t, &payloads))
        .await
        .unwrap();
    let mut total = PER_PHASE;
    assert_eq!(
        wait_for(
            &url,
            &format!("SELECT uniqExact(event_id) FROM {table} WHERE site_id = 'pass'"),
            PER_PHASE,
            Duration::from_secs(60)
        )
        .await,
        PER_PHASE
    );
    assert_eq!(
        wait_committed(&group, &topic, total as i64).await,
        total as i64
    );

    for (mode, site, cause) in [
        (Mode::Error500, "error500", "clickhouse_error"),
        (Mode::Hang, "hang", "clickhouse_timeout"),
        (Mode::CloseMidRequest, "close", "clickhouse_connection"),
    ] {
        let retries = format!("pixelpipe_sink_insert_retries_total{{cause=\"{cause}\"}}");
        let retries_before = sink.metric(&retries).await;
        let inserts_before = proxy.seen(mode).inserts;
        proxy.set(mode);
        let (payloads, ids) = hits(site, total, PER_PHASE);
        let t = topic.clone();
        tokio::task::spawn_blocking(move || produce(&t, &payloads))
            .await
            .unwrap();

        // The batch is tried, refused, and tried again.
        proxy
            .wait_seen(mode, "a retried insert", |s| {
                s.inserts >= inserts_before + 2
            })
            .await;
        assert!(
            sink.wait_metric(&retries, retries_before + 2.0).await >= retries_before + 2.0,
            "{mode:?}: retries are counted as {cause}"
        );
        // Nothing of it is stored or committed while the server misbehaves.
        assert_eq!(
            number(
                &url,
                &format!("SELECT count() FROM {table} WHERE site_id = '{site}'")
            )
            .await,
            0,
            "{mode:?}"
        );
        let g = group.clone();
        let t = topic.clone();
        assert_eq!(
            tokio::task::spawn_blocking(move || committed(&g, &t))
                .await
                .unwrap(),
            total as i64,
            "{mode:?}: no commit past the stored rows"
        );

        // Well again: exactly this phase's rows appear, and then their offsets are committed.
        proxy.set(Mode::Pass);
        total += PER_PHASE;
        assert_eq!(
            wait_for(
                &url,
                &format!("SELECT uniqExact(event_id) FROM {table} WHERE site_id = '{site}'"),
                PER_PHASE,
                Duration::from_secs(60)
            )
            .await,
            PER_PHASE,
            "{mode:?}"
        );
        let stored: Vec<String> = ch(&url)
            .query(&format!(
                "SELECT DISTINCT toString(event_id) FROM {table} WHERE site_id = '{site}'"
            ))
            .fetch_all()
            .await
            .unwrap();
        assert_eq!(stored.into_iter().collect::<BTreeSet<_>>(), ids, "{mode:?}");
        assert_eq!(
            wait_committed(&group, &topic, total as i64).await,
            total as i64,
            "{mode:?}"
        );
    }

    // No row lost, none counted twice.
    let (rows, unique_ids): (u64, u64) = ch(&url)
        .query(&format!(
            "SELECT count(), uniqExact(event_id) FROM {table} FINAL"
        ))
        .fetch_one()
        .await
        .unwrap();
    assert_eq!((rows, unique_ids), (total, total));
    assert_eq!(
        sink.metric("pixelpipe_sink_batches_abandoned_total").await,
        0.0
    );
    sink.stop().await;
}
