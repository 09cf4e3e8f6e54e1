//! From a Kafka message to the rows the sink writes: for each hit it packs, a decoded, checked
//! [`HitRow`], or a [`BadMessage`] that says why not.
//!
//! Decoding and unpacking are `pixelpipe_common::wire`'s alone; this module only maps a decoded hit
//! onto columns and checks the values a column cannot hold. Each hit of a packed message is judged
//! on its own: one bad hit costs only itself. Pure: no I/O.

use std::net::IpAddr;

use clickhouse::Row;
use pixelpipe_common::classes::TrafficClass;
use pixelpipe_common::wire::{self, Hit, WireError};
use serde::{Serialize, Serializer};
use uuid::Uuid;

use crate::enrich::Enricher;

/// One row of `<prefix>hits`. Field order and names are the insert's column list; the types are
/// chosen to encode identically on 18.16 and modern servers (see `schema`).
#[derive(Debug, Clone, PartialEq, Row, Serialize)]
pub struct HitRow {
    /// UUIDv7 from the edge; the row's identity for deduplication.
    #[serde(with = "clickhouse::serde::uuid")]
    pub event_id: Uuid,
    /// Seconds since the epoch (sub-second order is in `event_id`).
    pub received_at: u32,
    /// Wire schema version the hit was written with.
    pub schema_version: u16,
    /// Edge that received it.
    pub edge_id: String,
    /// `pixel` or `beacon`.
    pub transport: String,
    /// Hit kind.
    pub kind: String,
    /// Site id.
    pub site_id: String,
    /// IPv6 bytes in network order; IPv4 as `::ffff:a.b.c.d`; `::` when the edge had none.
    pub client_ip: [u8; 16],
    /// `User-Agent`.
    pub user_agent: String,
    /// `Referer`.
    pub referer: String,
    /// `Accept-Language`.
    pub accept_language: String,
    /// `DNT` header.
    pub dnt: String,
    /// `Sec-GPC` header.
    pub sec_gpc: String,
    /// `Host`.
    pub host: String,
    /// Request path.
    pub path: String,
    /// 1 when the pixel was fetched with HEAD.
    pub head_request: u8,
    /// Page URL.
    pub url: String,
    /// Page referrer.
    pub page_referrer: String,
    /// Page title.
    pub title: String,
    /// Site's user id.
    pub user_id: String,
    /// Campaign.
    pub campaign: String,
    /// Source.
    pub source: String,
    /// Medium.
    pub medium: String,
    /// Content.
    pub content: String,
    /// Term.
    pub term: String,
    /// A/B variant.
    pub variant: String,
    /// Email message id.
    pub message_id: String,
    /// Conversion value.
    pub value: Option<f64>,
    /// Currency of `value`.
    pub currency: String,
    /// Custom property names, parallel to `prop_values`.
    pub prop_keys: Vec<String>,
    /// Custom property values.
    pub prop_values: Vec<String>,
    /// Fields the edge cut.
    pub cut_fields: u16,
    /// Country (ISO 3166-1 alpha-2) from the edge's GeoIP lookup, else empty.
    pub geo_country: String,
    /// First-level subdivision code, else empty.
    pub geo_region: String,
    /// City name, else empty.
    pub geo_city: String,
    /// Autonomous system number, else 0.
    pub asn: u32,
    /// Autonomous system organisation, else empty.
    pub as_org: String,
    /// Cookieless visitor id from the edge, else empty.
    pub visitor_id: String,
    /// Keyed daily hash of the client IP (privacy `hash` mode), else empty.
    pub ip_hash: String,
    /// 1 when the edge anonymised the hit for a GPC/DNT signal.
    pub anonymized: u8,
    /// 1 when the browser marked the request as a prefetch or prerender.
    pub prefetch: u8,
    /// Browser family from the user agent (uap-core), else `Other`; empty without a user agent.
    pub browser: String,
    /// Browser version, `major[.minor[.patch]]`.
    pub browser_version: String,
    /// OS family.
    pub os: String,
    /// OS version.
    pub os_version: String,
    /// `desktop`, `mobile`, `tablet`, `bot` or `other`; empty without a user agent.
    pub device_type: String,
    /// `human`, `bot`, `email_proxy`, `scanner` or `prefetch` (see `enrich`).
    pub traffic_class: TrafficClass,
    /// The rule that gave `traffic_class`.
    pub class_reason: String,
    /// The URL's signature as the edge found it: `valid`, `invalid`, `expired`, `unknown_key`,
    /// or empty when unsigned.
    pub signature: String,
    /// Signed send time of the email (seconds since the epoch), else 0.
    pub sent_at: u32,
    /// 1 for a conversion that should have been signed and was not validly signed.
    pub unverified: u8,
    /// Lineage: Kafka partition.
    pub kafka_partition: i32,
    /// Lineage: Kafka offset.
    pub kafka_offset: i64,
    /// Lineage: the hit's place in its message, from 0 (a message packs one hit or several).
    pub kafka_index: u32,
}

