//! The names of the query parameters (and `/collect` JSON keys) the edge reads, in one place;
//! docs/hits.md is their reference. A leaf: only constants, no behaviour.
//!
//! Every name not listed here is a custom property. The consent parameter is not here: its name is
//! a setting (`privacy.consent_param`).

/// The hit kind (`kind` on the wire).
pub const KIND: &str = "e";
/// The site, app or sender; required.
pub const SITE: &str = "site";
/// The page or document URL.
pub const URL: &str = "url";
/// The page's own referrer.
pub const PAGE_REFERRER: &str = "ref";
/// The page title.
pub const TITLE: &str = "title";
/// The site's own user id.
pub const USER_ID: &str = "uid";
/// Campaign.
pub const CAMPAIGN: &str = "campaign";
/// Campaign, as Google Analytics names it.
pub const UTM_CAMPAIGN: &str = "utm_campaign";
/// Traffic source.
pub const SOURCE: &str = "source";
/// Traffic source, as Google Analytics names it.
pub const UTM_SOURCE: &str = "utm_source";
/// Medium.
pub const MEDIUM: &str = "medium";
/// Medium, as Google Analytics names it.
pub const UTM_MEDIUM: &str = "utm_medium";
/// Ad or link content.
pub const CONTENT: &str = "content";
/// Ad or link content, as Google Analytics names it.
pub const UTM_CONTENT: &str = "utm_content";
/// Search term.
pub const TERM: &str = "term";
/// Search term, as Google Analytics names it.
pub const UTM_TERM: &str = "utm_term";
/// A/B test variant.
pub const VARIANT: &str = "variant";
/// Email message or send id.
pub const MESSAGE_ID: &str = "msg";
/// A conversion's value, a finite decimal number.
pub const VALUE: &str = "value";
/// ISO 4217 code of `value`.
pub const CURRENCY: &str = "currency";
/// `/collect` only: an object of custom properties, kept as properties even where a name is one
/// of the above.
pub const PROPS: &str = "props";
/// Cache buster: read and not stored, never signed.
pub const CACHE_BUSTER: &str = "cb";
/// Cache buster as jQuery and others add it: read and not stored, never signed.
pub const CACHE_BUSTER_UNDERSCORE: &str = "_";
/// A client-made event id (a UUID): a client that retries sends the same one, and the hit's
/// `event_id` is derived from it and the site, so the retry folds into the first (docs/hits.md).
pub const CLIENT_EVENT_ID: &str = "eid";
/// A click's target URL (`GET /c`).
pub const TARGET: &str = "u";
/// The send time of an email, Unix seconds; believed only from a validly signed URL.
pub const SENT_AT: &str = "st";
/// The id of the key a URL was signed with.
pub const KEY_ID: &str = "kid";
/// A signed URL's expiry, Unix seconds; optional.
pub const EXPIRES: &str = "exp";
/// A signed URL's MAC.
pub const SIGNATURE: &str = "sig";
