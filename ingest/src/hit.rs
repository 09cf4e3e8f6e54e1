//! Turning one request into a [`Hit`]: typed fields, limits, and the reasons a hit is invalid, a
//! field is cut, or a valid hit is dropped.
//!
//! Pure and synchronous: no I/O, no locks, nothing awaited, so it runs on the request path and is
//! tested without sockets. The `[limits]` settings it applies are its own ([`LimitsConfig`]), as
//! `[privacy]` is `privacy`'s. It does not decide what happens to a finished hit (see `queue`) nor
//! how it is encoded (see `wire`).
//!
//! Policy for bad input (documented in `docs/hits.md`): a *field* that cannot be read (bad
//! percent-encoding, invalid UTF-8, over a limit, not a number) is dropped or shortened and counted
//! by [`CutReason`], and the hit is kept; a *hit* without a valid site or kind cannot be attributed
//! and is not stored, counted by [`InvalidReason`].

use std::borrow::Cow;
use std::net::IpAddr;

use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, ACCEPT_LANGUAGE, HOST, REFERER, USER_AGENT,
};
use serde::{Deserialize, Serialize};
use uuid::{NoContext, Timestamp, Uuid};

use crate::form;
use crate::json;
use crate::params;
use crate::wire::{kind, Hit, Signature, Transport, SCHEMA_VERSION};

/// Bounds on what one hit may carry. What is cut is counted, never silently lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Longest query string; a longer one makes the hit invalid (`query_too_long`). Default 8192.
    pub max_query_bytes: usize,
    /// Parameters read per hit; the rest are cut (`too_many_params`). Default 64.
    pub max_params: usize,
    /// Longest parameter name; longer ones are cut (`key_too_long`). Default 64.
    pub max_key_bytes: usize,
    /// Longest parameter or header value; longer ones are shortened at a character boundary
    /// (`value_too_long`). Default 2048.
    pub max_value_bytes: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_query_bytes: 8192,
            max_params: 64,
            max_key_bytes: 64,
            max_value_bytes: 2048,
        }
    }
}

/// The kind a hit gets when it names none.
pub const DEFAULT_KIND: &str = kind::PAGEVIEW;

/// Why a hit was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvalidReason {
    /// No `site` parameter.
    MissingSite,
    /// `site` is not 1-64 characters of `A-Z a-z 0-9 . _ -`.
    BadSite,
    /// `e` is not 1-64 characters of `a-z 0-9 . _ -` (upper case is folded).
    BadKind,
    /// The query string is longer than `limits.max_query_bytes`.
    QueryTooLong,
    /// An element of a `/collect` array is not a JSON object.
    NotAnObject,
    /// One of more events than `http.max_events_per_request` in one `/collect` request.
    TooManyEvents,
}

impl InvalidReason {
    /// Every reason, for metrics registration.
    pub const ALL: [InvalidReason; 6] = [
        InvalidReason::MissingSite,
        InvalidReason::BadSite,
        InvalidReason::BadKind,
        InvalidReason::QueryTooLong,
        InvalidReason::NotAnObject,
        InvalidReason::TooManyEvents,
    ];

    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidReason::MissingSite => "missing_site",
            InvalidReason::BadSite => "bad_site",
            InvalidReason::BadKind => "bad_kind",
            InvalidReason::QueryTooLong => "query_too_long",
            InvalidReason::NotAnObject => "not_an_object",
            InvalidReason::TooManyEvents => "too_many_events",
        }
    }
}

/// Why a field of an otherwise stored hit was dropped or shortened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutReason {
    /// Bad percent-encoding or invalid UTF-8: the parameter or header is dropped.
    BadEncoding,
    /// Parameter name longer than `limits.max_key_bytes`: dropped.
    KeyTooLong,
    /// Value longer than `limits.max_value_bytes`: shortened at a character boundary.
    ValueTooLong,
    /// Parameters past `limits.max_params`: dropped.
    TooManyParams,
    /// `value` is not a finite decimal number: dropped.
    BadNumber,
    /// `currency` is not three ASCII letters: dropped.
    BadCurrency,
    /// A JSON value that is an array or object where text was expected: dropped.
    BadType,
    /// A well-known parameter given twice: the first is kept, later ones dropped.
    Duplicate,
    /// `eid` is not a UUID: dropped, and the hit gets an event id of its own.
    BadEventId,
    /// A JSON string held a lone UTF-16 surrogate escape (`"caf\ud83d"`): each is replaced by
    /// U+FFFD and the field kept.
    LoneSurrogate,
    /// A trusted proxy named a client that is not an address (`unknown`, an obfuscated name,
    /// garbage): the hit has no client IP rather than the proxy's (see `client_ip`).
    UnknownClientIp,
}

impl CutReason {
    /// Every reason, for metrics registration.
    pub const ALL: [CutReason; 11] = [
        CutReason::BadEncoding,
        CutReason::KeyTooLong,
        CutReason::ValueTooLong,
        CutReason::TooManyParams,
        CutReason::BadNumber,
        CutReason::BadCurrency,
        CutReason::BadType,
        CutReason::Duplicate,
        CutReason::BadEventId,
        CutReason::LoneSurrogate,
        CutReason::UnknownClientIp,
    ];

    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CutReason::BadEncoding => "bad_encoding",
            CutReason::KeyTooLong => "key_too_long",
            CutReason::ValueTooLong => "value_too_long",
            CutReason::TooManyParams => "too_many_params",
            CutReason::BadNumber => "bad_number",
            CutReason::BadCurrency => "bad_currency",
            CutReason::BadType => "bad_type",
            CutReason::Duplicate => "duplicate",
            CutReason::BadEventId => "bad_event_id",
            CutReason::LoneSurrogate => "lone_surrogate",
            CutReason::UnknownClientIp => "unknown_client_ip",
        }
    }
}

/// Why a valid hit never reached the producer (the `reason` label of
/// `pixelpipe_ingest_hits_dropped_total`). Each dropped hit is counted under exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Kafka did not take the hit and the spool was full (`spool.max_bytes`).
    SpoolFull,
    /// Kafka did not take the hit and the spool could not be written (a disk error; logged).
    SpoolError,
    /// Larger than Kafka accepts (`message.max.bytes`): no retry can deliver it.
    TooLarge,
    /// `Sec-GPC: 1` on a site whose policy drops it.
    Gpc,
    /// `DNT: 1` on a site whose policy drops it.
    Dnt,
    /// The consent parameter said no, on a site whose policy drops it.
    NoConsent,
    /// The opt-out cookie, on a site whose policy drops it.
    Optout,
    /// A conversion without a valid signature on a site whose policy drops it.
    UnsignedConversion,
}

