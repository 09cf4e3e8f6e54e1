//! The spool's files: records round-trip and never panic on arbitrary bytes, torn and corrupt
//! records are skipped and counted, the cap holds, segments are deleted only when settled and
//! replayed, and a reopened spool replays what a previous run left, live records included.

use super::record::{decode, Decoded, Record};
use super::*;
use crate::testing::TempLedger;
use proptest::prelude::*;

fn config(dir: &Path) -> SpoolConfig {
    SpoolConfig {
        dir: dir.to_owned(),
        segment_bytes: 64 * 1024,
        max_bytes: 256 * 1024,
        ..SpoolConfig::default()
    }
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

fn payloads(batch: &ReplayBatch) -> Vec<Vec<u8>> {
    scan(&batch.bytes)
        .0
        .into_iter()
        .filter(|r| batch.recovered || !r.live)
        .map(|r| r.payload.to_vec())
        .collect()
}

proptest! {
    #[test]
    fn records_round_trip(
        live: bool,
        appended_ms: u64,
        key in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        payload in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let r = Record { live, appended_ms, key: key.as_deref(), payload: &payload };
        let mut buf = Vec::new();
        r.encode(&mut buf);
        prop_assert_eq!(buf.len(), r.encoded_len());
        prop_assert_eq!(decode(&buf), Decoded::Record(r, buf.len()));
        // Every cut of it is torn, never a record and never a panic.
        for cut in 1..buf.len() {
            prop_assert_eq!(decode(&buf[..cut]), Decoded::Torn);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_always_progress(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let (_, _) = scan(&bytes);
        match decode(&bytes) {
            Decoded::Record(_, n) | Decoded::Corrupt { skip: n } => prop_assert!(n > 0 && n <= bytes.len()),
            Decoded::Torn => prop_assert!(!bytes.is_empty()),
            Decoded::End => prop_assert!(bytes.is_empty()),
        }
    }

    #[test]
    fn a_flipped_bit_is_caught(payload in proptest::collection::vec(any::<u8>(), 1..512), bit in 0usize..4096) {
        let r = Record { live: false, appended_ms: 7, key: Some(b"k"), payload: &payload };
        let mut buf = Vec::new();
        r.encode(&mut buf);
        let bit = bit % (buf.len() * 8);
        buf[bit / 8] ^= 1 << (bit % 8);
        prop_assert!(!matches!(decode(&buf), Decoded::Record(got, _) if got == r));
    }
}

#[test]
fn corrupt_and_torn_records_are_skipped_and_counted() {
    let mut buf = Vec::new();
    for p in [&b"one"[..], b"two", b"three"] {
        Record {
            live: false,
            appended_ms: 1,
            key: None,
            payload: p,
        }
        .encode(&mut buf);
    }
    let second = Record {
        live: false,
        appended_ms: 1,
        key: None,
        payload: b"one",
    }
    .encoded_len();
    buf[second + 12] ^= 0xff; // inside "two"'s body
    buf.truncate(buf.len() - 2); // "three" torn
    let (records, corrupt) = scan(&buf);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].payload, b"one");
    assert_eq!(corrupt, 2);
}

#[test]
fn a_reopened_spool_replays_what_was_left_and_counts_damage() {
    let t = TempLedger::new();
    let dir = t.dir().join("spool");
    let metrics = Metrics::new();
    {
        let spool = Spool::open(&config(&dir), metrics.clone()).unwrap();
        spool
            .append([(Some(&b"k"[..]), &b"pending"[..])], Entry::Pending)
            .unwrap();
        spool
            .append(
                [(None, &b"live-1"[..]), (None, b"live-2")],
                Entry::WrittenAhead,
            )
            .unwrap();
        // Dropped without settling: as a kill -9 would leave it.
    }
    // A crash cut the last write short.
    let file = segment_files(&dir).pop().unwrap();
    let len = fs::metadata(&file).unwrap().len();
    File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 3)
        .unwrap();

    let metrics = Metrics::new();
    let spool = Spool::open(&config(&dir), metrics.clone()).unwrap();
    assert_eq!(spool.stats().records, 2);
    assert!(metrics
        .render()
        .contains("pixelpipe_ingest_spool_corrupt_records_total 1"));
    let batch = spool.next_replay().unwrap().unwrap();
    assert!(batch.recovered);
    assert_eq!(
        payloads(&batch),
        [b"pending".to_vec(), b"live-1".to_vec()],
        "live records of a previous run are replayed too"
    );
    spool.replayed(batch.segment, 2);
    spool.settle(batch.segment, Entry::Pending);
    spool.settle(batch.segment, Entry::Pending);
    assert_eq!(spool.sync().unwrap(), 1);
    assert_eq!(segment_files(&dir).len(), 1, "only the new active segment");
    assert_eq!(spool.stats(), Stats::default());
}

