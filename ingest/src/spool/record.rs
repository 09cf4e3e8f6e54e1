//! One spool record on disk: how it is laid out, its checksum, and reading it back from
//! arbitrary bytes without ever panicking.
//!
//! ```text
//! u32 LE  body length in bytes (the header's 8 bytes not included)
//! u32 LE  CRC32C (Castagnoli, as iSCSI and Kafka's record batches use) of the body
//! body:   u8      flags (bit 0: live, bit 1: has a key)
//!         u64 LE  when it was appended, milliseconds since the Unix epoch
//!         u32 LE  key length (0 without a key)
//!         key bytes, then the message: one hit as `wire` encoded it, never decoded here
//! ```
//!
//! This module knows bytes only; which records are settled is `spool`'s business.

/// Bytes before the body: its length and checksum.
pub const HEADER_BYTES: usize = 8;
/// Bytes of the body before the key: flags, time, key length.
const FIXED_BODY_BYTES: usize = 1 + 8 + 4;
/// A body longer than this is taken for a corrupt length, not a record: a hit is kilobytes at
/// most (`[limits]`), and an unreadable length cannot be skipped safely.
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

const FLAG_LIVE: u8 = 1;
const FLAG_KEY: u8 = 2;

/// A record, borrowed from the bytes it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Written before the hit was handed to Kafka (`durability = "disk"`): the process that
    /// wrote it settles it from its delivery report, so replay in the same process skips it.
    pub live: bool,
    /// When it was appended, milliseconds since the Unix epoch.
    pub appended_ms: u64,
    /// The Kafka message key.
    pub key: Option<&'a [u8]>,
    /// The Kafka message value: the encoded hit.
    pub payload: &'a [u8],
}

impl Record<'_> {
    /// Bytes this record takes on disk.
    pub fn encoded_len(&self) -> usize {
        HEADER_BYTES + FIXED_BODY_BYTES + self.key.map_or(0, <[u8]>::len) + self.payload.len()
    }

    /// Appends the record's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        let key = self.key.unwrap_or_default();
        let body_len = FIXED_BODY_BYTES + key.len() + self.payload.len();
        out.extend_from_slice(&u32::try_from(body_len).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        let flags =
            if self.live { FLAG_LIVE } else { 0 } | if self.key.is_some() { FLAG_KEY } else { 0 };
        out.push(flags);
        out.extend_from_slice(&self.appended_ms.to_le_bytes());
        out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(self.payload);
        let crc = crc32c::crc32c(&out[start + HEADER_BYTES..]);
        out[start + 4..start + HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
    }
}

/// What the bytes at the start of a buffer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, intact record, and how many bytes it took.
    Record(Record<'a>, usize),
    /// A record whose checksum or layout is wrong; skip `skip` bytes to the next one. When the
    /// length itself is implausible, `skip` is the rest of the buffer.
    Corrupt {
        /// Bytes to skip.
        skip: usize,
    },
    /// The buffer ends inside a record: a write cut short by a crash.
    Torn,
    /// Nothing left.
    End,
}

/// Reads the record at the start of `buf`. Never panics, whatever the bytes.
pub fn decode(buf: &[u8]) -> Decoded<'_> {
    if buf.is_empty() {
        return Decoded::End;
    }
    let Some((header, rest)) = buf.split_first_chunk::<HEADER_BYTES>() else {
        return Decoded::Torn;
    };
    let body_len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(FIXED_BODY_BYTES..=MAX_BODY_BYTES).contains(&body_len) {
        return Decoded::Corrupt { skip: buf.len() };
    }
    let Some(body) = rest.get(..body_len) else {
        return Decoded::Torn;
    };
    let skip = HEADER_BYTES + body_len;
    if crc32c::crc32c(body) != crc {
        return Decoded::Corrupt { skip };
    }
    let Some((fixed, rest)) = body.split_first_chunk::<FIXED_BODY_BYTES>() else {
        return Decoded::Corrupt { skip };
    };
    let flags = fixed[0];
    let mut ms = [0; 8];
    ms.copy_from_slice(&fixed[1..9]);
    let key_len = u32::from_le_bytes([fixed[9], fixed[10], fixed[11], fixed[12]]) as usize;
    if flags & !(FLAG_LIVE | FLAG_KEY) != 0
        || key_len > rest.len()
        || (flags & FLAG_KEY == 0 && key_len != 0)
    {
        return Decoded::Corrupt { skip };
    }
    let (key, payload) = rest.split_at(key_len);
    Decoded::Record(
        Record {
            live: flags & FLAG_LIVE != 0,
            appended_ms: u64::from_le_bytes(ms),
            key: (flags & FLAG_KEY != 0).then_some(key),
            payload,
        },
        skip,
    )
}