impl DropReason {
    /// Every reason, in declaration order (`as usize` indexes it).
    pub const ALL: [DropReason; 8] = [
        DropReason::SpoolFull,
        DropReason::SpoolError,
        DropReason::TooLarge,
        DropReason::Gpc,
        DropReason::Dnt,
        DropReason::NoConsent,
        DropReason::Optout,
        DropReason::UnsignedConversion,
    ];

    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SpoolFull => "spool_full",
            DropReason::SpoolError => "spool_error",
            DropReason::TooLarge => "too_large",
            DropReason::Gpc => "gpc",
            DropReason::Dnt => "dnt",
            DropReason::NoConsent => "no_consent",
            DropReason::Optout => "optout",
            DropReason::UnsignedConversion => "unsigned_conversion",
        }
    }
}

/// Counts of cut fields by reason, for one hit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cuts([u16; CutReason::ALL.len()]);

impl Cuts {
    /// Counts one field cut for `reason`.
    pub fn add(&mut self, reason: CutReason) {
        let slot = &mut self.0[reason as usize];
        *slot = slot.saturating_add(1);
    }

    /// How many of this reason.
    pub fn get(&self, reason: CutReason) -> u16 {
        self.0[reason as usize]
    }

    /// All cuts together.
    pub fn total(&self) -> u16 {
        self.0.iter().fold(0u16, |a, b| a.saturating_add(*b))
    }
}

/// What the request itself (socket and headers) says, read once per request and shared by
/// every hit of a `/collect` array.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// Receive time, ms since the epoch.
    pub received_at_ms: u64,
    /// Client address after the trusted-proxy rule; `None` when a trusted proxy named a client
    /// that is not an address.
    pub client_ip: Option<IpAddr>,
    /// `User-Agent`.
    pub user_agent: Option<String>,
    /// `Referer`.
    pub referer: Option<String>,
    /// `Accept-Language`.
    pub accept_language: Option<String>,
    /// `DNT`.
    pub dnt: Option<String>,
    /// `Sec-GPC`.
    pub sec_gpc: Option<String>,
    /// `Host`.
    pub host: Option<String>,
    /// Request path.
    pub path: String,
    /// The request was a `HEAD`.
    pub head_request: bool,
    /// A prefetch or prerender header was present (see [`is_prefetch`]).
    pub prefetch: bool,
    /// The request carried the opt-out cookie.
    pub opted_out: bool,
    /// Header fields cut while reading them.
    pub cuts: Cuts,
}

impl RequestMeta {
    /// Reads the headers a hit carries, bounded by `limits`.
    pub fn new(
        received_at_ms: u64,
        client_ip: Option<IpAddr>,
        path: &str,
        headers: &HeaderMap,
        limits: &LimitsConfig,
    ) -> RequestMeta {
        let mut cuts = Cuts::default();
        let mut header = |name: &HeaderName| -> Option<String> {
            let raw = headers.get(name)?.as_bytes();
            match std::str::from_utf8(raw) {
                Ok("") => None,
                Ok(text) => Some(bounded(text, limits.max_value_bytes, &mut cuts).into_owned()),
                Err(_) => {
                    cuts.add(CutReason::BadEncoding);
                    None
                }
            }
        };
        RequestMeta {
            received_at_ms,
            client_ip,
            user_agent: header(&USER_AGENT),
            referer: header(&REFERER),
            accept_language: header(&ACCEPT_LANGUAGE),
            dnt: header(&HeaderName::from_static("dnt")),
            sec_gpc: header(&HeaderName::from_static("sec-gpc")),
            host: header(&HOST),
            path: path.to_owned(),
            head_request: false,
            prefetch: is_prefetch(headers),
            opted_out: false,
            cuts,
        }
    }
}

/// Whether the browser marked the request as speculative. Chromium sends `Sec-Purpose: prefetch`
/// (or `prefetch;prerender`), older Chrome and Safari `Purpose: prefetch`, Safari previews
/// `X-Purpose: preview`, Firefox `X-Moz: prefetch`.
pub fn is_prefetch(headers: &HeaderMap) -> bool {
    // One pass over the few headers a request has: cheaper than four hashed lookups of names
    // that are almost never there (measured with callgrind, see docs/benchmarks.md).
    headers.iter().any(|(name, value)| {
        matches!(
            name.as_str(),
            "sec-purpose" | "purpose" | "x-purpose" | "x-moz"
        ) && {
            let v = value.as_bytes();
            v.windows(8).any(|w| w.eq_ignore_ascii_case(b"prefetch"))
                || v.windows(7).any(|w| w.eq_ignore_ascii_case(b"preview"))
                || v.windows(9).any(|w| w.eq_ignore_ascii_case(b"prerender"))
        }
    })
}

/// Shortens `text` to at most `max` bytes at a character boundary, counting the cut.
fn bounded<'a>(text: &'a str, max: usize, cuts: &mut Cuts) -> Cow<'a, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    cuts.add(CutReason::ValueTooLong);
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(text[..end].to_owned())
}

/// A hit being assembled from parameters.
#[derive(Debug)]
pub struct Draft<'a> {
    limits: &'a LimitsConfig,
    kind: Option<String>,
    site_id: Option<String>,
    /// `st`: the send time, applied only if the URL's signature turns out valid.
    sent_at_secs: Option<u64>,
    /// `u`: a click's target.
    target: Option<String>,
    /// A `sig` parameter was seen: the URL claims to be signed and must be checked.
    signed: bool,
    /// `eid`, when given and a UUID.
    client_event_id: Option<Uuid>,
    /// Boxed from the start: the hit then moves as a pointer, from here through the channel to
    /// the batcher (its fields are most of a kilobyte; the copies were measured with callgrind).
    fields: Box<Hit>,
    params: usize,
    cuts: Cuts,
}

