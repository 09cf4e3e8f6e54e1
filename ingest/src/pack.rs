//! Packing: several encoded hits into one Kafka message, grouped by the partition each hit's key
//! chooses. Fewer, larger messages cost the producer, the broker and the sink less per hit than
//! one message per hit (measured in docs/benchmarks.md).
//!
//! A keyed hit goes to partition `crc32(key) % partitions`: librdkafka's default partitioner
//! (`consistent_random`) makes the same choice for a keyed message, so a visitor's hits land on
//! the partition, and in the order, one message per hit would give them, packed or not. A pack is
//! therefore sent to an explicit partition and has no key. Hits without a key share one pack whose
//! partition librdkafka picks. Until the partition count is known, nothing is packed.
//!
//! This module only groups; the wire module owns the packed format ([`wire::pack`]) and the Kafka
//! producer sends what comes out. Pure: no I/O.

use crate::outbound::Encoded;
use crate::wire;

/// Hits bound for one message.
#[derive(Debug, Default)]
pub struct Pack {
    /// The partition, or `None` for librdkafka to choose (keyless hits).
    pub partition: Option<i32>,
    /// The packed message (`wire::pack` of each hit, in order).
    pub payload: Vec<u8>,
    /// Which hits of the batch it holds (indexes into [`Encoded`]), in order.
    pub hits: Vec<usize>,
    /// Each hit's own message key, in order: the message itself has none, and a hit whose
    /// delivery fails is spooled with its key, so replay puts it on its visitor's partition.
    pub keys: Keys,
}

impl Pack {
    fn clear(&mut self) {
        self.payload.clear();
        self.hits.clear();
        self.keys.clear();
    }
}

/// The message keys of a pack's hits, in order, in one buffer.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keys {
    bytes: Vec<u8>,
    /// Per hit, its key's range in `bytes`, or `None` for a keyless hit.
    ranges: Vec<Option<(u32, u32)>>,
}

impl Keys {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ranges.clear();
    }

    /// Appends the next hit's key.
    pub fn push(&mut self, key: Option<&[u8]>) {
        let range = key.map(|k| {
            let start = self.bytes.len();
            self.bytes.extend_from_slice(k);
            // A pack is at most `kafka.pack_max_bytes` of hits, far below 4 GiB.
            (start as u32, self.bytes.len() as u32)
        });
        self.ranges.push(range);
    }

    /// The `i`th hit's key; `None` for a keyless hit or past the end.
    pub fn get(&self, i: usize) -> Option<&[u8]> {
        let (start, end) = (*self.ranges.get(i)?)?;
        self.bytes.get(start as usize..end as usize)
    }
}

/// The partition librdkafka's `consistent_random` partitioner gives a keyed message: the key's
/// CRC-32 (IEEE, as zlib's) modulo the partition count. `partitions` must not be 0.
pub fn partition_for(key: &[u8], partitions: u32) -> i32 {
    // A u32 modulo a u32 partition count is below 2^31 for any count Kafka allows (an i32).
    (crc32fast::hash(key) % partitions) as i32
}

/// Groups a batch's hits into packs. Keeps one pack per partition while it fills, so its buffers
/// are reused batch to batch.
#[derive(Debug, Default)]
pub struct Packer {
    /// Index `p` for partition `p`; the last one for keyless hits.
    open: Vec<Pack>,
}

