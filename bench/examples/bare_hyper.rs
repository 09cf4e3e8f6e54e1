//! The floor the edge is measured against (issue 11): a bare hyper 1.x HTTP/1.1 server on one
//! single-threaded runtime that answers every request with the edge's own pixel response (`response::gif()`: the 43-byte GIF
//! and its five headers) and hands
//! the query string, as an owned `String`, through a bounded crossbeam channel to one consumer
//! thread that drops it. No routing, parsing, validation, hit, privacy, encoding or output: what
//! the project's chosen stack costs per pixel before pixelpipe does any work.
//!
//! ```sh
//! cargo build --release -p pixelpipe-bench --example bare_hyper
//! taskset -c 0 target/release/examples/bare_hyper 127.0.0.1:18095 &
//! taskset -c 1 wrk -t1 -c64 -d8s 'http://127.0.0.1:18095/p.gif?site=a&e=pageview'
//! ```
//!
//! `bench/compare.sh` runs it beside nginx and the edge.

// A measuring tool: a failed set-up should stop it loudly.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;

/// The edge's allocator, so the floor and the edge are compared like for like.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use hyper_util::rt::TokioIo;

fn main() {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18095".to_owned());
    let (tx, rx) = crossbeam_channel::bounded::<String>(65_536);
    std::thread::spawn(move || for _query in rx {});
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&addr).await.unwrap();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let _ = tx.try_send(req.uri().query().unwrap_or("").to_owned());
                    let response = pixelpipe_ingest::response::gif();
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