impl<'a> Draft<'a> {
    /// Starts a hit from what the request says, taking its header values (a `/collect` request
    /// of several events gives each a clone).
    pub fn new(
        meta: RequestMeta,
        transport: Transport,
        edge_id: &str,
        limits: &'a LimitsConfig,
    ) -> Draft<'a> {
        let fields = Box::new(Hit {
            schema_version: SCHEMA_VERSION,
            event_id: Uuid::nil(),
            received_at_ms: meta.received_at_ms,
            edge_id: edge_id.to_owned(),
            transport,
            kind: String::new(),
            site_id: String::new(),
            client_ip: meta.client_ip,
            user_agent: meta.user_agent,
            referer: meta.referer,
            accept_language: meta.accept_language,
            dnt: meta.dnt,
            sec_gpc: meta.sec_gpc,
            host: meta.host,
            path: meta.path,
            head_request: meta.head_request,
            prefetch: meta.prefetch,
            url: None,
            page_referrer: None,
            title: None,
            user_id: None,
            campaign: None,
            source: None,
            medium: None,
            content: None,
            term: None,
            variant: None,
            message_id: None,
            value: None,
            currency: None,
            props: Vec::new(),
            geo_country: None,
            geo_region: None,
            geo_city: None,
            asn: None,
            as_org: None,
            visitor_id: None,
            ip_hash: None,
            anonymized: false,
            user_agent_class: None,
            opted_out: meta.opted_out,
            signature: None,
            sent_at_ms: None,
            unverified: false,
            cut_fields: 0,
        });
        Draft {
            limits,
            kind: None,
            site_id: None,
            sent_at_secs: None,
            target: None,
            signed: false,
            client_event_id: None,
            fields,
            params: 0,
            cuts: meta.cuts,
        }
    }

    /// Applies one decoded parameter. Well-known names fill typed fields; every other name is
    /// kept as a custom property. Empty values are treated as absent.
    pub fn param(&mut self, key: &str, value: &str) {
        if matches!(key, params::CACHE_BUSTER | params::CACHE_BUSTER_UNDERSCORE) {
            // Cache busters exist only to defeat caches; they carry nothing to store. Not counted
            // against `max_params` either: anyone may add them to a signed URL, so counting them
            // would let a stranger push signed parameters out.
            return;
        }
        if key == params::SIGNATURE {
            // Noted here, while the query is parsed anyway, so unsigned pixels need no second scan;
            // and before the limit, so a signature past it is still checked (and found wanting).
            self.signed = true;
        }
        self.params += 1;
        if self.params > self.limits.max_params {
            self.cuts.add(CutReason::TooManyParams);
            return;
        }
        if key.is_empty() || value.is_empty() {
            return;
        }
        if key.len() > self.limits.max_key_bytes {
            self.cuts.add(CutReason::KeyTooLong);
            return;
        }
        match key {
            // The signature's own parameters say nothing about the visitor (see `links`).
            params::KEY_ID | params::EXPIRES | params::SIGNATURE => return,
            params::SENT_AT => {
                // Seconds, and not in the future beyond a day of clock skew: a time in
                // milliseconds or from a broken clock would make every open look instant.
                let latest = self.fields.received_at_ms / 1000 + 86_400;
                match value.trim().parse::<u64>() {
                    Ok(secs) if secs > latest => self.cuts.add(CutReason::BadNumber),
                    Ok(secs) if self.sent_at_secs.is_none() => self.sent_at_secs = Some(secs),
                    Ok(_) => self.cuts.add(CutReason::Duplicate),
                    Err(_) => self.cuts.add(CutReason::BadNumber),
                }
                return;
            }
            params::CLIENT_EVENT_ID => {
                match Uuid::try_parse(value.trim()) {
                    // A constant a client sends for every event would fold them all into one.
                    Ok(id) if id.is_nil() || id.is_max() => self.cuts.add(CutReason::BadEventId),
                    Ok(id) if self.client_event_id.is_none() => self.client_event_id = Some(id),
                    Ok(_) => self.cuts.add(CutReason::Duplicate),
                    Err(_) => self.cuts.add(CutReason::BadEventId),
                }
                return;
            }
            params::TARGET => {
                // Kept whole: a cut target would redirect somewhere else.
                if self.target.is_some() {
                    self.cuts.add(CutReason::Duplicate);
                } else {
                    self.target = Some(value.to_owned());
                }
                return;
            }
            _ => {}
        }
        let value = bounded(value, self.limits.max_value_bytes, &mut self.cuts);
        let f = &mut self.fields;
        let slot = match key {
            params::KIND => &mut self.kind,
            params::SITE => &mut self.site_id,
            params::URL => &mut f.url,
            params::PAGE_REFERRER => &mut f.page_referrer,
            params::TITLE => &mut f.title,
            params::USER_ID => &mut f.user_id,
            params::CAMPAIGN | params::UTM_CAMPAIGN => &mut f.campaign,
            params::SOURCE | params::UTM_SOURCE => &mut f.source,
            params::MEDIUM | params::UTM_MEDIUM => &mut f.medium,
            params::CONTENT | params::UTM_CONTENT => &mut f.content,
            params::TERM | params::UTM_TERM => &mut f.term,
            params::VARIANT => &mut f.variant,
            params::MESSAGE_ID => &mut f.message_id,
            params::VALUE => {
                match value.trim().parse::<f64>() {
                    Ok(v) if v.is_finite() && f.value.is_none() => f.value = Some(v),
                    Ok(v) if v.is_finite() => self.cuts.add(CutReason::Duplicate),
                    _ => self.cuts.add(CutReason::BadNumber),
                }
                return;
            }
            params::CURRENCY => {
                let code = value.trim();
                if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
                    self.cuts.add(CutReason::BadCurrency);
                } else if f.currency.is_some() {
                    self.cuts.add(CutReason::Duplicate);
                } else {
                    f.currency = Some(code.to_ascii_uppercase());
                }
                return;
            }
            _ => {
                f.props.push((key.to_owned(), value.into_owned()));
                return;
            }
        };
        if slot.is_some() {
            self.cuts.add(CutReason::Duplicate);
        } else {
            *slot = Some(value.into_owned());
        }
    }

    /// Applies a custom property that must not be read as a well-known name (JSON `props`).
    pub fn prop(&mut self, key: &str, value: &str) {
        self.params += 1;
        if self.params > self.limits.max_params {
            self.cuts.add(CutReason::TooManyParams);
        } else if key.is_empty() || value.is_empty() {
            // Absent, as in `param`: nothing to check or keep.
        } else if key.len() > self.limits.max_key_bytes {
            self.cuts.add(CutReason::KeyTooLong);
        } else {
            let value = bounded(value, self.limits.max_value_bytes, &mut self.cuts).into_owned();
            self.fields.props.push((key.to_owned(), value));
        }
    }

    /// The site id given so far.
    pub fn site(&self) -> Option<&str> {
        self.site_id.as_deref()
    }

    /// A click's target (`u=`), as given.
    pub fn target(&self) -> Option<&str> {
        self.target.as_deref()
    }

    /// When the edge received the request, ms since the epoch.
    pub fn received_at_ms(&self) -> u64 {
        self.fields.received_at_ms
    }

    /// Whether the query carried a `sig` parameter.
    pub fn is_signed(&self) -> bool {
        self.signed
    }

    /// Sets the kind when the request did not (`click` on `/c`).
    pub fn default_kind(&mut self, kind: &str) {
        self.kind.get_or_insert_with(|| kind.to_owned());
    }

    /// Records what the edge found checking the URL's signature, and returns what was recorded
    /// (a valid MAC over parameters the draft could not all keep counts as invalid). The send
    /// time (`st`) is believed only from a valid one.
    pub fn signature(&mut self, signature: Signature) -> Signature {
        // The MAC covers the whole query, but the draft keeps only what fits its limits: if a
        // signed parameter was left out, what is stored is not what was signed.
        let dropped_some =
            self.cuts.get(CutReason::TooManyParams) + self.cuts.get(CutReason::KeyTooLong) > 0;
        let signature = match signature {
            Signature::Valid if dropped_some => Signature::Invalid,
            s => s,
        };
        self.fields.signature = Some(signature);
        if signature == Signature::Valid {
            self.fields.sent_at_ms = self.sent_at_secs.map(|s| s.saturating_mul(1000));
        }
        signature
    }

    /// Records a field that was dropped before it could be applied.
    pub fn cut(&mut self, reason: CutReason) {
        self.cuts.add(reason);
    }

    /// A JSON member whose value is an array or object where text was expected: it counts as a
    /// parameter, as any other member does, and is cut.
    fn wrong_type(&mut self) {
        self.params += 1;
        if self.params > self.limits.max_params {
            self.cuts.add(CutReason::TooManyParams);
        } else {
            self.cuts.add(CutReason::BadType);
        }
    }

    /// Counts the lone surrogates replaced in a JSON text.
    fn surrogates(&mut self, text: &json::Text<'_>) {
        for _ in 0..text.replaced {
            self.cuts.add(CutReason::LoneSurrogate);
        }
    }

    /// Validates and completes the hit, giving it its `event_id`. The cuts are returned either
    /// way so the caller can count them.
    pub fn finish(mut self) -> (Result<Box<Hit>, InvalidReason>, Cuts) {
        let result = (|| {
            let site = self.site_id.take().ok_or(InvalidReason::MissingSite)?;
            if site.len() > 64
                || !site
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(InvalidReason::BadSite);
            }
            let mut kind = self.kind.take().unwrap_or_else(|| DEFAULT_KIND.to_owned());
            kind.make_ascii_lowercase();
            if kind.len() > 64
                || !kind.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
                })
            {
                return Err(InvalidReason::BadKind);
            }
            let mut hit = self.fields;
            if hit.url.is_none() {
                // A click's page is where it leads.
                hit.url = self
                    .target
                    .take()
                    .map(|t| bounded(&t, self.limits.max_value_bytes, &mut self.cuts).into_owned());
            }
            hit.site_id = site;
            hit.kind = kind;
            hit.event_id = match self.client_event_id {
                Some(client) => client_bound_event_id(&hit.site_id, client),
                None => event_id(hit.received_at_ms),
            };
            hit.cut_fields = self.cuts.total();
            Ok(hit)
        })();
        (result, self.cuts)
    }
}

