//! The hit as it travels through Kafka: its fields and its one encoding.
//!
//! This module is the only owner of the wire format. The edge encodes with [`encode`], the sink
//! decodes with [`decode`]; nobody else serialises a [`Hit`]. It does not know where a hit comes
//! from (the edge's `hit` module) nor where it goes (the edge's batchers, the sink).
//!
//! A hit's encoding is one JSON object, UTF-8, with a `schema_version` field. JSON is chosen over a
//! binary format because any Kafka tool (`kcat`, a dead-letter replay, a second consumer) can read
//! it without this crate, and because the encoding cost sits in the batcher threads, off the
//! request path; lz4 on the producer takes most of the size overhead back. Absent optional fields
//! are left out rather than written as `null`.
//!
//! A Kafka message carries one hit or several (a *packed* message): the hits' encodings joined by
//! a newline, i.e. JSON Lines, which `jq` and most log tools read as they are. [`pack`] writes one,
//! [`unpack`] splits one. serde_json escapes every control character inside a string, so an
//! encoded hit never contains a newline and the split is exact. Each hit in a message is decoded,
//! checked and dead-lettered on its own. A message of one hit is byte for byte what one hit per
//! message always was, so this build reads messages from edges of either kind; an older sink
//! reads a packed message as malformed and dead-letters it (replayable once it is upgraded).
//!
//! Compatibility rule: adding an optional field keeps the version; removing or changing the meaning
//! of a field bumps [`SCHEMA_VERSION`], and a decoder rejects versions it does not know. Fields a
//! decoder does not know are ignored, so an older sink reads a newer hit as it did before the field
//! existed, and a newer sink reads an older hit with the field absent. The enumerated fields
//! (`transport`, `signature`, `user_agent_class`) are read strictly: a value this build does not
//! know makes the message undecodable, so it is dead-lettered (and replayable) rather than stored
//! as something it is not. A new value therefore reaches the sinks before any edge writes it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::classes::Class;

/// The schema version this build writes and the only one it reads.
pub const SCHEMA_VERSION: u16 = 1;

/// The kinds (`Hit::kind`) the pipeline itself gives a meaning to. Any other valid name is a
/// custom kind, stored and counted like these.
pub mod kind {
    /// A page view: the kind of a hit that names none.
    pub const PAGEVIEW: &str = "pageview";
    /// An email open; opens too soon after a signed send time are classed as machines.
    pub const OPEN: &str = "open";
    /// A click through `GET /c`, when the click names no kind.
    pub const CLICK: &str = "click";
    /// A conversion; a site may require conversions to be signed.
    pub const CONVERSION: &str = "conversion";
}

/// How the hit reached the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// `GET`/`HEAD /p.gif` (and `/c`): an image request from a page, email or ad.
    Pixel,
    /// `POST /collect`: a JSON body, typically from `navigator.sendBeacon`.
    Beacon,
}

impl Transport {
    /// Every transport, in declaration order (`as usize` indexes it).
    pub const ALL: [Transport; 2] = [Transport::Pixel, Transport::Beacon];

    /// The name on the wire, in metric labels and in the `transport` column: `pixel`, `beacon`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Pixel => "pixel",
            Transport::Beacon => "beacon",
        }
    }
}

/// The outcome of checking a URL's signature (the edge's `signing` module checks it). On the wire
/// as `valid`, `invalid`, `expired` or `unknown_key`; an unsigned hit has no `signature` field at
/// all, so [`Signature::Absent`] is never written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Signature {
    /// The URL has no `sig`: it is not signed at all.
    Absent,
    /// The MAC matches and the URL has not expired.
    Valid,
    /// Malformed or repeated signing parameters, or a MAC that does not match.
    Invalid,
    /// The MAC matches but `exp` is in the past.
    Expired,
    /// The URL names a key the ring does not hold (for example one retired by rotation).
    UnknownKey,
}

impl Signature {
    /// Every outcome, in declaration order (to pre-register metric labels).
    pub const ALL: [Signature; 5] = [
        Signature::Absent,
        Signature::Valid,
        Signature::Invalid,
        Signature::Expired,
        Signature::UnknownKey,
    ];

