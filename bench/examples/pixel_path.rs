//! Runs a fixed number of pixel requests (or, with `beacon` after the count, `/collect` beacons of
//! two events each) through `Edge::handle`, for instruction counts that do not depend on how busy
//! the machine is (criterion's timings on a shared 2-core box do):
//!
//! ```sh
//! cargo build --release -p pixelpipe-bench --example pixel_path
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out target/release/examples/pixel_path 20000
//! callgrind_annotate /tmp/cg.out | head -20     # PROGRAM TOTALS / requests = instructions per request
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out target/release/examples/pixel_path 20000 beacon
//! ```
//!
//! Set-up (building the requests) is included in the total; run it twice with different counts and
//! take the difference to get the per-request figure alone.

// A measuring tool: a failed set-up should stop it loudly.
#![allow(clippy::unwrap_used)]

use pixelpipe_bench::{beacon_request, pixel_request};
use pixelpipe_ingest::testing::TempLedger;
use pixelpipe_ingest::Config;

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .map_or(10_000, |a| a.parse().expect("a request count"));
    let beacons = std::env::args().nth(2).is_some_and(|a| a == "beacon");
    let spool = TempLedger::new();
    let (edge, rx) = spool.edge(&Config::default(), 1 << 16);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let peer = "203.0.113.9".parse().unwrap();
    let mut served = 0u64;
    for i in (0..n).filter(|i| i % 10 != 9) {
        let resp = if beacons {
            runtime.block_on(edge.handle(beacon_request(i), peer))
        } else {
            runtime.block_on(edge.handle(pixel_request(i), peer))
        };
        served += u64::from(resp.status().is_success());
        while rx.try_recv().is_ok() {}
    }
    let what = if beacons { "beacon" } else { "pixel" };
    println!("{served} {what} requests served");
}