/// Where a hit was read: its message's partition and offset, and its place in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lineage {
    /// Kafka partition.
    pub partition: i32,
    /// Kafka offset of the message.
    pub offset: i64,
    /// Place in the message, from 0.
    pub index: u32,
}

/// One row of `<prefix>bad_hits`, and a dead-letter message.
#[derive(Debug, Clone, PartialEq, Row, Serialize)]
pub struct BadMessage {
    /// Source topic.
    pub kafka_topic: String,
    /// Source partition.
    pub kafka_partition: i32,
    /// Source offset.
    pub kafka_offset: i64,
    /// The hit's place in its message, from 0.
    pub kafka_index: u32,
    /// Why it is bad.
    pub reason: BadReason,
    /// The decoder's or checker's message.
    pub error: String,
    /// The hit's bytes as received (lossy UTF-8 for the table; the dead-letter topic keeps the
    /// bytes). One hit's, not its whole message's.
    pub payload: String,
    /// The hit's raw bytes.
    #[serde(skip)]
    pub raw: Vec<u8>,
}

impl BadMessage {
    /// A dead letter of `bytes` read at `at`. The `payload` column keeps the first
    /// [`TOO_LARGE_STORED_BYTES`] of what is too large to read; the dead-letter topic every byte.
    fn new(topic: &str, at: Lineage, reason: BadReason, error: String, bytes: &[u8]) -> BadMessage {
        let stored = match reason {
            BadReason::TooLarge | BadReason::TooManyHits => {
                &bytes[..bytes.len().min(TOO_LARGE_STORED_BYTES)]
            }
            _ => bytes,
        };
        BadMessage {
            kafka_topic: topic.to_owned(),
            kafka_partition: at.partition,
            kafka_offset: at.offset,
            kafka_index: at.index,
            reason,
            error,
            payload: String::from_utf8_lossy(stored).into_owned(),
            raw: bytes.to_vec(),
        }
    }
}

/// Why a message is dead-lettered (the `reason` column of `bad_hits`, the `pixelpipe.reason`
/// header on the dead-letter topic, the `reason` label of `pixelpipe_sink_dead_lettered_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadReason {
    /// No bytes at all: an empty or null payload (a tombstone), or an empty line in a packed
    /// message. The edge never writes one.
    Empty,
    /// A hit larger than `kafka.max_payload_bytes`, whatever it holds.
    TooLarge,
    /// A message packing more than [`MAX_HITS_PER_MESSAGE`] hits: dead-lettered whole, unread.
    TooManyHits,
    /// Not a JSON hit.
    Undecodable,
    /// A hit of a schema version this build does not read.
    UnsupportedVersion,
    /// A hit with a value no column can hold.
    OutOfRange,
}

impl BadReason {
    /// Every reason, in declaration order.
    pub const ALL: [BadReason; 6] = [
        BadReason::Empty,
        BadReason::TooLarge,
        BadReason::TooManyHits,
        BadReason::Undecodable,
        BadReason::UnsupportedVersion,
        BadReason::OutOfRange,
    ];

