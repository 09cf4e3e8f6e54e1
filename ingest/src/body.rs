//! The bytes of a `/collect` body before they are read as JSON: its `Content-Encoding` undone
//! (gzip or deflate, with a bounded decoded size, so a decompression bomb costs at most the limit)
//! and a UTF-8 byte order mark dropped (RFC 8259 §8.1 lets a receiver ignore one).
//!
//! It does not read the body from the connection (`service`) nor parse the JSON (`hit`).

use std::io::Read;

use bytes::Bytes;
use hyper::header::HeaderValue;

use crate::response::RequestError;

/// The UTF-8 encoding of U+FEFF.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Undoes the body's `Content-Encoding` (`content_encoding`: every line of the header, in order) and drops a leading
/// byte order mark.
///
/// `identity` (or no header) passes the bytes through; `gzip` (also `x-gzip`, RFC 9110
/// §8.4.1.3; several members, RFC 1952 §2.2) and `deflate` (the zlib format, RFC 9110 §8.4.1.2)
/// are decoded with `flate2`. Several codings (`gzip, gzip`, or two header lines) are refused:
/// no browser or SDK sends them, and each would multiply the decoded size.
///
/// A body labelled `gzip` or `deflate` that starts like JSON (`{`, `[` or a byte order mark,
/// after any whitespace) is read as it is: compressed bytes never start so (a gzip stream starts
/// 0x1F 0x8B, a zlib stream with its method byte 0x?8), and clients that send such a label on
/// plain JSON exist; before the edge decoded bodies it took them.
///
/// # Errors
/// [`RequestError::UnsupportedEncoding`] for any other coding, or several;
/// [`RequestError::DecodedTooLarge`] when the decoded body would exceed `max_decoded_bytes`;
/// [`RequestError::BadEncoding`] when the bytes are not valid for their coding, or go on after
/// the compressed stream ends.
pub fn decode(
    content_encoding: &[HeaderValue],
    raw: Bytes,
    max_decoded_bytes: usize,
) -> Result<Bytes, RequestError> {
    let mut codings = Vec::new();
    for line in content_encoding {
        let line = line
            .to_str()
            .map_err(|_| RequestError::UnsupportedEncoding("(not ASCII)".into()))?;
        codings.extend(
            line.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty() && c != "identity"),
        );
    }
    let decoded = match codings.as_slice() {
        [] => raw,
        [one] if is_compression(one) && looks_like_json(&raw) => raw,
        [one] if one == "gzip" || one == "x-gzip" => inflate(
            flate2::bufread::MultiGzDecoder::new(&raw[..]),
            "gzip",
            max_decoded_bytes,
        )?,
        [one] if one == "deflate" => inflate(
            flate2::bufread::ZlibDecoder::new(&raw[..]),
            "deflate",
            max_decoded_bytes,
        )?,
        [one] => return Err(RequestError::UnsupportedEncoding(one.clone())),
        several => return Err(RequestError::UnsupportedEncoding(several.join(", "))),
    };
    Ok(match decoded.strip_prefix(BOM) {
        Some(_) => decoded.slice(BOM.len()..),
        None => decoded,
    })
}

fn is_compression(coding: &str) -> bool {
    matches!(coding, "gzip" | "x-gzip" | "deflate")
}

/// Whether `raw` starts as a JSON object or array would (after whitespace, or with a BOM).
fn looks_like_json(raw: &[u8]) -> bool {
    raw.starts_with(BOM)
        || matches!(
            raw.iter().find(|b| !b.is_ascii_whitespace()),
            Some(b'{' | b'[')
        )
}

/// A decoder over a slice that can hand back what it did not read.
trait Decoder<'a>: Read {
    fn rest(self) -> &'a [u8];
}

impl<'a> Decoder<'a> for flate2::bufread::MultiGzDecoder<&'a [u8]> {
    fn rest(self) -> &'a [u8] {
        self.into_inner()
    }
}

impl<'a> Decoder<'a> for flate2::bufread::ZlibDecoder<&'a [u8]> {
    fn rest(self) -> &'a [u8] {
        self.into_inner()
    }
}