impl Packer {
    /// Packs every hit of `batch` for a topic of `partitions` partitions (above 0), at most
    /// `max_bytes` per pack (a hit larger than that travels alone), and hands each full pack,
    /// then every partly filled one, to `send`. Each hit is in exactly one pack.
    pub fn pack(
        &mut self,
        batch: &Encoded,
        partitions: u32,
        max_bytes: usize,
        mut send: impl FnMut(&Pack),
    ) {
        let keyless = partitions as usize;
        if self.open.len() != keyless + 1 {
            self.open = (0..=keyless).map(|_| Pack::default()).collect();
        }
        for (p, pack) in self.open.iter_mut().enumerate() {
            pack.partition = (p < keyless).then_some(p as i32);
            pack.clear();
        }
        for (i, (key, payload)) in batch.iter().enumerate() {
            let slot = key.map_or(keyless, |k| partition_for(k, partitions) as usize);
            let pack = &mut self.open[slot];
            if !pack.hits.is_empty() && pack.payload.len() + 1 + payload.len() > max_bytes {
                send(pack);
                pack.clear();
            }
            wire::pack(&mut pack.payload, payload);
            pack.hits.push(i);
            pack.keys.push(key);
        }
        for pack in self.open.iter().filter(|p| !p.hits.is_empty()) {
            send(pack);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Encoded;

    fn batch(hits: &[(Option<&str>, &str)]) -> Encoded {
        let mut e = Encoded::default();
        for (key, payload) in hits {
            e.push(key.map(str::as_bytes), payload.as_bytes());
        }
        e
    }

    fn packs(
        batch: &Encoded,
        partitions: u32,
        max_bytes: usize,
    ) -> Vec<(Option<i32>, String, Vec<usize>)> {
        let mut out = Vec::new();
        Packer::default().pack(batch, partitions, max_bytes, |p| {
            // Each hit's key travels with the pack, in order.
            for (n, &i) in p.hits.iter().enumerate() {
                assert_eq!(p.keys.get(n), batch.get(i).0);
            }
            out.push((
                p.partition,
                String::from_utf8(p.payload.clone()).unwrap(),
                p.hits.clone(),
            ))
        });
        out
    }

    /// The values librdkafka's `consistent_random` gives (rd_crc32, the IEEE CRC-32): checked
    /// against the broker's choice in tests/kafka_packing.rs as well.
    #[test]
    fn partitions_follow_the_keys_crc32() {
        assert_eq!(
            crc32fast::hash(b"123456789"),
            0xCBF4_3926,
            "the IEEE check value"
        );
        assert_eq!(partition_for(b"123456789", 4), (0xCBF4_3926u32 % 4) as i32);
        assert_eq!(partition_for(b"", 7), 0);
    }

    #[test]
    fn hits_group_by_partition_in_order_and_keyless_ones_together() {
        let keys: Vec<String> = (0..40).map(|i| format!("visitor-{i}")).collect();
        let hits: Vec<(Option<&str>, String)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| ((i % 5 != 0).then_some(k.as_str()), format!("{{\"n\":{i}}}")))
            .collect();
        let refs: Vec<(Option<&str>, &str)> = hits.iter().map(|(k, p)| (*k, p.as_str())).collect();
        let b = batch(&refs);
        let out = packs(&b, 3, 1 << 20);
        let mut seen: Vec<usize> = out.iter().flat_map(|(_, _, h)| h.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..40).collect::<Vec<_>>(), "every hit exactly once");
        for (partition, payload, idx) in &out {
            assert!(idx.windows(2).all(|w| w[0] < w[1]), "in batch order");
            let lines: Vec<&str> = payload.split('\n').collect();
            assert_eq!(lines.len(), idx.len());
            for (line, &i) in lines.iter().zip(idx) {
                assert_eq!(*line, refs[i].1);
                match (partition, refs[i].0) {
                    (Some(p), Some(k)) => assert_eq!(*p, partition_for(k.as_bytes(), 3)),
                    (None, None) => {}
                    other => panic!("hit {i} in the wrong pack: {other:?}"),
                }
            }
        }
        assert_eq!(out.len(), 4, "three partitions and the keyless pack");
    }

    #[test]
    fn packs_stay_under_the_limit_and_a_larger_hit_travels_alone() {
        let big = "x".repeat(50);
        let b = batch(&[
            (None, "aaaa"),
            (None, "bbbb"),
            (None, "cccc"),
            (None, &big),
            (None, "dd"),
        ]);
        let out = packs(&b, 2, 9);
        let payloads: Vec<&str> = out.iter().map(|(_, p, _)| p.as_str()).collect();
        assert_eq!(payloads, vec!["aaaa\nbbbb", "cccc", big.as_str(), "dd"]);
        assert!(out.iter().all(|(p, _, _)| p.is_none()));
    }

    #[test]
    fn a_packer_is_reused_across_batches_and_partition_counts() {
        let mut packer = Packer::default();
        let b = batch(&[(Some("a"), "1"), (Some("b"), "2")]);
        let mut n = 0;
        packer.pack(&b, 4, 1024, |p| n += p.hits.len());
        packer.pack(&b, 1, 1024, |p| {
            assert_eq!((p.partition, p.payload.as_slice()), (Some(0), &b"1\n2"[..]));
            n += p.hits.len()
        });
        assert_eq!(n, 4);
    }
}