    /// The stored name and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            BadReason::Empty => "empty",
            BadReason::TooLarge => "too_large",
            BadReason::TooManyHits => "too_many_hits",
            BadReason::Undecodable => "undecodable",
            BadReason::UnsupportedVersion => "unsupported_version",
            BadReason::OutOfRange => "out_of_range",
        }
    }
}

impl Serialize for BadReason {
    /// As its name: in RowBinary, the same bytes as a `String` column holding it.
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// What one hit of a Kafka message became.
#[derive(Debug)]
pub enum Decoded {
    /// A hit to store.
    Hit(Box<HitRow>),
    /// A message to dead-letter.
    Bad(BadMessage),
}

/// How much of a `too_large` payload the `payload` column of `bad_hits` keeps (the dead-letter
/// topic keeps every byte): enough to see what it is.
pub const TOO_LARGE_STORED_BYTES: usize = 1024;

/// Decodes, checks and enriches every hit of one message, of any size (the consumer uses
/// [`decode_message`]).
pub fn decode(
    topic: &str,
    partition: i32,
    offset: i64,
    payload: &[u8],
    enricher: &mut Enricher,
) -> Vec<Decoded> {
    decode_message(topic, partition, offset, payload, usize::MAX, enricher)
}

/// The most hits one message may pack. An edge packs at most `kafka.pack_max_bytes` (64 KiB) of
/// hits of a few hundred bytes each, so a few hundred; a message of more is not an edge's, and is
/// dead-lettered whole rather than becoming that many rows (50 000 newlines would otherwise be
/// 50 000 dead letters).
pub const MAX_HITS_PER_MESSAGE: usize = 10_000;

/// Decodes, checks and enriches every hit a message packs ([`wire::unpack`]), in order: one
/// [`Decoded`] per hit, so a bad hit is dead-lettered alone. An empty message is one empty hit; a
/// message of more than [`MAX_HITS_PER_MESSAGE`] is one bad message, `too_many_hits`.
pub fn decode_message(
    topic: &str,
    partition: i32,
    offset: i64,
    payload: &[u8],
    max_hit_bytes: usize,
    enricher: &mut Enricher,
) -> Vec<Decoded> {
    let hits = wire::unpack(payload).take(MAX_HITS_PER_MESSAGE + 1).count();
    if hits > MAX_HITS_PER_MESSAGE {
        let at = Lineage {
            partition,
            offset,
            index: 0,
        };
        let error = format!(
            "a message packing more than {MAX_HITS_PER_MESSAGE} hits is not an edge's; \
             dead-lettered whole ({} bytes; bad_hits keeps the first {TOO_LARGE_STORED_BYTES})",
            payload.len()
        );
        return vec![Decoded::Bad(BadMessage::new(
            topic,
            at,
            BadReason::TooManyHits,
            error,
            payload,
        ))];
    }
    wire::unpack(payload)
        .zip(0u32..)
        .map(|(bytes, index)| {
            let at = Lineage {
                partition,
                offset,
                index,
            };
            decode_hit(topic, at, bytes, max_hit_bytes, enricher)
        })
        .collect()
}

/// Decodes, checks and enriches one hit's bytes. Bytes that are empty or longer than
/// `max_hit_bytes` are bad before any decoding.
pub fn decode_hit(
    topic: &str,
    at: Lineage,
    bytes: &[u8],
    max_hit_bytes: usize,
    enricher: &mut Enricher,
) -> Decoded {
    let bad = |reason: BadReason, error: String| {
        Decoded::Bad(BadMessage::new(topic, at, reason, error, bytes))
    };
    if bytes.is_empty() {
        return bad(
            BadReason::Empty,
            "empty payload (zero bytes, null, or an empty line): not a hit".into(),
        );
    }
    if bytes.len() > max_hit_bytes {
        return bad(
            BadReason::TooLarge,
            format!(
                "hit of {} bytes is larger than kafka.max_payload_bytes ({max_hit_bytes}); \
                 bad_hits keeps its first {TOO_LARGE_STORED_BYTES} bytes, the dead-letter topic all",
                bytes.len()
            ),
        );
    }
    match wire::decode(bytes) {
        Err(e @ WireError::UnsupportedVersion { .. }) => {
            bad(BadReason::UnsupportedVersion, e.to_string())
        }
        Err(e) => bad(BadReason::Undecodable, e.to_string()),
        Ok(hit) => match HitRow::from_hit(hit, at, enricher) {
            Ok(row) => Decoded::Hit(Box::new(row)),
            Err(why) => bad(BadReason::OutOfRange, why),
        },
    }
}

impl HitRow {
    /// Maps a decoded hit onto columns, with what `enricher` adds; `Err` names a value no column
    /// can hold.
    pub fn from_hit(hit: Hit, at: Lineage, enricher: &mut Enricher) -> Result<HitRow, String> {
        let secs = hit.received_at_ms / 1000;
        let received_at = u32::try_from(secs).ok().filter(|s| *s > 0).ok_or_else(|| {
            format!(
                "received_at_ms {} is outside DateTime's range",
                hit.received_at_ms
            )
        })?;
        if hit.site_id.is_empty() || hit.kind.is_empty() {
            return Err("site_id and kind must not be empty".into());
        }
        if hit.value.is_some_and(|v| !v.is_finite()) {
            return Err("value is not finite".into());
        }
        let client_ip = match hit.client_ip {
            Some(IpAddr::V4(v4)) => v4.to_ipv6_mapped().octets(),
            Some(IpAddr::V6(v6)) => v6.octets(),
            None => [0; 16],
        };
        let ua = hit.user_agent.as_deref().map(|ua| enricher.user_agent(ua));
        let class = enricher.classify(&hit, ua.as_deref());
        let ua = ua.as_deref().cloned().unwrap_or_default();
        let sent_at = hit
            .sent_at_ms
            .map_or(0, |ms| u32::try_from(ms / 1000).unwrap_or(0));
        let (prop_keys, prop_values) = hit.props.into_iter().unzip();
        let text = Option::unwrap_or_default;
        Ok(HitRow {
            event_id: hit.event_id,
            received_at,
            schema_version: hit.schema_version,
            edge_id: hit.edge_id,
            transport: hit.transport.as_str().to_owned(),
            kind: hit.kind,
            site_id: hit.site_id,
            client_ip,
            user_agent: text(hit.user_agent),
            referer: text(hit.referer),
            accept_language: text(hit.accept_language),
            dnt: text(hit.dnt),
            sec_gpc: text(hit.sec_gpc),
            host: text(hit.host),
            path: hit.path,
            head_request: u8::from(hit.head_request),
            url: text(hit.url),
            page_referrer: text(hit.page_referrer),
            title: text(hit.title),
            user_id: text(hit.user_id),
            campaign: text(hit.campaign),
            source: text(hit.source),
            medium: text(hit.medium),
            content: text(hit.content),
            term: text(hit.term),
            variant: text(hit.variant),
            message_id: text(hit.message_id),
            value: hit.value,
            currency: text(hit.currency),
            prop_keys,
            prop_values,
            cut_fields: hit.cut_fields,
            geo_country: text(hit.geo_country),
            geo_region: text(hit.geo_region),
            geo_city: text(hit.geo_city),
            asn: hit.asn.unwrap_or(0),
            as_org: text(hit.as_org),
            visitor_id: text(hit.visitor_id),
            ip_hash: text(hit.ip_hash),
            anonymized: u8::from(hit.anonymized),
            prefetch: u8::from(hit.prefetch),
            browser: ua.browser,
            browser_version: ua.browser_version,
            os: ua.os,
            os_version: ua.os_version,
            device_type: ua.device_type.to_owned(),
            traffic_class: class.class,
            class_reason: class.reason.to_owned(),
            signature: hit
                .signature
                .map_or_else(String::new, |s| s.as_str().to_owned()),
            sent_at,
            unverified: u8::from(hit.unverified),
            kafka_partition: at.partition,
            kafka_offset: at.offset,
            kafka_index: at.index,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit() -> Hit {
        let json = r#"{"schema_version":1,"event_id":"01890a5d-ac96-774b-bcce-b302099a8057","received_at_ms":1700000000123,
            "edge_id":"e","transport":"beacon","kind":"conversion","site_id":"s","client_ip":"192.0.2.1","path":"/collect",
            "value":9.5,"currency":"EUR","props":[["a","1"],["b","2"]],"cut_fields":1}"#;
        wire::decode(json.as_bytes()).unwrap()
    }

    fn at(partition: i32, offset: i64, index: u32) -> Lineage {
        Lineage {
            partition,
            offset,
            index,
        }
    }

    #[test]
    fn a_hit_maps_onto_columns() {
        let row =
            HitRow::from_hit(hit(), at(3, 42, 5), &mut crate::enrich::tests::shared()).unwrap();
        assert_eq!(row.received_at, 1_700_000_000);
        assert_eq!(row.transport, "beacon");
        assert_eq!(
            &row.client_ip[..12],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]
        );
        assert_eq!(&row.client_ip[12..], &[192, 0, 2, 1]);
        assert_eq!(
            (row.prop_keys.clone(), row.prop_values.clone()),
            (vec!["a".into(), "b".into()], vec!["1".into(), "2".into()])
        );
        assert_eq!(
            (row.value, row.currency.as_str(), row.cut_fields),
            (Some(9.5), "EUR", 1)
        );
        assert_eq!(
            (row.kafka_partition, row.kafka_offset, row.kafka_index),
            (3, 42, 5)
        );
        assert_eq!(row.user_agent, "", "absent text is empty");
        assert_eq!(
            (row.browser.as_str(), row.device_type.as_str()),
            ("", ""),
            "no user agent, nothing parsed"
        );
        assert_eq!(
            (row.traffic_class.as_str(), row.class_reason.as_str()),
            ("bot", "no_user_agent")
        );
        let mut h = hit();
        h.user_agent = Some(crate::enrich::tests::CHROME_WINDOWS.into());
        h.sent_at_ms = Some(1_699_999_000_500);
        h.signature = Some(wire::Signature::Valid);
        let row = HitRow::from_hit(h, at(0, 0, 0), &mut crate::enrich::tests::shared()).unwrap();
        assert_eq!(
            (
                row.browser.as_str(),
                row.os.as_str(),
                row.device_type.as_str()
            ),
            ("Chrome", "Windows", "desktop")
        );
        assert_eq!(
            (row.traffic_class.as_str(), row.class_reason.as_str()),
            ("human", "no_rule_matched")
        );
        assert_eq!(
            (row.sent_at, row.signature.as_str()),
            (1_699_999_000, "valid")
        );
    }

    #[test]
    fn bad_messages_say_why() {
        let mut enricher = crate::enrich::tests::shared();
        let mut reason =
            |payload: &[u8]| match decode_hit("t", at(0, 7, 0), payload, 4096, &mut enricher) {
                Decoded::Bad(b) => {
                    assert_eq!(
                        (b.kafka_topic.as_str(), b.kafka_offset, b.raw.as_slice()),
                        ("t", 7, payload)
                    );
                    b.reason.as_str()
                }
                Decoded::Hit(_) => "hit",
            };
        assert_eq!(reason(b""), "empty");
        assert_eq!(reason(b"\xff not json"), "undecodable");
        assert_eq!(reason(br#"{"schema_version":99}"#), "unsupported_version");
        let mut h = hit();
        h.schema_version = 99;
        let mut buf = Vec::new();
        wire::encode(&h, &mut buf);
        assert!(buf.starts_with(br#"{"schema_version":99,"#));
        assert_eq!(
            reason(&buf),
            "unsupported_version",
            "a whole hit of a later version"
        );
        let mut h = hit();
        h.received_at_ms = 5_000_000_000_000_000;
        buf.clear();
        wire::encode(&h, &mut buf);
        assert_eq!(reason(&buf), "out_of_range");
        let mut h = hit();
        h.site_id.clear();
        buf.clear();
        wire::encode(&h, &mut buf);
        assert_eq!(reason(&buf), "out_of_range");
        buf.clear();
        wire::encode(&hit(), &mut buf);
        assert_eq!(reason(&buf), "hit");
    }

    #[test]
    fn a_payload_over_the_limit_is_too_large_even_as_a_valid_hit() {
        let mut h = hit();
        h.props.push(("blob".into(), "x".repeat(5000)));
        let mut buf = Vec::new();
        wire::encode(&h, &mut buf);
        let mut enricher = crate::enrich::tests::shared();
        assert!(
            matches!(
                decode_hit("t", at(0, 1, 0), &buf, buf.len(), &mut enricher),
                Decoded::Hit(_)
            ),
            "at the limit it is read"
        );
        match decode_hit("t", at(0, 1, 0), &buf, buf.len() - 1, &mut enricher) {
            Decoded::Bad(b) => {
                assert_eq!(b.reason, BadReason::TooLarge);
                assert_eq!(b.raw, buf, "the dead-letter topic gets every byte");
                assert_eq!(b.payload.len(), TOO_LARGE_STORED_BYTES);
                assert_eq!(b.payload.as_bytes(), &buf[..TOO_LARGE_STORED_BYTES]);
                assert!(b.error.contains(&buf.len().to_string()), "{}", b.error);
            }
            Decoded::Hit(_) => panic!("over the limit"),
        }
    }

    /// A packed message: each hit is judged alone, in order, with its place in the message; a
    /// bad hit (here undecodable, empty, and too large) costs only itself.
    #[test]
    fn each_hit_of_a_packed_message_is_judged_alone() {
        let mut good = Vec::new();
        wire::encode(&hit(), &mut good);
        let mut big = hit();
        big.props.push(("blob".into(), "x".repeat(5000)));
        let mut too_large = Vec::new();
        wire::encode(&big, &mut too_large);
        let mut message = Vec::new();
        for piece in [&good[..], b"not json", b"", &too_large, &good] {
            message.extend_from_slice(piece);
            message.push(b'\n');
        }
        let mut enricher = crate::enrich::tests::shared();
        let out = decode_message("t", 2, 9, &message, 4096, &mut enricher);
        let seen: Vec<(u32, &str)> = out
            .iter()
            .map(|d| match d {
                Decoded::Hit(row) => {
                    assert_eq!((row.kafka_partition, row.kafka_offset), (2, 9));
                    (row.kafka_index, "hit")
                }
                Decoded::Bad(b) => {
                    assert_eq!((b.kafka_partition, b.kafka_offset), (2, 9));
                    (b.kafka_index, b.reason.as_str())
                }
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                (0, "hit"),
                (1, "undecodable"),
                (2, "empty"),
                (3, "too_large"),
                (4, "hit")
            ]
        );
        match &out[1] {
            Decoded::Bad(b) => assert_eq!(b.raw, b"not json", "a dead letter is the hit alone"),
            Decoded::Hit(_) => unreachable!(),
        }
        assert_eq!(
            decode_message("t", 0, 0, b"", 4096, &mut enricher).len(),
            1,
            "an empty message is one empty hit, dead-lettered"
        );
        // At the cap every piece is judged; one more and the message goes whole.
        let at_cap = vec![b'\n'; MAX_HITS_PER_MESSAGE];
        assert_eq!(
            decode_message("t", 0, 0, &at_cap, 4096, &mut enricher).len(),
            MAX_HITS_PER_MESSAGE
        );
        let over = vec![b'\n'; 50_000];
        match decode_message("t", 0, 0, &over, 4096, &mut enricher).as_slice() {
            [Decoded::Bad(b)] => {
                assert_eq!((b.reason, b.raw.len()), (BadReason::TooManyHits, 50_000));
            }
            other => panic!("{} results", other.len()),
        }
    }
}