/// Bytes the edge may add to a hit after it is built (place, AS organisation, visitor id, IP hash):
/// names from the GeoIP databases and fixed-size ids, far below this.
const ADDED_AFTER_BUILD_BYTES: usize = 2048;

/// An upper bound on one Kafka message the edge can produce under `limits`, in bytes: its key
/// (at most a `uid`, so `max_value_bytes`) and the encoding of the largest hit it can build.
///
/// That hit has every header it keeps at `max_value_bytes` of `"` (two bytes each in JSON) and
/// `max_params` custom properties whose names and values are at their limits of U+0001 (six bytes
/// each, `\u0001`: nothing costs more); well-known fields count against `max_params` too and carry
/// no name, so properties are the worst case. Events per request and body limits do not enter:
/// each event is its own message.
pub fn largest_message_bytes(limits: &LimitsConfig, edge_id: &str) -> usize {
    // Counted up from a few small hits, never built at full size: the encoded length grows
    // linearly with the value length (every header and property value), the name length and the
    // number of properties, so the slopes measured on small hits give the bound by arithmetic,
    // whatever the limits are.
    let len = |props: usize, key: usize, value: usize| {
        let small = LimitsConfig {
            max_params: props.max(1),
            max_key_bytes: key,
            max_value_bytes: value,
            ..limits.clone()
        };
        let mut encoded = Vec::new();
        if let Some(hit) = largest_hit(&small, edge_id, props) {
            crate::wire::encode(&hit, &mut encoded);
        }
        encoded.len() as u128
    };
    let (k0, v0) = (8, 16);
    let base = len(0, k0, v0);
    let per_value_byte = len(0, k0, 2 * v0).saturating_sub(base) / v0 as u128;
    // One more property adds its own bytes and a comma.
    let property = len(1, k0, v0).saturating_sub(base) + 1;
    let per_property_key_byte =
        (len(1, 2 * k0, v0).saturating_sub(base) + 1).saturating_sub(property) / k0 as u128;
    let per_property_value_byte = (len(1, k0, 2 * v0).saturating_sub(len(0, k0, 2 * v0)) + 1)
        .saturating_sub(property)
        / v0 as u128;
    if base == 0 {
        // Unreachable: the site and kind are valid. No bound is then the safe answer.
        return usize::MAX;
    }
    let (p, k, v) = (
        limits.max_params as u128,
        limits.max_key_bytes as u128,
        limits.max_value_bytes as u128,
    );
    let hit = base
        + per_value_byte * v.saturating_sub(v0 as u128)
        + p * (property
            + per_property_key_byte * k.saturating_sub(k0 as u128)
            + per_property_value_byte * v.saturating_sub(v0 as u128));
    // The key is at most a `uid`, so `max_value_bytes`.
    usize::try_from(v + hit + ADDED_AFTER_BUILD_BYTES as u128).unwrap_or(usize::MAX)
}

/// The largest hit with `props` properties (see [`largest_message_bytes`]).
fn largest_hit(limits: &LimitsConfig, edge_id: &str, props: usize) -> Option<Hit> {
    let quotes = "\"".repeat(limits.max_value_bytes);
    let mut headers = HeaderMap::new();
    for name in [USER_AGENT, REFERER, ACCEPT_LANGUAGE, HOST] {
        headers.insert(
            name,
            HeaderValue::from_str(&quotes).expect("`\"` is a header character"),
        );
    }
    for name in ["dnt", "sec-gpc"] {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_str(&quotes).expect("`\"` is a header character"),
        );
    }
    let ip = IpAddr::from([0xffff_u16; 8]);
    let meta = RequestMeta::new(u64::MAX / 2, Some(ip), "/collect", &headers, limits);
    let mut draft = Draft::new(meta, Transport::Beacon, edge_id, limits);
    draft.site_id = Some("s".repeat(64));
    draft.kind = Some("k".repeat(64));
    let name = "\u{1}".repeat(limits.max_key_bytes);
    let value = "\u{1}".repeat(limits.max_value_bytes);
    for _ in 0..props {
        draft.prop(&name, &value);
    }
    draft.finish().0.ok().map(|hit| *hit)
}

