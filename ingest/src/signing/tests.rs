//! Signing and verification: the canonical form, round trips, tampering, expiry, rotation, and
//! that secrets never reach a log.

use super::*;
use crate::form::query_string;

const OLD_SECRET: &str = "old-secret-0123456789";
const NEW_SECRET: &str = "new-secret-9876543210";
const NOW: u64 = 1_700_000_000;

fn ring() -> Keyring {
    Keyring::new(vec![
        ("k2024".into(), OLD_SECRET.into()),
        ("k2025".into(), NEW_SECRET.into()),
    ])
    .unwrap()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect()
}

/// The raw query of a URL signed with `kid`.
fn signed_query(kid: &str, exp: Option<u64>) -> String {
    let mut params = pairs(&[("site", "shop"), ("e", "open"), ("msg", "a b/é")]);
    ring().sign_params(kid, "/p.gif", &mut params, exp).unwrap();
    let url = crate::form::url("https://px.example.com/", "/p.gif", &params);
    let (base, query) = url.split_once('?').unwrap();
    assert_eq!(base, "https://px.example.com/p.gif");
    query.to_owned()
}

fn verify(query: &str) -> Signature {
    ring().verify_query("/p.gif", query, NOW)
}

#[test]
fn canonical_form_is_fixed() {
    let params = [
        ("site", "shop"),
        ("e", "open"),
        ("msg", "a b/é"),
        ("cb", "9"),
    ];
    assert_eq!(
        canonical("/p.gif", &params),
        "/p.gif?e=open&msg=a%20b%2F%C3%A9&site=shop"
    );
    // Same name: sorted by value; `_` and `sig` dropped; `&` and `=` inside values encoded.
    let params = [("t", "b"), ("t", "a=1&x"), ("_", "1"), ("sig", "x")];
    assert_eq!(canonical("/c", &params), "/c?t=a%3D1%26x&t=b");
    assert_eq!(canonical("/c", &[]), "/c?");
}

#[test]
fn sign_then_verify_round_trip() {
    let query = signed_query("k2025", None);
    assert!(query.starts_with("site=shop&e=open&msg=a%20b%2F%C3%A9&kid=k2025&sig="));
    let sig = query.rsplit_once("sig=").unwrap().1;
    assert_eq!(sig.len(), 32);
    assert!(sig
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    assert_eq!(verify(&query), Signature::Valid);
}

#[test]
fn signing_replaces_old_signing_params() {
    let mut params = pairs(&[("kid", "x"), ("e", "open"), ("sig", "y"), ("exp", "1")]);
    ring()
        .sign_params("k2024", "/p.gif", &mut params, None)
        .unwrap();
    let names: Vec<_> = params.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["e", "kid", "sig"]);
}

#[test]
fn any_equivalent_encoding_verifies() {
    let query = signed_query("k2025", None);
    let sig = query.rsplit_once("sig=").unwrap().1;
    let reworded = format!("cb=123&sig={sig}&kid=k2025&msg=a+b%2f%C3%A9&e=open&site=shop&_=1");
    assert_eq!(verify(&reworded), Signature::Valid);
}

#[test]
fn tampering_is_invalid() {
    let query = signed_query("k2025", None);
    assert_eq!(
        verify(&query.replace("site=shop", "site=shoq")),
        Signature::Invalid
    );
    assert_eq!(
        verify(&format!("{query}&extra=1")),
        Signature::Invalid,
        "an added parameter is covered"
    );
    let (head, sig) = query.rsplit_once("sig=").unwrap();
    let flipped = if sig.starts_with('0') { "1" } else { "0" };
    assert_eq!(
        verify(&format!("{head}sig={flipped}{}", &sig[1..])),
        Signature::Invalid
    );
    assert_eq!(
        verify(&format!("{head}sig={}", &sig[..30])),
        Signature::Invalid,
        "short sig"
    );
    assert_eq!(
        verify(&format!("{head}sig={}zz", &sig[..30])),
        Signature::Invalid,
        "not hex"
    );
    assert_eq!(
        verify(&format!("{query}&sig={sig}")),
        Signature::Invalid,
        "repeated sig"
    );
    assert_eq!(
        verify(&format!("{query}&kid=k2025")),
        Signature::Invalid,
        "repeated kid"
    );
    assert_eq!(
        verify(&format!("{query}&bad=%zz")),
        Signature::Invalid,
        "undecodable"
    );
    // A different path is a different URL.
    assert_eq!(
        ring().verify_query("/other.gif", &query, NOW),
        Signature::Invalid
    );
}

#[test]
fn expiry_is_checked_after_the_mac() {
    let past = signed_query("k2025", Some(NOW - 1));
    assert_eq!(verify(&past), Signature::Expired);
    let future = signed_query("k2025", Some(NOW + 3600));
    assert_eq!(verify(&future), Signature::Valid);
    assert_eq!(
        verify(&signed_query("k2025", Some(NOW))),
        Signature::Valid,
        "valid through the second it names"
    );
    // Moving the expiry breaks the MAC: a forger gets Invalid, not Expired.
    let moved = past.replace(&format!("exp={}", NOW - 1), &format!("exp={}", NOW - 2));
    assert_eq!(verify(&moved), Signature::Invalid);
    assert_eq!(
        verify(&format!("{future}&exp=1")),
        Signature::Invalid,
        "repeated exp"
    );
}

