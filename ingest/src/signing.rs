//! Signed pixel and click URLs: an email sender signs the query of each URL it builds with a
//! secret key, and the edge checks that signature before trusting the URL (for example before
//! redirecting a click anywhere).
//!
//! A URL names its key with `kid`, may carry an expiry `exp` (Unix seconds) and carries the MAC in
//! `sig`. Several keys can be valid at once, so a key can be rotated without breaking the URLs
//! already sitting in inboxes: add the new key, sign with it, drop the old one when its URLs no
//! longer matter.
//!
//! This module owns the key ring, the canonical form that is signed, signing and verification. It
//! does not read configuration, count outcomes or decide what the edge does with an unsigned or
//! badly signed URL; those belong to the callers.

use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::form;
use crate::params::{CACHE_BUSTER, CACHE_BUSTER_UNDERSCORE, EXPIRES, KEY_ID, SIGNATURE};
use crate::wire::Signature;

/// Parameters the signature never covers: the MAC itself, and cache busters that mail clients or
/// scripts add to URLs after they were signed.
pub const UNSIGNED_PARAMS: [&str; 3] = [SIGNATURE, CACHE_BUSTER, CACHE_BUSTER_UNDERSCORE];

/// Shortest secret a key may have, in bytes.
pub const MIN_SECRET_LEN: usize = 16;
/// Longest key id, in characters.
pub const MAX_KEY_ID_LEN: usize = 32;
/// Bytes of the HMAC-SHA256 output kept in `sig`. A 128-bit tag leaves a forger a 2^-128 chance
/// per guess, far beyond reach, and halves the length added to every URL.
const TAG_LEN: usize = 16;

/// Why a key ring could not be built, or a key could not be used. Messages name the key id, never
/// the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The id is empty, too long, or has characters outside `A-Z a-z 0-9 _ -`.
    #[error(
        "signing key id {id:?} is not valid: it must be 1 to {MAX_KEY_ID_LEN} characters of A-Z, a-z, 0-9, '_' or '-'"
    )]
    BadId {
        /// The offending id.
        id: String,
    },
    /// Two keys have the same id.
    #[error("signing key id {id:?} appears more than once")]
    DuplicateId {
        /// The repeated id.
        id: String,
    },
    /// The secret is too short to be a good HMAC key.
    #[error(
        "the secret of signing key {id:?} is {len} bytes; at least {MIN_SECRET_LEN} are required"
    )]
    ShortSecret {
        /// The id of the key.
        id: String,
        /// The secret's length in bytes.
        len: usize,
    },
    /// Signing was asked for with a key the ring does not hold.
    #[error("no signing key with id {id:?}")]
    UnknownKey {
        /// The id asked for.
        id: String,
    },
}

/// One key of the ring. The MAC is keyed once here and cloned per use, which is cheaper than
/// re-keying from the secret on every URL.
#[derive(Clone)]
struct Key {
    id: String,
    mac: Hmac<Sha256>,
}

/// The signing keys valid at one time, each named by its id.
#[derive(Clone)]
pub struct Keyring {
    // A handful of keys at most, so a linear search beats a map.
    keys: Vec<Key>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the ids: the secrets must never reach a log.
        f.debug_struct("Keyring")
            .field("ids", &self.ids().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Builds a ring from `(id, secret)` pairs. Ids must be 1 to 32 characters of
    /// `A-Z a-z 0-9 _ -` and unique; secrets at least 16 bytes. An empty list gives an empty ring,
    /// which verifies nothing as valid.
    pub fn new(keys: Vec<(String, String)>) -> Result<Keyring, KeyError> {
        let mut ring = Keyring {
            keys: Vec::with_capacity(keys.len()),
        };
        for (id, secret) in keys {
            if !valid_key_id(&id) {
                return Err(KeyError::BadId { id });
            }
            if ring.key(&id).is_some() {
                return Err(KeyError::DuplicateId { id });
            }
            if secret.len() < MIN_SECRET_LEN {
                return Err(KeyError::ShortSecret {
                    id,
                    len: secret.len(),
                });
            }
            let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes())
                .expect("HMAC takes any key length");
            ring.keys.push(Key { id, mac });
        }
        Ok(ring)
    }

