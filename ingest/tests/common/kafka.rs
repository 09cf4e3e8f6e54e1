//! Helpers every integration test shares, the edge's and the sink's: the real broker, a real HTTP
//! client. Nothing here knows the edge or the sink, so both crates' tests include this file.
//!
//! The broker is the one `deploy/local/kafka.sh start` runs (`TEST_KAFKA_BROKERS`, default
//! 127.0.0.1:9092). Every test makes its own topic, so tests run in parallel.
#![allow(dead_code)]
// Test helpers: a failed step should panic with its location, like an assertion.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use pixelpipe_common::wire::{self, Hit};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};

pub fn brokers() -> String {
    std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A topic name no other test uses.
pub fn unique_topic(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("test.{test}.{}.{nanos}", std::process::id())
}

/// Creates `topic` with `partitions` on the test broker.
pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("admin client");
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics([&new], &opts)
        .await
        .expect("create_topics request (is the broker running? deploy/local/kafka.sh start)");
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
    }
}

/// Reads every hit on `topic` until `want` have arrived or `timeout` passed, then keeps reading
/// for `settle` to catch any extra (duplicate) messages.
pub fn read_hits(topic: &str, want: usize, timeout: Duration) -> Vec<Hit> {
    read_messages(topic, want, timeout)
        .iter()
        .flat_map(|(_, payload)| {
            wire::unpack(payload).map(|one| wire::decode(one).expect("every hit decodes"))
        })
        .collect()
}

/// Reads every message on `topic`, with its partition, until they pack `want` hits or `timeout`
/// passed, then keeps reading for two seconds to catch any extra (duplicate) messages.
pub fn read_messages(topic: &str, want: usize, timeout: Duration) -> Vec<(i32, Vec<u8>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", format!("reader-{topic}"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let (mut messages, mut hits) = (Vec::new(), 0);
    let deadline = Instant::now() + timeout;
    let mut settle_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline || settle_until.is_some_and(|s| now >= s) {
            break;
        }
        if let Some(msg) = consumer.poll(Duration::from_millis(200)) {
            let msg = msg.expect("consume");
            let payload = msg.payload().expect("payload").to_vec();
            hits += wire::hits_in(&payload);
            messages.push((msg.partition(), payload));
            if hits >= want && settle_until.is_none() {
                settle_until = Some(Instant::now() + Duration::from_secs(2));
            }
        }
    }
    messages
}

/// A response as read off the socket; a chunked body is decoded.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

/// One HTTP/1.1 request on a fresh connection, written by hand so the test sees exactly what a
/// client would.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: px.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() || method == "POST" {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = &raw[split + 4..];
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    HttpResponse {
        status,
        body: if chunked {
            dechunk(body)
        } else {
            body.to_vec()
        },
        head,
    }
}

/// An HTTP/1.1 chunked body's content (RFC 9112, section 7.1). ClickHouse and Go's servers
/// chunk answers whose length they do not know up front.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size_field = String::from_utf8_lossy(&raw[..eol]);
        let size = usize::from_str_radix(size_field.split(';').next().unwrap().trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
        raw = &raw[eol + 2 + size + 2..];
    }
    out
}

/// The value of custom property `key` of a hit; panics when it has none.
pub fn prop<'a>(hit: &'a Hit, key: &str) -> &'a str {
    hit.props
        .iter()
        .find(|(k, _)| k == key)
        .unwrap_or_else(|| panic!("no property {key} in {hit:?}"))
        .1
        .as_str()
}
