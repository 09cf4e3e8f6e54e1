//! `application/x-www-form-urlencoded` decoding, the way query strings are read everywhere in the
//! edge (parameters of a hit, and the signed form of a URL). A leaf: no other module of the crate.

use std::borrow::Cow;

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

#[cfg(test)]
mod tests {
    use super::*;

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