/// Reads at most `limit + 1` decoded bytes: one more than allowed proves the body too large
/// without decoding the rest. Bytes after the end of the compressed stream are an error: they
/// would otherwise be dropped unseen.
fn inflate<'a>(
    mut decoder: impl Decoder<'a>,
    coding: &str,
    limit: usize,
) -> Result<Bytes, RequestError> {
    let mut out = Vec::new();
    (&mut decoder)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RequestError::BadEncoding(format!("{coding}: {e}")))?;
    if out.len() > limit {
        return Err(RequestError::DecodedTooLarge { limit_bytes: limit });
    }
    let rest = decoder.rest().len();
    if rest > 0 {
        return Err(RequestError::BadEncoding(format!(
            "{coding}: {rest} bytes after the end of the compressed data"
        )));
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use std::io::Write;

    fn headers(coding: Option<&'static str>) -> Vec<HeaderValue> {
        coding.map(HeaderValue::from_static).into_iter().collect()
    }

    fn gzip(data: &[u8]) -> Bytes {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    fn zlib(data: &[u8]) -> Bytes {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).unwrap();
        Bytes::from(e.finish().unwrap())
    }

    const JSON: &[u8] = br#"{"site":"s.example","e":"signup"}"#;

    #[test]
    fn codings_are_undone() {
        for (coding, body) in [
            (None, Bytes::from_static(JSON)),
            (Some("identity"), Bytes::from_static(JSON)),
            (Some("gzip"), gzip(JSON)),
            (Some("GZIP"), gzip(JSON)),
            (Some("x-gzip"), gzip(JSON)),
            (Some("deflate"), zlib(JSON)),
        ] {
            assert_eq!(
                decode(&headers(coding), body, 1024).unwrap(),
                JSON,
                "{coding:?}"
            );
        }
    }

    #[test]
    fn a_byte_order_mark_is_ignored_also_inside_gzip() {
        let with_bom = [BOM, JSON].concat();
        assert_eq!(
            decode(&headers(None), Bytes::from(with_bom.clone()), 1024).unwrap(),
            JSON
        );
        assert_eq!(
            decode(&headers(Some("gzip")), gzip(&with_bom), 1024).unwrap(),
            JSON
        );
    }

    /// What the edge took before it decoded bodies, it still takes: a coding label on plain JSON.
    #[test]
    fn plain_json_under_a_compression_label_is_read_as_is() {
        for coding in ["gzip", "deflate", "x-gzip"] {
            for body in [JSON, b" \n[1]", b"\xEF\xBB\xBF{}"] {
                let got = decode(&headers(Some(coding)), Bytes::from_static(body), 1024).unwrap();
                assert_eq!(
                    got.as_ref(),
                    body.strip_prefix(BOM).unwrap_or(body),
                    "{coding}"
                );
            }
        }
    }

    /// Several gzip members are one body (RFC 1952 §2.2); bytes after the stream are refused;
    /// several codings are refused whether on one line or several.
    #[test]
    fn members_trailing_bytes_and_several_codings() {
        let two = [
            gzip(br#"[{"site":"a"},"#).to_vec(),
            gzip(br#"{"site":"b"}]"#).to_vec(),
        ]
        .concat();
        assert_eq!(
            decode(&headers(Some("gzip")), Bytes::from(two), 1024).unwrap(),
            br#"[{"site":"a"},{"site":"b"}]"#[..]
        );
        for (coding, body) in [("gzip", gzip(JSON)), ("deflate", zlib(JSON))] {
            let trailing = [body.to_vec(), b"garbage".to_vec()].concat();
            let e = decode(&headers(Some(coding)), Bytes::from(trailing), 1024).unwrap_err();
            assert_eq!(e.status(), hyper::StatusCode::BAD_REQUEST, "{coding}: {e}");
        }
        let twice = gzip(&gzip(JSON));
        let lines = [
            HeaderValue::from_static("gzip"),
            HeaderValue::from_static("gzip"),
        ];
        let e = decode(&lines, twice.clone(), 1024).unwrap_err();
        assert_eq!(e.status(), hyper::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.to_string().contains("gzip, gzip"), "{e}");
        let e = decode(&headers(Some("gzip, gzip")), twice, 1024).unwrap_err();
        assert!(e.to_string().contains("gzip, gzip"), "{e}");
        let lines = [
            HeaderValue::from_static("identity"),
            HeaderValue::from_static("gzip"),
        ];
        assert_eq!(
            decode(&lines, gzip(JSON), 1024).unwrap(),
            JSON,
            "identity is no coding"
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![b' '; 10 * 1024 * 1024];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 64 * 1024, "{} bytes compressed", bomb.len());
        let e = decode(&headers(Some("gzip")), bomb, 256 * 1024).unwrap_err();
        assert!(
            matches!(e, RequestError::DecodedTooLarge { limit_bytes } if limit_bytes == 256 * 1024),
            "{e}"
        );
        assert_eq!(e.status(), hyper::StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn unknown_codings_and_broken_bytes_are_named() {
        let e = decode(&headers(Some("br")), Bytes::from_static(JSON), 1024).unwrap_err();
        assert_eq!(e.status(), hyper::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.to_string().contains("`br`"), "{e}");
        let e = decode(&headers(Some("gzip, deflate")), gzip(JSON), 1024).unwrap_err();
        assert!(e.to_string().contains("gzip, deflate"), "{e}");
        let e = decode(
            &headers(Some("gzip")),
            Bytes::from_static(b"\x1f\x8bnot gzip at all"),
            1024,
        )
        .unwrap_err();
        assert_eq!(e.status(), hyper::StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("gzip"), "{e}");
    }
}
