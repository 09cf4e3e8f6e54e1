//! Query strings in and out: `application/x-www-form-urlencoded` decoding, the way the edge reads
//! every query (parameters of a hit, the signed form of a URL), and the one percent-encoding it
//! writes (signed forms, URLs built by `pixelpipe-ingest url`). A leaf: no other module of the
//! crate.
//!
//! Encoding is the `percent-encoding` crate's. Decoding is our own because it is stricter than
//! the libraries: `percent-encoding` passes a malformed escape (`%zz`, a lone `%`) through as
//! text and `form_urlencoded` also replaces invalid UTF-8, while the edge must refuse both so that
//! the field is dropped and counted as `bad_encoding`, never stored altered.

use std::borrow::Cow;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// Bytes written as `%XX`: all but ASCII letters, digits and `-._~` (RFC 3986's unreserved set),
/// so an encoded name or value never contains `&`, `=`, `+` or `%` of its own.
const ENCODED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space). `None` for a malformed
/// escape or bytes that are not UTF-8.
pub fn percent_decode(s: &str) -> Option<Cow<'_, str>> {
    if !s.bytes().any(|b| b == b'%' || b == b'+') {
        return Some(Cow::Borrowed(s));
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hi = (hex[0] as char).to_digit(16)?;
                let lo = (hex[1] as char).to_digit(16)?;
                out.push((hi * 16 + lo) as u8);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

/// The decoded `name=value` pairs of a query string (without `?`), in order. Empty pairs
/// (`a=1&&b=2`) are skipped; a name without `=` has an empty value; `None` stands for a pair that
/// does not decode.
pub fn pairs(query: &str) -> impl Iterator<Item = Option<(Cow<'_, str>, Cow<'_, str>)>> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        Some((percent_decode(name)?, percent_decode(value)?))
    })
}

/// Appends `s` with every byte but ASCII letters, digits and `-._~` as `%XX` (uppercase hex).
pub fn push_encoded(out: &mut String, s: &str) {
    out.extend(percent_encoding::utf8_percent_encode(s, ENCODED));
}

/// Appends `name=value` pairs joined by `&`, each side encoded with [`push_encoded`].
pub fn push_pairs<'a>(out: &mut String, pairs: impl IntoIterator<Item = (&'a str, &'a str)>) {
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        push_encoded(out, name);
        out.push('=');
        push_encoded(out, value);
    }
}

/// Encodes decoded `params` as a query string (without `?`), in the given order.
pub fn query_string(params: &[(String, String)]) -> String {
    let mut out = String::new();
    push_pairs(
        &mut out,
        params.iter().map(|(n, v)| (n.as_str(), v.as_str())),
    );
    out
}

/// A full URL: `base` (one trailing `/` removed) + `path` + `?` + [`query_string`]`(params)`.
/// `path` is used as is, so it should start with `/` and need no encoding.
pub fn url(base: &str, path: &str, params: &[(String, String)]) -> String {
    let base = base.strip_suffix('/').unwrap_or(base);
    format!("{base}{path}?{}", query_string(params))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever is encoded decodes back to itself, in order.
        #[test]
        fn encoded_pairs_decode_to_themselves(
            params in proptest::collection::vec((any::<String>(), any::<String>()), 0..8)
        ) {
            let encoded = query_string(&params);
            let back: Vec<(String, String)> = pairs(&encoded)
                .map(|p| p.map(|(k, v)| (k.into_owned(), v.into_owned())))
                .collect::<Option<_>>()
                .expect("our own encoding is well formed");
            prop_assert_eq!(back, params);
        }

        /// Any text at all gets an answer from the decoder, never a panic.
        #[test]
        fn any_query_decodes_or_is_refused(query in ".{0,200}") {
            for pair in pairs(&query) {
                let _ = pair;
            }
            let _ = percent_decode(&query);
        }
    }

    #[test]
    fn encoding_leaves_only_unreserved_bytes() {
        let mut out = String::new();
        push_encoded(&mut out, "a-b._~ +&=%/é");
        assert_eq!(out, "a-b._~%20%2B%26%3D%25%2F%C3%A9");
        let params = vec![
            ("q".to_owned(), "x y".to_owned()),
            ("é".to_owned(), String::new()),
        ];
        assert_eq!(query_string(&params), "q=x%20y&%C3%A9=");
        let encoded = query_string(&params);
        let back: Vec<_> = pairs(&encoded).map(Option::unwrap).collect();
        assert_eq!(
            back,
            vec![("q".into(), "x y".into()), ("é".into(), "".into())]
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a+b%20c").as_deref(), Some("a b c"));
        assert_eq!(percent_decode("%E2%82%AC").as_deref(), Some("€"));
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%g0"), None);
        assert_eq!(
            percent_decode("%C0%AF"),
            None,
            "overlong UTF-8 is not UTF-8"
        );
    }

    #[test]
    fn pairs_in_order_with_failures_marked() {
        let got: Vec<_> = pairs("a=1&&b&c=%zz&d=x+y").collect();
        assert_eq!(
            got,
            vec![
                Some(("a".into(), "1".into())),
                Some(("b".into(), "".into())),
                None,
                Some(("d".into(), "x y".into())),
            ]
        );
    }
}