/// A UUIDv7 for a hit received at `ms`. `NoContext` fills the sub-millisecond bits at random from
/// a thread-local generator: no lock shared between requests, unlike `Uuid::now_v7`'s counter.
fn event_id(ms: u64) -> Uuid {
    Uuid::new_v7(Timestamp::from_unix(
        NoContext,
        ms / 1000,
        ((ms % 1000) * 1_000_000) as u32,
    ))
}

/// The event id of a hit that carries a client-made id: a UUIDv5 (RFC 9562 §5.5) of the client
/// id in a namespace of the site's own. A retry with the same id gets the same `event_id`, which
/// the stored table's dedup folds; another site's ids, or a client guessing ids, can never land
/// on this site's events.
fn client_bound_event_id(site: &str, client: Uuid) -> Uuid {
    let site_namespace = Uuid::new_v5(
        &Uuid::NAMESPACE_URL,
        format!("pixelpipe:site:{site}").as_bytes(),
    );
    Uuid::new_v5(&site_namespace, client.as_bytes())
}

/// Applies a query string (without `?`) to a draft. Returns `Err` when it is too long to read.
pub fn apply_query(draft: &mut Draft<'_>, query: &str) -> Result<(), InvalidReason> {
    if query.len() > draft.limits.max_query_bytes {
        return Err(InvalidReason::QueryTooLong);
    }
    for pair in form::pairs(query) {
        match pair {
            Some((k, v)) => draft.param(&k, &v),
            None => draft.cut(CutReason::BadEncoding),
        }
    }
    Ok(())
}