    /// Whether the ring holds no key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key ids, in the order they were given.
    pub fn ids(&self) -> impl Iterator<Item = &str> + '_ {
        self.keys.iter().map(|k| k.id.as_str())
    }

    fn key(&self, id: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id == id)
    }

    /// Signs a URL's parameters in place with key `key_id`: removes any `kid`, `exp` and `sig`
    /// already there, appends `kid`, then `exp` when `expires_at` is given, then `sig` computed
    /// over [`canonical`]`(path, params)`. Values are decoded text; encode them with
    /// `form::query_string` or `form::url`. `path` must be the path the edge will see, e.g.
    /// `/p.gif`.
    pub fn sign_params(
        &self,
        key_id: &str,
        path: &str,
        params: &mut Vec<(String, String)>,
        expires_at: Option<u64>,
    ) -> Result<(), KeyError> {
        let key = self.key(key_id).ok_or_else(|| KeyError::UnknownKey {
            id: key_id.to_owned(),
        })?;
        params.retain(|(name, _)| ![KEY_ID, EXPIRES, SIGNATURE].contains(&name.as_str()));
        params.push((KEY_ID.to_owned(), key_id.to_owned()));
        if let Some(exp) = expires_at {
            params.push((EXPIRES.to_owned(), exp.to_string()));
        }
        let borrowed: Vec<(&str, &str)> = params
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let mut mac = key.mac.clone();
        mac.update(canonical(path, &borrowed).as_bytes());
        let tag = mac.finalize().into_bytes();
        params.push((SIGNATURE.to_owned(), hex_lower(&tag[..TAG_LEN])));
        Ok(())
    }

    /// Checks the signature of a request to `path` with decoded query parameters `params`, at
    /// `now_unix_secs`.
    ///
    /// In order: no `sig` is [`Signature::Absent`]; a repeated `sig`, `kid` or `exp`, or a
    /// missing `kid`, is [`Signature::Invalid`]; a `kid` the ring does not hold is
    /// [`Signature::UnknownKey`]; any signed parameter named twice, or a `sig` that is not 32 hex
    /// digits or does not match, is [`Signature::Invalid`]. Only once the MAC matches is `exp` read, so a forged expiry cannot
    /// be told apart from any other forgery: not a decimal number is `Invalid`, earlier than now
    /// is [`Signature::Expired`]. Otherwise [`Signature::Valid`].
    pub fn verify(&self, path: &str, params: &[(&str, &str)], now_unix_secs: u64) -> Signature {
        let (sig, kid, exp) = match (
            only(params, SIGNATURE),
            only(params, KEY_ID),
            only(params, EXPIRES),
        ) {
            (Only::None, _, _) => return Signature::Absent,
            (Only::One(sig), Only::One(kid), Only::One(exp)) => (sig, kid, Some(exp)),
            (Only::One(sig), Only::One(kid), Only::None) => (sig, kid, None),
            _ => return Signature::Invalid,
        };
        let Some(key) = self.key(kid) else {
            return Signature::UnknownKey;
        };
        if repeats_a_name(params) {
            // The canonical form sorts, so with a name twice the holder could reorder the values
            // and choose which one the edge keeps: a signed URL names each parameter once.
            return Signature::Invalid;
        }
        let Some(tag) = hex_decode_tag(sig) else {
            return Signature::Invalid;
        };
        let mut mac = key.mac.clone();
        mac.update(canonical(path, params).as_bytes());
        // Constant time, so the time taken does not tell a forger how many bytes were right.
        if mac.verify_truncated_left(&tag).is_err() {
            return Signature::Invalid;
        }
        match exp.map(parse_unix_secs) {
            None => Signature::Valid,
            Some(None) => Signature::Invalid,
            Some(Some(exp)) if exp < now_unix_secs => Signature::Expired,
            Some(Some(_)) => Signature::Valid,
        }
    }

    /// [`Keyring::verify`] on a raw query string (without the `?`): pairs are split on `&` and
    /// `=` and form-decoded (`+` is a space); a part that does not decode makes the URL
    /// [`Signature::Invalid`]. Empty pairs (`a=1&&b=2`) are skipped, as the pixel parser does.
    pub fn verify_query(&self, path: &str, raw_query: &str, now_unix_secs: u64) -> Signature {
        let Some(decoded) = form::pairs(raw_query).collect::<Option<Vec<_>>>() else {
            return Signature::Invalid;
        };
        let params: Vec<(&str, &str)> = decoded.iter().map(|(n, v)| (&**n, &**v)).collect();
        self.verify(path, &params, now_unix_secs)
    }
}