#[test]
fn a_segment_is_deleted_only_when_replayed_and_settled() {
    let t = TempLedger::new();
    let spool = t.spool();
    let seg = spool
        .append([(None, &b"a"[..]), (None, b"b")], Entry::Pending)
        .unwrap();
    let ahead = spool
        .append([(None, &b"c"[..])], Entry::WrittenAhead)
        .unwrap();
    assert_eq!(seg, ahead);
    assert_eq!(spool.stats().records, 3);
    assert!(spool.stats().oldest_appended_ms.is_some());

    // Replay catches up with the active segment: it is sealed and handed over; written-ahead
    // records are not replay's to send.
    let batch = spool.next_replay().unwrap().unwrap();
    assert_eq!(batch.segment, seg);
    assert!(!batch.recovered);
    assert_eq!(payloads(&batch), [b"a".to_vec(), b"b".to_vec()]);
    spool.replayed(seg, 2);
    spool.settle(seg, Entry::Pending);
    spool.settle(seg, Entry::Pending);
    assert_eq!(
        spool.sync().unwrap(),
        0,
        "the written-ahead record is in flight"
    );
    assert_eq!(
        spool.stats().oldest_appended_ms,
        None,
        "a hit in flight is not waiting"
    );
    spool.settle(seg, Entry::WrittenAhead);
    assert_eq!(spool.sync().unwrap(), 1);
    assert!(spool.next_replay().unwrap().is_none());
    assert_eq!(spool.stats(), Stats::default());
}

/// Damage inside this run's segment: the records replay could not read are settled when it is
/// done with the segment (and counted), so the segment does not stay forever; a length that
/// cannot be trusted costs the rest of the segment, and says so.
#[test]
fn records_damaged_in_this_run_are_counted_and_do_not_pin_the_segment() {
    let t = TempLedger::new();
    let spool = t.spool();
    let seg = spool
        .append(
            [
                (None, &b"one"[..]),
                (None, b"two"),
                (None, b"three"),
                (None, b"four"),
            ],
            Entry::Pending,
        )
        .unwrap();
    let one = Record {
        live: false,
        appended_ms: 0,
        key: None,
        payload: b"one",
    }
    .encoded_len() as u64;
    let file = segment_files(t.dir()).pop().unwrap();
    let f = File::options().write(true).open(&file).unwrap();
    // The second record's length field: implausibly large.
    std::os::unix::fs::FileExt::write_at(&f, &u32::MAX.to_le_bytes(), one).unwrap();
    let batch = spool.next_replay().unwrap().unwrap();
    assert_eq!(payloads(&batch), [b"one".to_vec()]);
    spool.replayed(seg, 1);
    spool.settle(seg, Entry::Pending);
    assert_eq!(spool.stats().records, 0);
    assert!(t
        .metrics()
        .render()
        .contains("pixelpipe_ingest_spool_corrupt_records_total 3"));
    assert_eq!(spool.sync().unwrap(), 1);
}

