//! Runs a fixed number of pixel requests through `Edge::handle`, for instruction counts that do
//! not depend on how busy the machine is (criterion's timings on a shared 2-core box do):
//!
//! ```sh
//! cargo build --release -p pixelpipe-bench --example pixel_path
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out target/release/examples/pixel_path 20000
//! callgrind_annotate /tmp/cg.out | head -20     # PROGRAM TOTALS / requests = instructions per request
//! ```
//!
//! Set-up (building the requests) is included in the total; run it twice with different counts and
//! take the difference to get the per-request figure alone.

// A measuring tool: a failed set-up should stop it loudly.
#![allow(clippy::unwrap_used)]

use pixelpipe_bench::pixel_request;
use pixelpipe_ingest::testing::TempLedger;
use pixelpipe_ingest::Config;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(10_000, |a| a.parse().expect("a request count"));
    let spool = TempLedger::new();
    let (edge, rx) = spool.edge(&Config::default(), 1 << 16);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let peer = "203.0.113.9".parse().unwrap();
    let mut served = 0u64;
    for i in (0..n).filter(|i| i % 10 != 9) {
        let req = pixel_request(i);
        let resp = runtime.block_on(edge.handle(req, peer));
        served += u64::from(resp.status().is_success());
        let _ = rx.try_recv();
    }
    println!("{served} pixel requests served");
}