    /// The name on the wire, in metric labels and in the `signature` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Signature::Absent => "absent",
            Signature::Valid => "valid",
            Signature::Invalid => "invalid",
            Signature::Expired => "expired",
            Signature::UnknownKey => "unknown_key",
        }
    }
}

/// One recorded hit, as produced to Kafka.
///
/// Text fields are already bounded by the edge's limits; a field the edge had to drop or cut is
/// counted in [`Hit::cut_fields`] so an analyst can tell a complete hit from a trimmed one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// Wire schema version, always [`SCHEMA_VERSION`] when written by this build.
    pub schema_version: u16,
    /// Identity of the hit: a UUIDv7 made at the edge, time-ordered to the millisecond.
    pub event_id: Uuid,
    /// When the edge received the request, milliseconds since the Unix epoch (UTC).
    pub received_at_ms: u64,
    /// Which edge process received it (`edge_id` setting).
    pub edge_id: String,
    /// Pixel or beacon.
    pub transport: Transport,
    /// Hit kind (`e=`): `pageview`, `open`, `impression`, `conversion`, `click` or a custom name.
    pub kind: String,
    /// Site, app or mail sender the hit belongs to (`site=`).
    pub site_id: String,
    /// Client IP: the socket peer, or the forwarded address when the peer is a trusted proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ip: Option<IpAddr>,
    /// `User-Agent` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// `Referer` header: the page that loaded the pixel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referer: Option<String>,
    /// `Accept-Language` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept_language: Option<String>,
    /// `DNT` header value as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dnt: Option<String>,
    /// `Sec-GPC` header value as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sec_gpc: Option<String>,
    /// `Host` header (or the URI authority).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Request path, e.g. `/p.gif`.
    pub path: String,
    /// The pixel was fetched with `HEAD`: no browser renders a HEAD response, so it is a link
    /// checker, scanner or prefetcher, kept so that analysts can tell.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub head_request: bool,
    /// The browser said this is a prefetch or prerender (`Sec-Purpose`, `Purpose`, `X-Purpose`,
    /// `X-Moz`), not a view: nobody may ever see the page.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub prefetch: bool,
    /// Page or document URL (`url=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The page's own referrer as seen by a script (`ref=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page_referrer: Option<String>,
    /// Page title (`title=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// The site's own user id (`uid=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// Campaign (`campaign=` or `utm_campaign=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    /// Traffic source (`source=` or `utm_source=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Medium (`medium=` or `utm_medium=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub medium: Option<String>,
    /// Ad or link content (`content=` or `utm_content=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Search term (`term=` or `utm_term=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
    /// A/B test variant (`variant=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Email message or send id (`msg=`), for open tracking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Monetary or numeric value of a conversion (`value=`), finite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// ISO 4217 currency code of `value` (`currency=`), upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Every other parameter, in request order, as bounded key/value pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub props: Vec<(String, String)>,
    /// Country of the client IP (ISO 3166-1 alpha-2), from the GeoIP city database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo_country: Option<String>,
    /// First-level subdivision (ISO 3166-2 code without the country), e.g. `ENG`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo_region: Option<String>,
    /// City name (English).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo_city: Option<String>,
    /// Autonomous system number of the client IP, from the GeoIP ASN database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// Organisation of that autonomous system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_org: Option<String>,
    /// Cookieless visitor id: keyed hash of (daily salt, site, IP, user agent); absent when the
    /// hit was anonymised or the policy has it off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visitor_id: Option<String>,
    /// Keyed daily hash of the client IP, when the site's privacy policy is `hash` (the address
    /// itself is then absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_hash: Option<String>,
    /// The request carried the opt-out cookie (`/optout`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub opted_out: bool,
    /// The visitor sent a privacy signal (GPC/DNT) answered with `anonymous`: IP, user id and
    /// user agent were removed at the edge.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymized: bool,
    /// What the request's user agent said about the client, decided at the edge just before the
    /// privacy policy removed it ([`crate::classes::by_user_agent_header`]): set only on an
    /// `anonymized` hit whose user agent matched a rule or was missing, e.g.
    /// `{"class":"bot","reason":"http_library"}` or `{"class":"bot","reason":"no_user_agent"}`.
    /// One of a small fixed set, so it identifies no one, and the sink classes the hit by it.
    /// `no_user_agent` came later than the other reasons: a sink older than it dead-letters such
    /// a hit (see the compatibility rule above), so sinks are upgraded first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent_class: Option<Class>,
    /// What the edge found when it checked the URL's signature (`kid`/`exp`/`sig`): `valid`,
    /// `invalid`, `expired` or `unknown_key`; absent when the URL was not signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
    /// When the email carrying this pixel was sent (`st=`, ms since the epoch). Only set when the
    /// URL's signature is valid, so a sender's clock can be trusted to flag opens that come too
    /// soon after sending to be a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at_ms: Option<u64>,
    /// A conversion on a site that requires signed conversions arrived without a valid signature:
    /// stored, but never to be counted as verified.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unverified: bool,
    /// How many fields the edge dropped or shortened for this hit (bad encoding, limits).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cut_fields: u16,
}

