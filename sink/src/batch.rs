//! A batch: the rows of contiguous offset ranges, one range per partition, and the rule for when
//! it is written. Pure; the consumer loop owns the I/O.
//!
//! Because a batch covers whole offset ranges and is kept until it is written, a retry resends
//! exactly the same rows, and committing `last + 1` per partition never skips a row that is not
//! stored.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::config::BatchConfig;
use crate::row::{BadMessage, HitRow};

/// Rows waiting to be written.
#[derive(Debug, Default)]
pub struct Batch {
    /// Good rows, boxed: a row is over a kilobyte, and moving boxes keeps a 50 000-row batch's
    /// growth from copying the rows themselves.
    pub hits: Vec<Box<HitRow>>,
    /// Messages to dead-letter.
    pub bad: Vec<BadMessage>,
    /// Kafka payload bytes taken in.
    pub bytes: usize,
    /// Partition -> (first, last) offset taken.
    ranges: BTreeMap<i32, (i64, i64)>,
    started: Option<Instant>,
}

impl Batch {
    /// Notes that a whole message was taken in (after pushing each of its hits): its offset joins
    /// the batch's range, so it is committed once the batch is stored. Call for every message,
    /// whatever its hits became.
    pub fn took(&mut self, partition: i32, offset: i64, bytes: usize) {
        self.started.get_or_insert_with(Instant::now);
        self.bytes += bytes;
        let range = self.ranges.entry(partition).or_insert((offset, offset));
        range.1 = offset;
    }

    /// Adds a good row.
    pub fn push_hit(&mut self, row: Box<HitRow>) {
        self.hits.push(row);
    }

    /// Adds a hit to dead-letter.
    pub fn push_bad(&mut self, bad: BadMessage) {
        self.bad.push(bad);
    }

    /// Whether nothing has been taken in.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Rows taken in: hits to store and hits to dead-letter.
    pub fn len(&self) -> usize {
        self.hits.len() + self.bad.len()
    }

    /// Whether a size limit is reached.
    pub fn is_full(&self, limits: &BatchConfig) -> bool {
        self.len() >= limits.max_rows || self.bytes >= limits.max_bytes
    }

    /// When the batch must be written by age; `None` while empty.
    pub fn deadline(&self, limits: &BatchConfig) -> Option<Instant> {
        self.started
            .map(|s| s + Duration::from_millis(limits.max_age_ms))
    }

    /// Offsets to commit once the batch is stored: `last + 1` per partition.
    pub fn commit_offsets(&self) -> Vec<(i32, i64)> {
        self.ranges
            .iter()
            .map(|(p, (_, last))| (*p, last + 1))
            .collect()
    }

    /// Forgets the rows of partitions this consumer no longer owns: their new owner reads them
    /// again from the last commit, so they are neither lost nor committed twice.
    pub fn drop_partitions(&mut self, revoked: &[i32]) {
        if revoked.is_empty() {
            return;
        }
        self.hits.retain(|r| !revoked.contains(&r.kafka_partition));
        self.bad.retain(|b| !revoked.contains(&b.kafka_partition));
        self.ranges.retain(|p, _| !revoked.contains(p));
        if self.ranges.is_empty() {
            *self = Batch::default();
        }
    }

    /// Identifies the batch by its offset ranges: the same rows always give the same token, so a
    /// server with `insert_deduplication_token` drops a retried insert it already has.
    pub fn dedup_token(&self, topic: &str) -> String {
        let ranges: Vec<String> = self
            .ranges
            .iter()
            .map(|(p, (a, b))| format!("{p}:{a}-{b}"))
            .collect();
        format!("{topic}/{}", ranges.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::{decode, Decoded};

    fn hit_json(offset: i64) -> String {
        format!(
            r#"{{"schema_version":1,"event_id":"01890a5d-ac96-774b-bcce-b302099a{offset:04}","received_at_ms":1700000000123,
            "edge_id":"e","transport":"pixel","kind":"open","site_id":"s","path":"/p.gif"}}"#
        )
        .replace('\n', "")
    }

    /// Takes one message, as the consumer does: each hit it packs, then the message itself.
    fn take(b: &mut Batch, partition: i32, offset: i64, payload: &[u8]) {
        for d in decode(
            "t",
            partition,
            offset,
            payload,
            &mut crate::enrich::tests::shared(),
        ) {
            match d {
                Decoded::Hit(h) => b.push_hit(h),
                Decoded::Bad(bad) => b.push_bad(bad),
            }
        }
        b.took(partition, offset, payload.len());
    }

    fn good(b: &mut Batch, partition: i32, offset: i64) {
        take(b, partition, offset, hit_json(offset).as_bytes());
    }

    #[test]
    fn ranges_commit_offsets_and_tokens() {
        let mut b = Batch::default();
        assert!(b.is_empty() && b.deadline(&BatchConfig::default()).is_none());
        good(&mut b, 0, 10);
        good(&mut b, 1, 5);
        take(&mut b, 0, 11, b"junk");
        let packed = format!("{}\n{}", hit_json(12), hit_json(13));
        take(&mut b, 0, 12, packed.as_bytes());
        assert_eq!(b.commit_offsets(), vec![(0, 13), (1, 6)]);
        assert_eq!(b.dedup_token("hits"), "hits/0:10-12,1:5-5");
        assert_eq!((b.len(), b.hits.len(), b.bad.len()), (5, 4, 1));
        let one = hit_json(0).len();
        assert_eq!(b.bytes, 2 * one + 4 + (2 * one + 1));
        assert!(b.deadline(&BatchConfig::default()).is_some());
    }

    #[test]
    fn limits() {
        let one = hit_json(0).len();
        let limits = BatchConfig {
            max_rows: 3,
            max_bytes: 3 * one,
            max_age_ms: 1000,
        };
        let mut b = Batch::default();
        good(&mut b, 0, 1);
        good(&mut b, 0, 2);
        assert!(!b.is_full(&limits));
        take(&mut b, 0, 3, b"x");
        assert!(b.is_full(&limits), "rows, bad ones included");
        let mut b = Batch::default();
        take(
            &mut b,
            0,
            1,
            format!("{}\n{}", hit_json(1), hit_json(2)).as_bytes(),
        );
        assert!(!b.is_full(&limits));
        take(&mut b, 0, 2, b"xy");
        assert!(b.is_full(&limits), "bytes of whole messages");
    }

    #[test]
    fn revoked_partitions_are_forgotten() {
        let mut b = Batch::default();
        good(&mut b, 0, 1);
        good(&mut b, 1, 1);
        take(&mut b, 1, 2, b"junk");
        b.drop_partitions(&[1]);
        assert_eq!((b.hits.len(), b.bad.len()), (1, 0));
        assert_eq!(b.commit_offsets(), vec![(0, 2)]);
        b.drop_partitions(&[0]);
        assert!(b.is_empty() && b.deadline(&BatchConfig::default()).is_none());
    }
}
