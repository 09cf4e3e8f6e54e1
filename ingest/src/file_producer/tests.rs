use super::*;
use crate::testing::TempLedger;

fn config(dir: &Path) -> FileConfig {
    FileConfig {
        dir: dir.to_owned(),
        rotate_bytes: 4096,
        flush_interval_ms: 10,
        buffer_bytes: 1024,
    }
}

/// The hit files in `dir` (every file but the lock), by name.
fn hit_files(dir: &Path) -> Vec<fs::DirEntry> {
    fs::read_dir(dir)
        .unwrap()
        .map(Result::unwrap)
        .filter(|e| e.file_name() != crate::dir_lock::LOCK_FILE)
        .collect()
}

/// The finished files in `dir`, by name, and the lines of each.
fn files(dir: &Path) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<_> = hit_files(dir)
        .into_iter()
        .map(|e| {
            let text = fs::read_to_string(e.path()).unwrap();
            (
                e.file_name().into_string().unwrap(),
                text.lines().map(str::to_owned).collect(),
            )
        })
        .collect();
    out.sort();
    out
}

fn payload(i: usize) -> Vec<u8> {
    format!(r#"{{"n":{i},"pad":"{}"}}"#, "x".repeat(90)).into_bytes()
}

#[test]
fn every_hit_is_one_line_in_rotated_files_and_each_is_delivered() {
    let t = TempLedger::new();
    let dir = t.dir().join("hits");
    let producer = FileProducer::new(&config(&dir), t.ledger()).unwrap();
    for i in 0..100 {
        producer
            .send(Some(b"key"), &payload(i), Origin::Memory)
            .unwrap();
        if i % 10 == 9 {
            // A file is rotated after the write that fills it.
            producer.flush(Duration::from_secs(1));
        }
    }
    assert!(producer.connected());
    drop(producer);
    let files = files(&dir);
    assert!(files.len() >= 2, "rotated at 4096 bytes: {}", files.len());
    let mut lines = Vec::new();
    for (name, file_lines) in &files {
        assert!(
            name.starts_with("hits-") && name.ends_with(".jsonl"),
            "finished at exit: {name}"
        );
        lines.extend(file_lines.iter().cloned());
    }
    let want: Vec<String> = (0..100)
        .map(|i| String::from_utf8(payload(i)).unwrap())
        .collect();
    assert_eq!(lines, want, "every hit once, in order, the key not written");
    let report = t.metrics().report();
    assert_eq!(report.delivered, 100);
}

#[test]
fn lines_are_written_within_the_flush_interval_without_a_flush() {
    let t = TempLedger::new();
    let dir = t.dir().join("hits");
    let producer = FileProducer::new(&config(&dir), t.ledger()).unwrap();
    producer.send(None, b"{\"a\":1}", Origin::Memory).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.metrics().report().delivered < 1 {
        assert!(Instant::now() < deadline, "never written");
        std::thread::sleep(Duration::from_millis(5));
    }
    let part: Vec<_> = hit_files(&dir)
        .into_iter()
        .map(|e| e.file_name().into_string().unwrap())
        .collect();
    assert_eq!(part.len(), 1);
    assert!(part[0].ends_with(".jsonl.part"), "{part:?}");
    assert_eq!(
        fs::read_to_string(dir.join(&part[0])).unwrap(),
        "{\"a\":1}\n"
    );
    drop(producer);
}

#[test]
fn a_part_file_left_by_a_killed_edge_is_finished_at_start() {
    let t = TempLedger::new();
    let dir = t.dir().join("hits");
    fs::create_dir_all(&dir).unwrap();
    let left = dir.join("hits-00000000000000000007.jsonl.part");
    fs::write(&left, "{\"a\":1}\n").unwrap();
    fs::write(dir.join("notes.txt.part"), "not ours").unwrap();
    let producer = FileProducer::new(&config(&dir), t.ledger()).unwrap();
    assert!(!left.exists());
    assert_eq!(
        fs::read_to_string(dir.join("hits-00000000000000000007.jsonl")).unwrap(),
        "{\"a\":1}\n"
    );
    assert!(dir.join("notes.txt.part").exists(), "only our own files");
    drop(producer);
}

/// A write that fails (here: the directory is gone, so no file can be opened) fails every hit
/// it held, and the ledger spools each for replay; nothing is lost.
#[test]
fn a_failed_write_sends_its_hits_to_the_spool() {
    let t = TempLedger::new();
    let dir = t.dir().join("hits");
    let producer = FileProducer::new(&config(&dir), t.ledger()).unwrap();
    fs::remove_dir_all(&dir).unwrap();
    fs::write(&dir, "a file where the directory was").unwrap();
    for i in 0..3 {
        producer
            .send(Some(b"k"), &payload(i), Origin::Memory)
            .unwrap();
    }
    producer.flush(Duration::from_secs(1));
    assert!(!producer.connected());
    let report = t.metrics().report();
    assert_eq!((report.delivered, report.spooled), (0, 3));
    assert_eq!(t.spool().stats().records, 3);
    let batch = t.spool().next_replay().unwrap().unwrap();
    let replayed: Vec<_> = crate::spool::scan(&batch.bytes)
        .0
        .into_iter()
        .map(|r| (r.key.map(<[u8]>::to_vec), r.payload.to_vec()))
        .collect();
    let want: Vec<_> = (0..3).map(|i| (Some(b"k".to_vec()), payload(i))).collect();
    assert_eq!(replayed, want, "each hit with its key");
    drop(producer);
}

/// A second edge on the same `file.dir` would finish (rename) the first one's live `.part` file:
/// it is refused at start, naming the setting and the directory.
#[test]
fn a_directory_is_one_edge_s() {
    let t = TempLedger::new();
    let dir = t.dir().join("hits");
    let first = FileProducer::new(&config(&dir), t.ledger()).unwrap();
    first.send(None, b"{\"a\":1}", Origin::Memory).unwrap();
    first.flush(Duration::from_secs(1));
    let live = || {
        hit_files(&dir)
            .iter()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".jsonl.part"))
            .count()
    };
    assert_eq!(live(), 1);
    let err = FileProducer::new(&config(&dir), t.ledger())
        .err()
        .expect("a second producer on the same directory fails")
        .to_string();
    assert!(
        err.contains("file.dir")
            && err.contains(&dir.display().to_string())
            && err.contains("in use by another process"),
        "{err}"
    );
    assert_eq!(live(), 1, "the first edge's file is untouched");
    drop(first);
    // Once the first is gone, the directory can be taken again.
    drop(FileProducer::new(&config(&dir), t.ledger()).unwrap());
}

#[test]
fn settings_are_checked_by_name() {
    for (c, named) in [
        (
            FileConfig {
                dir: PathBuf::new(),
                ..FileConfig::default()
            },
            "file.dir",
        ),
        (
            FileConfig {
                rotate_bytes: 10,
                ..FileConfig::default()
            },
            "file.rotate_bytes",
        ),
        (
            FileConfig {
                flush_interval_ms: 0,
                ..FileConfig::default()
            },
            "file.flush_interval_ms",
        ),
    ] {
        let e = c.check().unwrap_err().to_string();
        assert!(e.contains(named), "{e}");
    }
    assert!(FileConfig::default().check().is_ok());
}