fn is_zero(n: &u16) -> bool {
    *n == 0
}

/// Why bytes from Kafka are not a hit this build can read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The message carries a schema version this build does not read.
    #[error("unsupported schema_version {found} (this build reads {SCHEMA_VERSION})")]
    UnsupportedVersion {
        /// The version found in the message.
        found: u16,
    },
    /// The bytes are not a JSON hit object.
    #[error("malformed hit: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// Appends the encoding of `hit` to `buf`.
pub fn encode(hit: &Hit, buf: &mut Vec<u8>) {
    // Serialising plain structs and strings into a Vec cannot fail.
    serde_json::to_writer(buf, hit).expect("a Hit always serialises");
}

/// Separates the hits of a packed message.
pub const SEPARATOR: u8 = b'\n';

/// Appends one hit's encoding (from [`encode`]) to a message being packed.
pub fn pack(message: &mut Vec<u8>, hit: &[u8]) {
    if !message.is_empty() {
        message.push(SEPARATOR);
    }
    message.extend_from_slice(hit);
}

/// The hits' encodings in a message, in the order packed. A newline at the very end is allowed
/// (JSON Lines writers add one) and yields nothing; any other empty piece is yielded, so the
/// caller can refuse it. An empty message yields one empty piece.
pub fn unpack(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = match message.split_last() {
        Some((&SEPARATOR, rest)) => rest,
        _ => message,
    };
    body.split(|b| *b == SEPARATOR)
}

/// How many hits a message packs (the pieces [`unpack`] yields).
pub fn hits_in(message: &[u8]) -> usize {
    unpack(message).count()
}

/// Decodes one hit's encoding (one piece of [`unpack`]).
pub fn decode(bytes: &[u8]) -> Result<Hit, WireError> {
    #[derive(Deserialize)]
    struct VersionOnly {
        schema_version: u16,
    }
    match serde_json::from_slice::<Hit>(bytes) {
        Ok(hit) if hit.schema_version == SCHEMA_VERSION => Ok(hit),
        Ok(hit) => Err(WireError::UnsupportedVersion {
            found: hit.schema_version,
        }),
        Err(err) => match serde_json::from_slice::<VersionOnly>(bytes) {
            // A future version may change fields; name the version, not the first field error.
            Ok(v) if v.schema_version != SCHEMA_VERSION => Err(WireError::UnsupportedVersion {
                found: v.schema_version,
            }),
            _ => Err(WireError::Malformed(err)),
        },
    }
}

/// A complete hit, every field set, for tests and benches of other modules and crates (feature
/// `test-util`).
#[cfg(any(test, feature = "test-util"))]
pub mod testing {
    use super::*;