/// A hit already on disk whose replay fails is moved even when the spool is full: refusing it
/// would lose it, and its old segment gives the space back.
#[test]
fn moving_a_spooled_hit_ignores_the_cap() {
    let t = TempLedger::with(|c| {
        c.segment_bytes = 64 * 1024;
        c.max_bytes = 128 * 1024;
    });
    let spool = t.spool();
    let payload = vec![1u8; 1000];
    while spool
        .append([(None, payload.as_slice())], Entry::Pending)
        .is_ok()
    {}
    let before = spool.stats().records;
    assert!(matches!(
        spool.append([(None, payload.as_slice())], Entry::Pending),
        Err(AppendError::Full)
    ));
    let an_hour_ago = now_ms() - 3_600_000;
    spool
        .append(
            [(None, payload.as_slice())],
            Entry::Moved {
                since_ms: an_hour_ago,
            },
        )
        .unwrap();
    assert_eq!(spool.stats().records, before + 1);
    assert_eq!(
        spool.stats().oldest_appended_ms,
        Some(an_hour_ago),
        "a moved hit keeps its age"
    );
}

/// Only canonical names are segments: anything else in the directory is left alone.
#[test]
fn other_files_in_the_directory_are_left_alone() {
    let t = TempLedger::new();
    let dir = t.dir().join("other");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("1.seg"), b"not ours").unwrap();
    fs::write(dir.join("notes.txt"), b"x").unwrap();
    let spool = Spool::open(&config(&dir), Metrics::new()).unwrap();
    assert_eq!(spool.stats(), Stats::default());
    assert_eq!(fs::read(dir.join("1.seg")).unwrap(), b"not ours");
}

/// A file left behind under the next segment's name (a crash between creating it and using
/// it) is never appended to: the spool moves on to a free name.
#[test]
fn a_stray_segment_name_is_skipped() {
    let t = TempLedger::new();
    let spool = t.spool();
    let first = spool.append([(None, &b"a"[..])], Entry::Pending).unwrap();
    fs::write(segment_path(t.dir(), first + 1), b"stray").unwrap();
    let batch = spool.next_replay().unwrap().unwrap(); // seals `first`
    assert_eq!(batch.segment, first);
    let next = spool.append([(None, &b"b"[..])], Entry::Pending).unwrap();
    assert_eq!(next, first + 2);
    assert_eq!(
        fs::read(segment_path(t.dir(), first + 1)).unwrap(),
        b"stray"
    );
}

#[test]
fn the_cap_holds_and_segments_rotate() {
    let t = TempLedger::with(|c| {
        c.segment_bytes = 64 * 1024;
        c.max_bytes = 128 * 1024;
    });
    let spool = t.spool();
    let payload = vec![7u8; 1000];
    let mut appended = 0;
    loop {
        match spool.append([(None, payload.as_slice())], Entry::Pending) {
            Ok(_) => appended += 1,
            Err(AppendError::Full) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let stats = spool.stats();
    assert!(stats.bytes <= 128 * 1024, "{stats:?}");
    assert_eq!(stats.records, appended);
    assert!(segment_files(t.dir()).len() >= 2, "rotated at 64 KiB");
    assert!(spool.above_high_water());
    assert!(matches!(
        spool.append([(None, payload.as_slice())], Entry::Pending),
        Err(AppendError::Full)
    ));
}

#[test]
fn a_directory_is_one_process_s() {
    let t = TempLedger::new();
    let err = Spool::open(&config(t.dir()), Metrics::new())
        .err()
        .expect("second open fails")
        .to_string();
    assert!(err.contains("in use by another process"), "{err}");
    assert!(err.contains(&t.dir().display().to_string()), "{err}");
}

#[test]
fn settings_are_checked_by_name() {
    let bad = |f: fn(&mut SpoolConfig)| {
        let mut c = SpoolConfig::default();
        f(&mut c);
        c.check().unwrap_err().to_string()
    };
    assert!(bad(|c| c.max_bytes = c.segment_bytes).contains("spool.max_bytes"));
    assert!(bad(|c| c.segment_bytes = 10).contains("spool.segment_bytes"));
    assert!(bad(|c| c.fsync_interval_ms = 0).contains("spool.fsync_interval_ms"));
    assert!(bad(|c| c.high_water_percent = 0).contains("spool.high_water_percent"));
    assert!(bad(|c| c.replay_rate_hits_per_s = 0).contains("spool.replay_rate_hits_per_s"));
    assert!(bad(|c| c.dir = PathBuf::new()).contains("spool.dir"));
}
