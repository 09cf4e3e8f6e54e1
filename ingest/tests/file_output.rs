//! The real edge with `output = "file"`: pixels and beacons sent over HTTP become one JSON line
//! each in the hit files, every line a hit the wire format decodes, and a clean stop finishes the
//! file. Needs no broker.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use pixelpipe_ingest::{run, Config, Listeners, Output};
use tokio::sync::oneshot;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_become_lines_in_the_hit_files() {
    let mut config = test_config("unused");
    config.output = Output::File;
    config.file.dir = spool_dir().join("hits");
    config.kafka.brokers = "127.0.0.1:1".into();
    let dir = config.file.dir.clone();
    let mut second = config.clone();
    second.spool.dir = spool_dir();
    let listeners = Listeners::bind(&config).unwrap();
    let addr = listeners.public_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let edge = tokio::spawn(run(config, listeners, async {
        let _ = stopped.await;
    }));
    tokio::task::spawn_blocking(move || {
        for i in 0..20 {
            let r = http(
                addr,
                "GET",
                &format!("/p.gif?site=s&e=open&n={i}"),
                &[],
                b"",
            );
            assert_eq!(r.status, 200);
        }
        let beacon = br#"[{"site":"s","e":"signup","n":"20"},{"site":"s","n":"21"}]"#;
        assert_eq!(http(addr, "POST", "/collect", &[], beacon).status, 204);
        let ready = http(addr, "GET", "/readyz", &[], b"");
        assert_eq!(
            ready.status, 200,
            "a writable file is ready: {}",
            ready.head
        );
    })
    .await
    .unwrap();
    // A second edge on the same `file.dir` is refused at start, naming it; the first one's
    // live file is left alone (all its lines are counted below).
    let listeners = Listeners::bind(&second).unwrap();
    let refused = run(second, listeners, async {}).await.err().unwrap();
    let refused = refused.to_string();
    assert!(
        refused.contains("file.dir") && refused.contains("in use by another process"),
        "{refused}"
    );
    stop.send(()).unwrap();
    let report = edge.await.unwrap().unwrap();
    assert_eq!((report.accepted, report.delivered), (22, 22));

    let mut seen: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if name == pixelpipe_ingest::dir_lock::LOCK_FILE {
            continue;
        }
        assert!(name.ends_with(".jsonl"), "finished at stop: {name}");
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let hit = pixelpipe_ingest::wire::decode(line.as_bytes()).unwrap();
            assert_eq!(hit.site_id, "s");
            seen.push(prop(&hit, "n").parse().unwrap());
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..22).collect::<Vec<_>>(), "each hit once");
}

#[test]
fn a_bad_file_setting_is_named_at_start() {
    let mut config = Config {
        output: Output::File,
        ..Config::default()
    };
    config.file.rotate_bytes = 1;
    let e = pixelpipe_common::layers::Validate::validate(&config)
        .unwrap_err()
        .to_string();
    assert!(e.contains("file.rotate_bytes"), "{e}");
}