/// Whether a parameter covered by the signature appears more than once.
fn repeats_a_name(params: &[(&str, &str)]) -> bool {
    let mut names: Vec<&str> = params
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| !UNSIGNED_PARAMS.contains(n))
        .collect();
    names.sort_unstable();
    names.windows(2).any(|w| w[0] == w[1])
}

/// The text that is signed: `path + "?" + pairs`, where pairs are the decoded `params` without
/// `sig`, `cb` and `_`, sorted by name then value (byte order), each name and value
/// percent-encoded (every byte but ASCII letters, digits and `-._~`, uppercase hex), joined as
/// `name=value` with `&`.
///
/// The verifier rebuilds this from the values it decoded, not from the bytes it received, so any
/// encoding of the same values verifies: `%20` or `+`, `%2f` or `%2F`, another parameter order,
/// an added cache buster. Encoding every special byte keeps the form unambiguous: a value cannot
/// smuggle in a `&` or `=` that would make two different parameter lists sign alike.
pub fn canonical(path: &str, params: &[(&str, &str)]) -> String {
    let mut signed: Vec<(&str, &str)> = params
        .iter()
        .copied()
        .filter(|(name, _)| !UNSIGNED_PARAMS.contains(name))
        .collect();
    signed.sort_unstable();
    let mut out = String::with_capacity(path.len() + 1 + 16 * signed.len());
    out.push_str(path);
    out.push('?');
    form::push_pairs(&mut out, signed);
    out
}

/// Lowercase hex of `bytes`.
fn hex_lower(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xF)] as char);
    }
    out
}

/// The tag of a `sig` value: exactly 32 hex digits (either case), else `None`.
fn hex_decode_tag(s: &str) -> Option<[u8; TAG_LEN]> {
    let bytes = s.as_bytes();
    if bytes.len() != TAG_LEN * 2 {
        return None;
    }
    let mut tag = [0u8; TAG_LEN];
    for (out, pair) in tag.iter_mut().zip(bytes.chunks_exact(2)) {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        *out = (hi * 16 + lo) as u8;
    }
    Some(tag)
}

/// A Unix time of 1 to 20 decimal digits. Stricter than `u64::from_str`, which also takes a
/// leading `+`: the sender only ever writes digits.
fn parse_unix_secs(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn valid_key_id(id: &str) -> bool {
    (1..=MAX_KEY_ID_LEN).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// How often a parameter occurs.
enum Only<'a> {
    None,
    One(&'a str),
    Many,
}

/// The value of `name` when it occurs exactly once. A repeated signing parameter is refused
/// rather than resolved, since the sender and the edge could resolve it differently.
fn only<'a>(params: &[(&str, &'a str)], name: &str) -> Only<'a> {
    let mut found = Only::None;
    for &(n, v) in params {
        if n == name {
            found = match found {
                Only::None => Only::One(v),
                _ => Only::Many,
            };
        }
    }
    found
}

#[cfg(test)]
mod tests;