#[test]
fn expiry_that_is_not_a_number_is_invalid_even_when_signed() {
    // Sign an `exp` the builder would never write, to reach the check after the MAC.
    let mut params = pairs(&[("e", "open"), ("kid", "k2025"), ("exp", "+5")]);
    let borrowed: Vec<(&str, &str)> = params
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(NEW_SECRET.as_bytes()).unwrap();
    mac.update(canonical("/p.gif", &borrowed).as_bytes());
    params.push(("sig".into(), hex_lower(&mac.finalize().into_bytes()[..16])));
    assert_eq!(verify(&query_string(&params)), Signature::Invalid);
}

#[test]
fn keys_and_absence() {
    let query = signed_query("k2025", None);
    assert_eq!(
        verify(&query.replace("kid=k2025", "kid=k2099")),
        Signature::UnknownKey
    );
    assert_eq!(
        verify(&query.replace("kid=k2025", "kid=")),
        Signature::UnknownKey
    );
    assert_eq!(
        verify(&query.replace("kid=k2025&", "")),
        Signature::Invalid,
        "sig without kid"
    );
    assert_eq!(verify("site=shop&e=open"), Signature::Absent);
    assert_eq!(verify(""), Signature::Absent);
    let empty = Keyring::new(Vec::new()).unwrap();
    assert!(empty.is_empty());
    assert_eq!(
        empty.verify_query("/p.gif", &query, NOW),
        Signature::UnknownKey
    );
    assert_eq!(
        ring().sign_params("nope", "/p.gif", &mut Vec::new(), None),
        Err(KeyError::UnknownKey { id: "nope".into() })
    );
}

#[test]
fn rotation_keeps_old_urls_valid() {
    let old = signed_query("k2024", None);
    assert_eq!(verify(&old), Signature::Valid);
    // Once the old key is retired, its URLs name an unknown key.
    let retired = Keyring::new(vec![("k2025".into(), NEW_SECRET.into())]).unwrap();
    assert_eq!(
        retired.verify_query("/p.gif", &old, NOW),
        Signature::UnknownKey
    );
    // A key id does not vouch for another key's signature.
    assert_eq!(
        verify(&old.replace("kid=k2024", "kid=k2025")),
        Signature::Invalid
    );
}

#[test]
fn keyring_errors_name_the_key() {
    let err = |keys: &[(&str, &str)]| Keyring::new(pairs(keys)).unwrap_err();

    let short = err(&[("k1", "short")]);
    assert_eq!(
        short,
        KeyError::ShortSecret {
            id: "k1".into(),
            len: 5
        }
    );
    assert!(short.to_string().contains("\"k1\""), "{short}");
    assert!(!short.to_string().contains("short\""), "{short}");

    for bad in ["", "has space", "dot.ted", "é", &"x".repeat(33)] {
        let e = err(&[(bad, OLD_SECRET)]);
        assert_eq!(e, KeyError::BadId { id: bad.into() });
        assert!(e.to_string().contains(&format!("{bad:?}")), "{e}");
    }
    assert!(Keyring::new(pairs(&[(&"x".repeat(32), OLD_SECRET)])).is_ok());

    let dup = err(&[("k1", OLD_SECRET), ("k1", NEW_SECRET)]);
    assert_eq!(dup, KeyError::DuplicateId { id: "k1".into() });
    assert!(dup.to_string().contains("\"k1\""), "{dup}");
}

#[test]
fn debug_hides_secrets() {
    let ring = ring();
    assert_eq!(ring.ids().collect::<Vec<_>>(), ["k2024", "k2025"]);
    let shown = format!("{ring:?}");
    assert!(
        shown.contains("k2024") && shown.contains("k2025"),
        "{shown}"
    );
    assert!(
        !shown.contains(OLD_SECRET) && !shown.contains(NEW_SECRET),
        "{shown}"
    );
    assert!(!shown.contains("secret"), "{shown}");
}

#[test]
fn labels() {
    let labels: Vec<_> = Signature::ALL.iter().map(|s| s.as_str()).collect();
    assert_eq!(
        labels,
        ["absent", "valid", "invalid", "expired", "unknown_key"]
    );
}

#[test]
fn url_joins_base_and_path() {
    use crate::form::url;
    let params = pairs(&[("a", "1 2")]);
    assert_eq!(
        url("https://x.test/", "/p", &params),
        "https://x.test/p?a=1%202"
    );
    assert_eq!(
        url("https://x.test", "/p", &params),
        "https://x.test/p?a=1%202"
    );
    assert_eq!(query_string(&[]), "");
}
