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

/// Undoes the body's `Content-Encoding` (the header's value, if any) and drops a leading byte
/// order mark.
///
/// `identity` (or no header) passes the bytes through; `gzip` (also `x-gzip`, RFC 9110 §8.4.1.3)
/// and `deflate` (the zlib format, RFC 9110 §8.4.1.2) are decoded with `flate2`.
///
/// # Errors
/// [`RequestError::UnsupportedEncoding`] for any other coding, or several;
/// [`RequestError::DecodedTooLarge`] when the decoded body would exceed `max_decoded_bytes`;
/// [`RequestError::BadEncoding`] when the bytes are not valid for their coding.
pub fn decode(
    content_encoding: Option<&HeaderValue>,
    raw: Bytes,
    max_decoded_bytes: usize,
) -> Result<Bytes, RequestError> {
    let coding = match content_encoding {
        None => "identity".to_owned(),
        Some(v) => v
            .to_str()
            .map_err(|_| RequestError::UnsupportedEncoding("(not ASCII)".into()))?
            .trim()
            .to_ascii_lowercase(),
    };
    let decoded = match coding.as_str() {
        "" | "identity" => raw,
        "gzip" | "x-gzip" => inflate(
            flate2::read::GzDecoder::new(&raw[..]),
            "gzip",
            max_decoded_bytes,
        )?,
        "deflate" => inflate(
            flate2::read::ZlibDecoder::new(&raw[..]),
            "deflate",
            max_decoded_bytes,
        )?,
        other => return Err(RequestError::UnsupportedEncoding(other.to_owned())),
    };
    Ok(match decoded.strip_prefix(BOM) {
        Some(_) => decoded.slice(BOM.len()..),
        None => decoded,
    })
}

/// Reads at most `limit + 1` decoded bytes: one more than allowed proves the body too large
/// without decoding the rest.
fn inflate(decoder: impl Read, coding: &str, limit: usize) -> Result<Bytes, RequestError> {
    let mut out = Vec::new();
    decoder
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| RequestError::BadEncoding(format!("{coding}: {e}")))?;
    if out.len() > limit {
        return Err(RequestError::DecodedTooLarge { limit_bytes: limit });
    }
    Ok(Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use std::io::Write;

    fn headers(coding: Option<&'static str>) -> Option<HeaderValue> {
        coding.map(HeaderValue::from_static)
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
                decode(headers(coding).as_ref(), body, 1024).unwrap(),
                JSON,
                "{coding:?}"
            );
        }
    }

    #[test]
    fn a_byte_order_mark_is_ignored_also_inside_gzip() {
        let with_bom = [BOM, JSON].concat();
        assert_eq!(
            decode(headers(None).as_ref(), Bytes::from(with_bom.clone()), 1024).unwrap(),
            JSON
        );
        assert_eq!(
            decode(headers(Some("gzip")).as_ref(), gzip(&with_bom), 1024).unwrap(),
            JSON
        );
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![b' '; 10 * 1024 * 1024];
        let bomb = gzip(&zeros);
        assert!(bomb.len() < 64 * 1024, "{} bytes compressed", bomb.len());
        let e = decode(headers(Some("gzip")).as_ref(), bomb, 256 * 1024).unwrap_err();
        assert!(
            matches!(e, RequestError::DecodedTooLarge { limit_bytes } if limit_bytes == 256 * 1024),
            "{e}"
        );
        assert_eq!(e.status(), hyper::StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn unknown_codings_and_broken_bytes_are_named() {
        let e = decode(headers(Some("br")).as_ref(), Bytes::from_static(JSON), 1024).unwrap_err();
        assert_eq!(e.status(), hyper::StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert!(e.to_string().contains("`br`"), "{e}");
        let e = decode(headers(Some("gzip, deflate")).as_ref(), gzip(JSON), 1024).unwrap_err();
        assert!(e.to_string().contains("gzip, deflate"), "{e}");
        let e = decode(
            headers(Some("gzip")).as_ref(),
            Bytes::from_static(JSON),
            1024,
        )
        .unwrap_err();
        assert_eq!(e.status(), hyper::StatusCode::BAD_REQUEST);
        assert!(e.to_string().contains("gzip"), "{e}");
    }
}