/// Applies the members of one `/collect` event (see `json`) from `body`, as [`apply_query`]
/// applies a query's parameters: in the order sent, each member (and each member of `props`)
/// counted against `limits.max_params`, a repeated well-known name counted `duplicate`. Strings,
/// numbers (as the text sent) and booleans are text; `null` is an empty value (absent, as `x=`
/// is); `props` may hold an object of custom properties; any other object or array is cut
/// (`bad_type`); a member whose name or value held bytes that are not UTF-8 is cut
/// (`bad_encoding`); a replaced lone surrogate is counted (`lone_surrogate`) and its field kept.
pub fn apply_json_object(
    draft: &mut Draft<'_>,
    body: &json::Body<'_>,
    members: &[(json::Text<'_>, json::Value<'_>)],
) {
    use json::Value;
    for (key, value) in members {
        if key.not_utf8 || matches!(value, Value::Scalar(t) if t.not_utf8) {
            draft.cut(CutReason::BadEncoding);
            continue;
        }
        draft.surrogates(key);
        match (key.text.as_ref(), value) {
            (params::PROPS, Value::Object(raw)) => {
                for (pk, pv) in body.members(raw).unwrap_or_default() {
                    if pk.not_utf8 || matches!(&pv, Value::Scalar(t) if t.not_utf8) {
                        draft.cut(CutReason::BadEncoding);
                        continue;
                    }
                    draft.surrogates(&pk);
                    match pv {
                        Value::Null => draft.prop(&pk.text, ""),
                        Value::Scalar(text) => {
                            draft.surrogates(&text);
                            draft.prop(&pk.text, &text.text);
                        }
                        Value::Object(_) | Value::Array => draft.wrong_type(),
                    }
                }
            }
            (name, Value::Null) => draft.param(name, ""),
            (name, Value::Scalar(text)) => {
                draft.surrogates(text);
                draft.param(name, &text.text);
            }
            (_, Value::Object(_) | Value::Array) => draft.wrong_type(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> LimitsConfig {
        LimitsConfig::default()
    }

    fn meta() -> RequestMeta {
        RequestMeta::new(
            1_700_000_000_123,
            Some("192.0.2.1".parse().unwrap()),
            "/p.gif",
            &HeaderMap::new(),
            &limits(),
        )
    }

    fn from_query(q: &str, limits: &LimitsConfig) -> (Result<Hit, InvalidReason>, Cuts) {
        let mut d = Draft::new(meta(), Transport::Pixel, "edge-1", limits);
        match apply_query(&mut d, q) {
            Ok(()) => {
                let (hit, cuts) = d.finish();
                (hit.map(|h| *h), cuts)
            }
            Err(e) => (Err(e), Cuts::default()),
        }
    }

    fn hit(q: &str) -> Hit {
        let (r, cuts) = from_query(q, &limits());
        assert_eq!(cuts.total(), 0, "{q}");
        r.unwrap()
    }

    #[test]
    fn every_well_known_parameter_fills_its_field() {
        let h = hit("e=Conversion&site=shop.example&url=https%3A%2F%2Fshop.example%2Fa%3Fb%3Dc&ref=https://s.example/\
             &title=Hello+World&uid=u42&campaign=spring&source=news&medium=email&content=hero&term=shoes\
             &variant=B&msg=m-1&value=19.90&currency=eur&cb=123&_=9&color=red&color=blue");
        assert_eq!(h.kind, "conversion");
        assert_eq!(h.site_id, "shop.example");
        assert_eq!(h.url.as_deref(), Some("https://shop.example/a?b=c"));
        assert_eq!(h.page_referrer.as_deref(), Some("https://s.example/"));
        assert_eq!(h.title.as_deref(), Some("Hello World"));
        assert_eq!(h.user_id.as_deref(), Some("u42"));
        assert_eq!(h.campaign.as_deref(), Some("spring"));
        assert_eq!(h.source.as_deref(), Some("news"));
        assert_eq!(h.medium.as_deref(), Some("email"));
        assert_eq!(h.content.as_deref(), Some("hero"));
        assert_eq!(h.term.as_deref(), Some("shoes"));
        assert_eq!(h.variant.as_deref(), Some("B"));
        assert_eq!(h.message_id.as_deref(), Some("m-1"));
        assert_eq!(h.value, Some(19.9));
        assert_eq!(h.currency.as_deref(), Some("EUR"));
        assert_eq!(
            h.props,
            vec![
                ("color".into(), "red".into()),
                ("color".into(), "blue".into())
            ]
        );
        assert_eq!(h.edge_id, "edge-1");
        assert_eq!(h.received_at_ms, 1_700_000_000_123);
        assert_eq!(h.event_id.get_version_num(), 7);
        let (secs, nanos) = h.event_id.get_timestamp().unwrap().to_unix();
        assert_eq!(
            secs * 1000 + u64::from(nanos) / 1_000_000,
            1_700_000_000_123
        );
    }

    #[test]
    fn utm_aliases_and_default_kind() {
        let h = hit("site=s&utm_campaign=c&utm_source=so&utm_medium=m&utm_content=co&utm_term=t");
        assert_eq!(h.kind, DEFAULT_KIND);
        assert_eq!(
            (h.campaign.unwrap(), h.source.unwrap(), h.medium.unwrap()),
            ("c".into(), "so".into(), "m".into())
        );
        assert_eq!(
            (h.content.unwrap(), h.term.unwrap()),
            ("co".into(), "t".into())
        );
    }

    #[test]
    fn custom_kinds_are_kept_and_folded() {
        assert_eq!(hit("site=s&e=Signup.Step-2_b").kind, "signup.step-2_b");
        assert_eq!(hit("site=s&e=open").kind, "open");
        assert_eq!(hit("site=s&e=impression").kind, "impression");
    }

    #[test]
    fn invalid_hits_say_why() {
        let l = limits();
        assert_eq!(from_query("e=open", &l).0, Err(InvalidReason::MissingSite));
        assert_eq!(from_query("", &l).0, Err(InvalidReason::MissingSite));
        assert_eq!(from_query("site=a%20b", &l).0, Err(InvalidReason::BadSite));
        assert_eq!(
            from_query(&format!("site={}", "a".repeat(65)), &l).0,
            Err(InvalidReason::BadSite)
        );
        assert_eq!(
            from_query("site=s&e=two%20words", &l).0,
            Err(InvalidReason::BadKind)
        );
        assert_eq!(
            from_query("site=s&e=%C3%A9", &l).0,
            Err(InvalidReason::BadKind)
        );
        let long = format!("site=s&x={}", "y".repeat(9000));
        assert_eq!(from_query(&long, &l).0, Err(InvalidReason::QueryTooLong));
        // A site that could not be decoded is a missing site, and the decoding is counted too.
        let (r, cuts) = from_query("site=%FF", &l);
        assert_eq!(r, Err(InvalidReason::MissingSite));
        assert_eq!(cuts.get(CutReason::BadEncoding), 1);
    }

    #[test]
    fn bad_encodings_drop_the_field_and_keep_the_hit() {
        for bad in ["%", "%4", "%zz", "%FF", "%C3%28", "%ED%A0%80"] {
            let (r, cuts) = from_query(&format!("site=s&title={bad}&campaign=ok"), &limits());
            let h = r.unwrap();
            assert_eq!(h.title, None, "{bad}");
            assert_eq!(h.campaign.as_deref(), Some("ok"));
            assert_eq!(cuts.get(CutReason::BadEncoding), 1, "{bad}");
            assert_eq!(h.cut_fields, 1);
        }
        // A bad key drops the pair too.
        let (r, cuts) = from_query("site=s&%ZZ=1", &limits());
        assert!(r.unwrap().props.is_empty());
        assert_eq!(cuts.get(CutReason::BadEncoding), 1);
    }

    #[test]
    fn limits_cut_and_count() {
        let l = LimitsConfig {
            max_params: 3,
            max_key_bytes: 4,
            max_value_bytes: 16,
            ..limits()
        };
        let (r, cuts) = from_query("site=s&a=1&b=2&c=3&d=4", &l);
        assert_eq!(r.unwrap().props.len(), 2);
        assert_eq!(cuts.get(CutReason::TooManyParams), 2);
        let (r, cuts) = from_query("site=s&toolong=1", &l);
        assert!(r.unwrap().props.is_empty());
        assert_eq!(cuts.get(CutReason::KeyTooLong), 1);
        // 15 ASCII bytes then a 2-byte character: cut before it, never inside it.
        let l = LimitsConfig {
            max_value_bytes: 16,
            ..limits()
        };
        let (r, cuts) = from_query("site=s&title=aaaaaaaaaaaaaaa%C3%A9zz", &l);
        assert_eq!(r.unwrap().title.as_deref(), Some("aaaaaaaaaaaaaaa"));
        assert_eq!(cuts.get(CutReason::ValueTooLong), 1);
    }

    #[test]
    fn typed_values_are_checked() {
        for bad in ["abc", "NaN", "inf", "1e400", "1,5"] {
            let (r, cuts) = from_query(&format!("site=s&value={bad}"), &limits());
            assert_eq!(r.unwrap().value, None, "{bad}");
            assert_eq!(cuts.get(CutReason::BadNumber), 1, "{bad}");
        }
        assert_eq!(hit("site=s&value=-3.5e2").value, Some(-350.0));
        for bad in ["EURO", "E1R", "%E2%82%AC"] {
            let (r, cuts) = from_query(&format!("site=s&currency={bad}"), &limits());
            assert_eq!(r.unwrap().currency, None, "{bad}");
            assert_eq!(cuts.get(CutReason::BadCurrency), 1, "{bad}");
        }
    }

    #[test]
    fn duplicates_keep_the_first() {
        let (r, cuts) = from_query(
            "site=a&site=b&campaign=x&utm_campaign=y&value=1&value=2",
            &limits(),
        );
        let h = r.unwrap();
        assert_eq!(
            (h.site_id.as_str(), h.campaign.as_deref(), h.value),
            ("a", Some("x"), Some(1.0))
        );
        assert_eq!(cuts.get(CutReason::Duplicate), 3);
    }

    #[test]
    fn empty_values_are_absent_not_cut() {
        let (r, cuts) = from_query("site=s&campaign=&&=x&flag", &limits());
        let h = r.unwrap();
        assert_eq!(h.campaign, None);
        assert!(h.props.is_empty());
        assert_eq!(cuts.total(), 0);
    }

    #[test]
    fn headers_are_read_bounded_and_checked() {
        let mut h = HeaderMap::new();
        h.insert(
            USER_AGENT,
            HeaderValue::from_static("Mozilla/5.0 (X11; Linux x86_64)"),
        );
        h.insert(
            REFERER,
            HeaderValue::from_static("https://news.example/story"),
        );
        h.insert(ACCEPT_LANGUAGE, HeaderValue::from_static("en-GB,en;q=0.8"));
        h.insert("dnt", HeaderValue::from_static("1"));
        h.insert("sec-gpc", HeaderValue::from_static("1"));
        h.insert(HOST, HeaderValue::from_bytes(b"px.\xffexample").unwrap());
        let l = LimitsConfig {
            max_value_bytes: 16,
            ..limits()
        };
        let m = RequestMeta::new(5, None, "/p.gif", &h, &l);
        assert_eq!(m.user_agent.as_deref(), Some("Mozilla/5.0 (X11"));
        assert_eq!(m.referer.as_deref(), Some("https://news.exa"));
        assert_eq!(m.accept_language.as_deref(), Some("en-GB,en;q=0.8"));
        assert_eq!(
            (m.dnt.as_deref(), m.sec_gpc.as_deref()),
            (Some("1"), Some("1"))
        );
        assert_eq!(m.host, None);
        assert_eq!(m.cuts.get(CutReason::ValueTooLong), 2);
        assert_eq!(m.cuts.get(CutReason::BadEncoding), 1);
        let mut d = Draft::new(m, Transport::Pixel, "e", &l);
        d.param("site", "s");
        let (r, _) = d.finish();
        assert_eq!(r.unwrap().cut_fields, 3, "header cuts count on the hit");
    }

    fn from_json(body: &str) -> (Result<Hit, InvalidReason>, Cuts) {
        from_json_bytes(body.as_bytes())
    }

    fn from_json_bytes(body: &[u8]) -> (Result<Hit, InvalidReason>, Cuts) {
        let l = limits();
        let body = json::Body::new(body);
        let events = body.events().unwrap();
        let members = body.members(events[0]).unwrap();
        let mut d = Draft::new(meta(), Transport::Beacon, "edge-1", &l);
        apply_json_object(&mut d, &body, &members);
        let (hit, cuts) = d.finish();
        (hit.map(|h| *h), cuts)
    }

    #[test]
    fn json_objects_map_like_parameters() {
        let (r, cuts) = from_json(
            r#"{"e":"conversion","site":"s","value":12.5,"currency":"usd","variant":7,"ok":true,
                "gone":null,"props":{"plan":"pro","site":"not-the-site","seats":3,"bad":[1]},"nested":{"a":1}}"#,
        );
        let h = r.unwrap();
        assert_eq!((h.kind.as_str(), h.site_id.as_str()), ("conversion", "s"));
        assert_eq!(
            (h.value, h.currency.as_deref(), h.variant.as_deref()),
            (Some(12.5), Some("USD"), Some("7"))
        );
        assert_eq!(h.transport, Transport::Beacon);
        let want: Vec<(String, String)> = [
            ("ok", "true"),
            ("plan", "pro"),
            ("site", "not-the-site"),
            ("seats", "3"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(h.props, want, "in the order sent");
        assert_eq!(cuts.get(CutReason::BadType), 2);
    }

    /// The same odd input reads the same whether it came as a query string or as JSON: repeats,
    /// bad numbers, limits, and custom properties in the order sent.
    #[test]
    fn json_and_query_strings_agree() {
        let many: String = (0..70).map(|i| format!("&p{i:02}=x")).collect();
        let many_json: String = (0..70).map(|i| format!(r#","p{i:02}":"x""#)).collect();
        let empties: String = (0..70).map(|i| format!("&e{i:02}=")).collect();
        let nulls: String = (0..70).map(|i| format!(r#","e{i:02}":null"#)).collect();
        let long_key = "k".repeat(65);
        let long_value = "v".repeat(3000);
        for (query, body) in [
            (
                "site=s&title=a&title=b&zeta=1&alpha=2&zeta=3".to_owned(),
                r#"{"site":"s","title":"a","title":"b","zeta":1,"alpha":2,"zeta":3}"#.to_owned(),
            ),
            (
                "site=s&value=1e400&value=abc&value=2.5&currency=euro".into(),
                r#"{"site":"s","value":1e400,"value":"abc","value":2.5,"currency":"euro"}"#.into(),
            ),
            (
                "site=s&uid=123456789012345678901234".into(),
                r#"{"site":"s","uid":123456789012345678901234}"#.into(),
            ),
            (
                format!("site=s{many}"),
                format!(r#"{{"site":"s"{many_json}}}"#),
            ),
            (
                format!("site=s&{long_key}=1&t={long_value}"),
                format!(r#"{{"site":"s","{long_key}":1,"t":"{long_value}"}}"#),
            ),
            (
                format!("site=s{empties}&last=kept"),
                format!(r#"{{"site":"s"{nulls},"last":"kept"}}"#),
            ),
            (
                format!("site=s{empties}&last=kept"),
                format!(r#"{{"site":"s","props":{{"e":null{nulls}}},"last":"kept"}}"#).replacen(
                    r#""e":null,"#,
                    "",
                    1,
                ),
            ),
            (
                "site=s&title=%FF&url=%2Fa&%FE=1".into(),
                "{\"site\":\"s\",\"title\":\"\u{FFFF}\",\"url\":\"/a\",\"\u{FFFE}\":1}".into(),
            ),
        ] {
            // The last case stands for bytes that are not UTF-8: U+FFFF and U+FFFE (EF BF BF,
            // EF BF BE) become 0xFF and 0xFE in the JSON sent.
            let json_bytes = body
                .replace('\u{FFFF}', "\u{1}")
                .replace('\u{FFFE}', "\u{2}")
                .into_bytes()
                .into_iter()
                .map(|b| match b {
                    1 => 0xFF,
                    2 => 0xFE,
                    b => b,
                })
                .collect::<Vec<u8>>();
            let (q, q_cuts) = from_query(&query, &limits());
            let (j, j_cuts) = from_json_bytes(&json_bytes);
            let (mut q, mut j) = (q.unwrap(), j.unwrap());
            assert_eq!(q_cuts, j_cuts, "{body}");
            (j.transport, j.event_id) = (q.transport, q.event_id);
            (q.received_at_ms, j.received_at_ms) = (0, 0);
            assert_eq!(q, j, "{body}");
        }
    }

    /// Members that are arrays or objects count against `limits.max_params` like any other.
    #[test]
    fn wrong_types_count_as_parameters() {
        let arrays: String = (0..70).map(|i| format!(r#","a{i:02}":[1]"#)).collect();
        let (r, cuts) = from_json(&format!(r#"{{"site":"s"{arrays},"last":"v"}}"#));
        assert!(r.unwrap().props.is_empty());
        assert_eq!(cuts.get(CutReason::BadType), 63);
        assert_eq!(cuts.get(CutReason::TooManyParams), 8);
    }

    /// One bad value costs that value, never the rest of its hit.
    #[test]
    fn a_bad_json_value_is_cut_and_the_hit_kept() {
        let (r, cuts) = from_json(r#"{"site":"s","title":"caf\ud83d","value":1e400,"url":"/a"}"#);
        let h = r.unwrap();
        assert_eq!(h.title.as_deref(), Some("caf\u{FFFD}"));
        assert_eq!(h.value, None);
        assert_eq!(h.url.as_deref(), Some("/a"));
        assert_eq!(cuts.get(CutReason::LoneSurrogate), 1);
        assert_eq!(cuts.get(CutReason::BadNumber), 1);
        assert_eq!(h.cut_fields, 2);
        let (r, cuts) = from_json(r#"{"site":"s","props":{"n\udc00":"\ud800"}}"#);
        assert_eq!(
            r.unwrap().props,
            vec![("n\u{FFFD}".to_owned(), "\u{FFFD}".to_owned())]
        );
        assert_eq!(cuts.get(CutReason::LoneSurrogate), 2);
        let (r, _) = from_json(
            r#"{"site":"s","uid":123456789012345678901234,"props":{"big":-98765432109876543210.5}}"#,
        );
        let h = r.unwrap();
        assert_eq!(h.user_id.as_deref(), Some("123456789012345678901234"));
        assert_eq!(
            h.props,
            vec![("big".to_owned(), "-98765432109876543210.5".to_owned())]
        );
    }

    /// The bound used to check `message.max.bytes` at start is above any hit a request can
    /// really make: every header and parameter at its limit, of the characters JSON writes
    /// longest, through the real query and JSON paths.
    #[test]
    fn no_hit_is_larger_than_the_message_bound() {
        let l = LimitsConfig {
            max_query_bytes: 1 << 20,
            max_params: 20,
            max_key_bytes: 10,
            max_value_bytes: 100,
        };
        let bound = largest_message_bytes(&l, "edge-1");
        let quotes = "\"".repeat(l.max_value_bytes + 5);
        let mut headers = HeaderMap::new();
        for name in [
            "user-agent",
            "referer",
            "accept-language",
            "host",
            "dnt",
            "sec-gpc",
        ] {
            headers.insert(
                HeaderName::from_static(name),
                HeaderValue::from_str(&quotes).unwrap(),
            );
        }
        let ip = "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap();
        let m = RequestMeta::new(1_700_000_000_123, Some(ip), "/collect", &headers, &l);
        // Names at the limit: the control characters, then two digits to tell them apart.
        let key = "%01".repeat(l.max_key_bytes - 2);
        let value = "%01".repeat(l.max_value_bytes);
        let mut query = format!("site={}&uid={value}&url={value}", "s".repeat(64));
        for i in 0..l.max_params {
            query.push_str(&format!("&{key}{i:02}={value}"));
        }
        let mut d = Draft::new(m.clone(), Transport::Pixel, "edge-1", &l);
        apply_query(&mut d, &query).unwrap();
        let from_query = d.finish().0.unwrap();
        let key = "\\u0001".repeat(l.max_key_bytes - 2);
        let value = "\\u0001".repeat(l.max_value_bytes);
        let mut body = format!(r#"{{"site":"s","title":"{value}","props":{{"#);
        for i in 0..l.max_params {
            body.push_str(&format!(r#""{key}{i:02}":"{value}","#));
        }
        body.push_str(r#""x":"y"}}"#);
        let body = json::Body::new(body.as_bytes());
        let events = body.events().unwrap();
        let mut d = Draft::new(m.clone(), Transport::Beacon, "edge-1", &l);
        apply_json_object(&mut d, &body, &body.members(events[0]).unwrap());
        let from_json = d.finish().0.unwrap();
        for hit in [from_query, from_json] {
            let mut encoded = Vec::new();
            crate::wire::encode(&hit, &mut encoded);
            let key_bytes = hit.user_id.as_ref().map_or(0, String::len);
            assert!(hit.props.len() >= l.max_params - 3, "{}", hit.props.len());
            assert!(hit
                .props
                .iter()
                .all(|(k, v)| k.len() == l.max_key_bytes && v.len() == l.max_value_bytes));
            assert!(
                key_bytes + encoded.len() <= bound,
                "{} + {} > {bound}",
                key_bytes,
                encoded.len()
            );
        }
    }

    #[test]
    fn speculative_requests_are_recognised() {
        let with = |name: &'static str, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(USER_AGENT, "x".parse().unwrap());
            h.insert(HeaderName::from_static(name), value.parse().unwrap());
            is_prefetch(&h)
        };
        assert!(with("sec-purpose", "prefetch"));
        assert!(with("sec-purpose", "prefetch;prerender"));
        assert!(with("purpose", "Prefetch"));
        assert!(with("x-purpose", "preview"));
        assert!(with("x-moz", "prefetch"));
        assert!(!with("sec-purpose", "navigate"));
        assert!(!with("x-other", "prefetch"), "only the known headers count");
        assert!(!is_prefetch(&HeaderMap::new()));
    }

    /// A client's retry (same `eid`) gets the same `event_id`; another site, or another id, a
    /// different one; without `eid`, each hit its own UUIDv7; a bad or repeated `eid` is cut.
    #[test]
    fn a_client_event_id_makes_retries_one_event_bound_to_its_site() {
        let eid = "0190a5d2-7c1e-7b3e-8f00-000000000001";
        let a = hit(&format!("site=shop&eid={eid}"));
        let retry = hit(&format!("site=shop&e=pageview&eid={}", eid.to_uppercase()));
        assert_eq!(a.event_id, retry.event_id);
        assert_eq!(a.event_id.get_version_num(), 5);
        let other_site = hit(&format!("site=blog&eid={eid}"));
        assert_ne!(a.event_id, other_site.event_id);
        let other_id = hit("site=shop&eid=0190a5d2-7c1e-7b3e-8f00-000000000002");
        assert_ne!(a.event_id, other_id.event_id);
        assert_ne!(hit("site=shop").event_id, hit("site=shop").event_id);

        let (r, cuts) = from_query("site=shop&eid=not-a-uuid", &limits());
        assert_eq!(r.unwrap().event_id.get_version_num(), 7);
        assert_eq!(cuts.get(CutReason::BadEventId), 1);
        for constant in [Uuid::nil(), Uuid::max()] {
            let (r, cuts) = from_query(&format!("site=shop&eid={constant}"), &limits());
            assert_eq!(r.unwrap().event_id.get_version_num(), 7, "{constant}");
            assert_eq!(cuts.get(CutReason::BadEventId), 1);
        }
        let (r, cuts) = from_query(
            &format!("site=shop&eid={eid}&eid=0190a5d2-7c1e-7b3e-8f00-000000000002"),
            &limits(),
        );
        assert_eq!(r.unwrap().event_id, a.event_id, "the first is kept");
        assert_eq!(cuts.get(CutReason::Duplicate), 1);
    }
}