    /// A hit with every field set to a plausible value.
    pub fn sample_hit() -> Hit {
        Hit {
            schema_version: SCHEMA_VERSION,
            event_id: Uuid::parse_str("01890a5d-ac96-774b-bcce-b302099a8057")
                .expect("a valid UUID"),
            received_at_ms: 1_700_000_000_123,
            edge_id: "edge-1".into(),
            transport: Transport::Pixel,
            kind: "open".into(),
            site_id: "shop".into(),
            client_ip: Some("2001:db8::1".parse().expect("an IPv6 address")),
            user_agent: Some("Mozilla/5.0".into()),
            referer: Some("https://shop.example/".into()),
            accept_language: Some("de-DE,de;q=0.9".into()),
            dnt: Some("1".into()),
            sec_gpc: Some("1".into()),
            host: Some("px.example".into()),
            path: "/p.gif".into(),
            head_request: true,
            prefetch: true,
            url: Some("https://shop.example/a?b=c".into()),
            page_referrer: Some("https://search.example/".into()),
            title: Some("Ünïcödé \"quoted\"".into()),
            user_id: Some("u-42".into()),
            campaign: Some("spring".into()),
            source: Some("newsletter".into()),
            medium: Some("email".into()),
            content: Some("hero".into()),
            term: Some("shoes".into()),
            variant: Some("B".into()),
            message_id: Some("m-1".into()),
            value: Some(19.99),
            currency: Some("EUR".into()),
            props: vec![
                ("color".into(), "red".into()),
                ("color".into(), "blue".into()),
            ],
            geo_country: Some("GB".into()),
            geo_region: Some("ENG".into()),
            geo_city: Some("London".into()),
            asn: Some(1221),
            as_org: Some("Telstra Pty Ltd".into()),
            visitor_id: Some("ffeeddccbbaa99887766554433221100".into()),
            ip_hash: Some("00112233445566778899aabbccddeeff".into()),
            anonymized: true,
            user_agent_class: Some(Class {
                class: crate::classes::TrafficClass::Bot,
                reason: "http_library",
            }),
            opted_out: true,
            signature: Some(Signature::Valid),
            sent_at_ms: Some(1_699_999_990_000),
            unverified: true,
            cut_fields: 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::sample_hit as full_hit;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Free-text fields of any content round-trip exactly.
        #[test]
        fn any_text_round_trips(
            site in any::<String>(), url in any::<String>(), ua in any::<String>(),
            props in proptest::collection::vec((any::<String>(), any::<String>()), 0..6),
            value in proptest::option::of(-1e15f64..1e15),
        ) {
            let mut hit = full_hit();
            hit.site_id = site;
            hit.url = Some(url);
            hit.user_agent = Some(ua);
            hit.props = props;
            hit.value = value;
            let mut buf = Vec::new();
            encode(&hit, &mut buf);
            prop_assert_eq!(decode(&buf).unwrap(), hit);
        }

        /// Arbitrary bytes, and every cut of a real hit, get an answer, never a panic.
        #[test]
        fn any_bytes_decode_or_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512), cut in 0usize..2000) {
            let _ = decode(&bytes);
            let mut buf = Vec::new();
            encode(&full_hit(), &mut buf);
            let cut = cut.min(buf.len());
            prop_assert!(cut == buf.len() || decode(&buf[..cut]).is_err());
        }
    }

    #[test]
    fn round_trip_keeps_every_field() {
        let hit = full_hit();
        let mut buf = Vec::new();
        encode(&hit, &mut buf);
        assert_eq!(decode(&buf).unwrap(), hit);
    }

    #[test]
    fn absent_options_are_left_out_and_read_back_as_none() {
        let mut hit = full_hit();
        hit.client_ip = None;
        hit.value = None;
        hit.props.clear();
        hit.cut_fields = 0;
        let mut buf = Vec::new();
        encode(&hit, &mut buf);
        let text = std::str::from_utf8(&buf).unwrap();
        assert!(!text.contains("client_ip") && !text.contains("null") && !text.contains("props"));
        assert_eq!(decode(&buf).unwrap(), hit);
    }

    #[test]
    fn other_versions_are_named_not_guessed() {
        let mut hit = full_hit();
        hit.schema_version = 2;
        let mut buf = Vec::new();
        encode(&hit, &mut buf);
        let err = decode(&buf).unwrap_err();
        assert!(
            matches!(err, WireError::UnsupportedVersion { found: 2 }),
            "{err}"
        );
        // A future version whose fields no longer fit is still reported by version.
        let err = decode(br#"{"schema_version":9,"kind":7}"#).unwrap_err();
        assert!(
            matches!(err, WireError::UnsupportedVersion { found: 9 }),
            "{err}"
        );
    }

    #[test]
    fn signatures_keep_their_wire_strings() {
        for (signature, text) in [
            (Signature::Valid, "valid"),
            (Signature::Invalid, "invalid"),
            (Signature::Expired, "expired"),
            (Signature::UnknownKey, "unknown_key"),
        ] {
            let mut hit = full_hit();
            hit.signature = Some(signature);
            let mut buf = Vec::new();
            encode(&hit, &mut buf);
            let json = std::str::from_utf8(&buf).unwrap();
            assert!(json.contains(&format!(r#""signature":"{text}""#)), "{json}");
            assert_eq!(signature.as_str(), text);
            assert_eq!(decode(&buf).unwrap().signature, Some(signature));
        }
        let mut buf = Vec::new();
        encode(&full_hit(), &mut buf);
        let json = String::from_utf8(buf).unwrap();
        let json = json.replace(r#""signature":"valid""#, r#""signature":"revoked""#);
        assert!(
            matches!(decode(json.as_bytes()), Err(WireError::Malformed(_))),
            "an unknown outcome is not guessed"
        );
    }

    #[test]
    fn the_user_agent_class_is_optional_both_ways_and_read_strictly() {
        // A hit written before the field existed reads as one without it.
        let old = br#"{"schema_version":1,"event_id":"01890a5d-ac96-774b-bcce-b302099a8057",
            "received_at_ms":1700000000123,"edge_id":"e","transport":"pixel","kind":"open",
            "site_id":"s","path":"/p.gif","anonymized":true}"#;
        assert_eq!(decode(old).unwrap().user_agent_class, None);
        // A field this build does not know is ignored: that is how a sink older than a field
        // reads the hits of newer edges.
        let mut buf = Vec::new();
        encode(&full_hit(), &mut buf);
        let json = String::from_utf8(buf).unwrap();
        assert!(
            json.contains(r#""user_agent_class":{"class":"bot","reason":"http_library"}"#),
            "{json}"
        );
        let newer = json.replacen('{', r#"{"a_field_from_the_future":{"x":[1]},"#, 1);
        assert_eq!(decode(newer.as_bytes()).unwrap(), full_hit());
        // A class and reason no rule of this build gives is not guessed.
        let unknown = json.replace(r#""reason":"http_library""#, r#""reason":"new_library""#);
        assert!(
            matches!(decode(unknown.as_bytes()), Err(WireError::Malformed(_))),
            "an unknown reason is dead-lettered, not stored as something else"
        );
    }

    #[test]
    fn transports_keep_their_wire_strings() {
        for t in Transport::ALL {
            let mut hit = full_hit();
            hit.transport = t;
            let mut buf = Vec::new();
            encode(&hit, &mut buf);
            let json = std::str::from_utf8(&buf).unwrap();
            assert!(
                json.contains(&format!(r#""transport":"{}""#, t.as_str())),
                "{json}"
            );
        }
    }

    #[test]
    fn packed_hits_come_back_in_order_and_each_decodes() {
        let (mut a, mut b) = (full_hit(), full_hit());
        a.title = Some("line one\nline two".into());
        b.kind = "open".into();
        let mut message = Vec::new();
        for hit in [&a, &b] {
            let mut one = Vec::new();
            encode(hit, &mut one);
            pack(&mut message, &one);
        }
        assert_eq!(hits_in(&message), 2);
        let back: Vec<Hit> = unpack(&message).map(|h| decode(h).unwrap()).collect();
        assert_eq!(back, vec![a.clone(), b]);
        // One hit packed alone is exactly its encoding: old and new messages read alike.
        let (mut alone, mut one) = (Vec::new(), Vec::new());
        encode(&a, &mut one);
        pack(&mut alone, &one);
        assert_eq!(alone, one);
    }

    #[test]
    fn unpacking_keeps_empty_pieces_but_one_final_newline() {
        let pieces = |m: &[u8]| unpack(m).map(|p| p.to_vec()).collect::<Vec<_>>();
        assert_eq!(pieces(b"{}\n{}\n"), vec![b"{}".to_vec(), b"{}".to_vec()]);
        assert_eq!(
            pieces(b"{}\n\n{}"),
            vec![b"{}".to_vec(), vec![], b"{}".to_vec()]
        );
        assert_eq!(pieces(b""), vec![Vec::<u8>::new()]);
        assert_eq!(pieces(b"\n"), vec![Vec::<u8>::new()]);
        assert_eq!(hits_in(b"{}\n\n"), 2);
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"\xff\xfe",
            br#"{"schema_version":1}"#,
        ] {
            assert!(
                matches!(decode(bad), Err(WireError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
