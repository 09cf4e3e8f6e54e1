//! The edge's policy for signed links, conversions and click redirects: the `[links]` settings,
//! what a URL's signature means for a hit, which click targets may be redirected to, and the
//! builder behind `pixelpipe-ingest url`.
//!
//! The cryptography is `signing`'s and the target syntax `redirect`'s; this module only decides:
//! [`Links::admit`] for a finished hit, [`Links::check_click`] for a click's redirect. It does not
//! touch requests or metrics (`service` does).

use std::collections::BTreeMap;
use std::fmt;

use pixelpipe_common::layers::{check, ConfigError};
use serde::{Deserialize, Serialize};

use crate::form;
use crate::hit::DropReason;
use crate::params;
use crate::redirect::{host_allowed, parse_target, Target, TargetError};
use crate::signing::Keyring;
use crate::wire::{kind, Hit, Signature};

/// Parameters [`Links::build`] sets itself (or that are never signed), so a caller cannot pass them
/// as plain parameters.
const RESERVED: [&str; 9] = [
    params::SITE,
    params::KIND,
    params::TARGET,
    params::SENT_AT,
    params::KEY_ID,
    params::EXPIRES,
    params::SIGNATURE,
    params::CACHE_BUSTER,
    params::CACHE_BUSTER_UNDERSCORE,
];

/// What happens to a conversion that is not validly signed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConversionPolicy {
    /// Stored like any hit (the signature status is still recorded). The default.
    #[default]
    Accept,
    /// Stored with `unverified` set: kept for debugging, never counted as a verified conversion.
    Flag,
    /// Not stored; counted as dropped with reason `unsigned_conversion`.
    Drop,
}

/// Overrides for one site; absent fields take the global value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SiteLinks {
    /// Overrides `links.unsigned_conversions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unsigned_conversions: Option<ConversionPolicy>,
    /// Replaces `links.redirect_allowlist` for this site.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_allowlist: Option<Vec<String>>,
}

/// The `[links]` settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinksConfig {
    /// Signing keys by id: `[links.keys] k2026a = "a secret of 16 bytes or more"`. Every key
    /// listed verifies; rotate by adding a key, signing with it, and removing the old one once
    /// its URLs no longer matter. Ids are 1 to 32 of `a-z 0-9 _ -`. Default none.
    pub keys: BTreeMap<String, String>,
    /// The key `pixelpipe-ingest url --sign` signs with. Default empty: the only key, when there
    /// is exactly one.
    pub sign_with: String,
    /// What happens to a conversion without a valid signature. Default `accept`.
    pub unsigned_conversions: ConversionPolicy,
    /// Hosts `GET /c` may redirect to without a signature: `shop.example` is that host only,
    /// `.shop.example` any host under it. Default none: only signed click URLs redirect.
    pub redirect_allowlist: Vec<String>,
    /// Per-site overrides, by site id.
    pub sites: BTreeMap<String, SiteLinks>,
}

impl LinksConfig {
    /// Checks the settings; the error names the wrong one.
    pub fn check(&self) -> Result<(), ConfigError> {
        // PIXELPIPE_LINKS__KEYS__<ID> arrives lower-cased; one spelling keeps the two sources
        // naming the same key.
        if let Some(id) = self
            .keys
            .keys()
            .find(|id| id.bytes().any(|b| b.is_ascii_uppercase()))
        {
            return Err(ConfigError::setting(
                "links.keys",
                format!("key id {id:?} must be lower case"),
            ));
        }
        let ring = self.keyring()?;
        check(
            self.sign_with.is_empty() || self.keys.contains_key(&self.sign_with),
            "links.sign_with",
            &format!("names no key in links.keys ({:?})", self.sign_with),
        )?;
        let lists = std::iter::once((
            "links.redirect_allowlist".to_owned(),
            &self.redirect_allowlist,
        ))
        .chain(self.sites.iter().filter_map(|(site, s)| {
            s.redirect_allowlist
                .as_ref()
                .map(|l| (format!("links.sites.{site}.redirect_allowlist"), l))
        }));
        for (setting, list) in lists {
            if let Some(bad) = list.iter().find(|e| !valid_allowlist_entry(e)) {
                return Err(ConfigError::setting(
                    setting,
                    format!("{bad:?} is not a host name (or .domain for its subdomains)"),
                ));
            }
        }
        let requires = std::iter::once((
            "links.unsigned_conversions".to_owned(),
            self.unsigned_conversions,
        ))
        .chain(self.sites.iter().filter_map(|(site, s)| {
            s.unsigned_conversions
                .map(|p| (format!("links.sites.{site}.unsigned_conversions"), p))
        }));
        for (setting, policy) in requires {
            check(
                policy == ConversionPolicy::Accept || !ring.is_empty(),
                &setting,
                "requires signed conversions, but links.keys is empty: none could be valid",
            )?;
        }
        Ok(())
    }

    fn keyring(&self) -> Result<Keyring, ConfigError> {
        Keyring::new(self.keys.clone().into_iter().collect())
            .map_err(|e| ConfigError::setting("links.keys", e.to_string()))
    }
}

fn valid_allowlist_entry(entry: &str) -> bool {
    let host = entry.strip_prefix('.').unwrap_or(entry);
    !host.is_empty()
        && !host.starts_with(['.', '-'])
        && !host.ends_with(['.', '-'])
        && !host.contains("..")
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
}

/// The policy, ready to use on the request path.
#[derive(Debug, Clone)]
pub struct Links {
    keyring: Keyring,
    config: LinksConfig,
}

impl Links {
    /// From checked settings.
    pub fn new(config: &LinksConfig) -> Result<Links, ConfigError> {
        config.check()?;
        Ok(Links {
            keyring: config.keyring()?,
            config: config.clone(),
        })
    }

    /// The signature status of a request's query ([`Signature::Absent`] without `sig`). The edge
    /// calls it only for queries whose parser saw a `sig`, so unsigned pixels pay nothing.
    pub fn verify(&self, path: &str, raw_query: &str, now_unix_secs: u64) -> Signature {
        self.keyring.verify_query(path, raw_query, now_unix_secs)
    }

    /// The conversion policy of `site`.
    pub fn conversion_policy(&self, site: &str) -> ConversionPolicy {
        self.config
            .sites
            .get(site)
            .and_then(|s| s.unsigned_conversions)
            .unwrap_or(self.config.unsigned_conversions)
    }

    /// Whether `/c` may redirect to `host` for `site` without a signature.
    pub fn redirect_allowed(&self, site: Option<&str>, host: &str) -> bool {
        let list = site
            .and_then(|s| self.config.sites.get(s))
            .and_then(|s| s.redirect_allowlist.as_ref())
            .unwrap_or(&self.config.redirect_allowlist);
        host_allowed(host, list)
    }

    /// Applies the site's conversion policy to a finished hit: a conversion without a valid
    /// signature is kept (`accept`), kept with `unverified` set (`flag`), or refused with
    /// [`DropReason::UnsignedConversion`] (`drop`). Every other hit passes untouched.
    pub fn admit(&self, hit: &mut Hit) -> Result<(), DropReason> {
        if hit.kind != kind::CONVERSION || hit.signature == Some(Signature::Valid) {
            return Ok(());
        }
        match self.conversion_policy(&hit.site_id) {
            ConversionPolicy::Accept => Ok(()),
            ConversionPolicy::Flag => {
                hit.unverified = true;
                Ok(())
            }
            ConversionPolicy::Drop => Err(DropReason::UnsignedConversion),
        }
    }

    /// Whether `GET /c` may redirect to `target` for `site`, given what the edge found checking
    /// the URL's signature (`None`: not signed): a valid signature, computed over the whole query
    /// and so covering `u`, admits any target; otherwise the host must be on the site's allowlist.
    pub fn check_click(
        &self,
        site: Option<&str>,
        target: &Target,
        signature: Option<Signature>,
    ) -> Result<(), ClickRefusal> {
        if signature == Some(Signature::Valid) || self.redirect_allowed(site, &target.host) {
            return Ok(());
        }
        Err(match signature {
            Some(_) => ClickRefusal::BadSignature,
            None => ClickRefusal::NotAllowed,
        })
    }

    /// Builds a pixel or click URL (see [`LinkRequest`]).
    pub fn build(&self, req: &LinkRequest) -> Result<String, String> {
        let mut seen = std::collections::BTreeSet::new();
        for (name, _) in &req.params {
            if RESERVED.contains(&name.as_str()) {
                return Err(format!(
                    "parameter {name:?} is set by its own option or by the edge, not as a parameter"
                ));
            }
            if !seen.insert(name.as_str()) {
                return Err(format!(
                    "parameter {name:?} is given twice: a signed URL names each parameter once"
                ));
            }
        }
        let mut pairs: Vec<(String, String)> = vec![(params::SITE.into(), req.site.clone())];
        if let Some(kind) = &req.kind {
            pairs.push((params::KIND.into(), kind.clone()));
        }
        pairs.extend(req.params.iter().cloned());
        let path = match &req.click_target {
            Some(target) => {
                parse_target(target).map_err(|e| format!("click target: {e}"))?;
                pairs.push((params::TARGET.into(), target.clone()));
                "/c"
            }
            None => "/p.gif",
        };
        if let Some(sent) = req.sent_at_unix_secs {
            if !req.sign {
                return Err("a send time is only trusted when signed: add --sign".into());
            }
            pairs.push((params::SENT_AT.into(), sent.to_string()));
        }
        if req.sign {
            if self.config.keys.is_empty() {
                return Err("no signing key: add one under links.keys".into());
            }
            let key = match (&req.key_id, self.config.sign_with.as_str()) {
                (Some(k), _) => k.clone(),
                (None, "") if self.config.keys.len() == 1 => {
                    self.config.keys.keys().next().cloned().unwrap_or_default()
                }
                (None, "") => {
                    return Err(format!(
                    "which key? links.keys has {} keys and links.sign_with is empty: pass --key-id",
                    self.config.keys.len()
                ))
                }
                (None, k) => k.to_owned(),
            };
            self.keyring
                .sign_params(&key, path, &mut pairs, req.expires_at_unix_secs)
                .map_err(|e| e.to_string())?;
        } else if req.expires_at_unix_secs.is_some() {
            return Err("an expiry only means something on a signed URL: add --sign".into());
        }
        Ok(form::url(&req.base_url, path, &pairs))
    }
}

/// Why `GET /c` answered 400 instead of redirecting (the `reason` label of
/// `pixelpipe_ingest_clicks_refused_total`). Its text is the one-line body of the answer; it never
/// repeats the target, which is attacker-controlled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClickRefusal {
    /// The target is not a safe absolute URL (see `redirect`).
    Target(TargetError),
    /// Not signed, and the target's host is not on the site's redirect allowlist.
    NotAllowed,
    /// The signature is not valid, and the target's host is not on the allowlist.
    BadSignature,
    /// The query is longer than `limits.max_query_bytes`.
    QueryTooLong,
    /// The click is not a valid hit (no site, or a bad kind): it would be recorded nowhere, so it
    /// is not an untracked way through the edge either.
    InvalidHit,
    /// The target cannot be a `Location` header value. `redirect::parse_target` admits printable
    /// ASCII only, so this is not expected; it is counted as a bad character if it ever happens.
    NotAHeaderValue,
}

impl ClickRefusal {
    /// The labels of the refusals that are not about the target's syntax (those are
    /// [`TargetError::REASONS`]), to pre-register metric labels.
    pub const POLICY_REASONS: [&'static str; 4] = [
        "not_allowed",
        "bad_signature",
        "query_too_long",
        "invalid_hit",
    ];

    /// Metric label value.
    pub fn as_str(&self) -> &'static str {
        match self {
            ClickRefusal::Target(e) => e.as_str(),
            ClickRefusal::NotAllowed => "not_allowed",
            ClickRefusal::BadSignature => "bad_signature",
            ClickRefusal::QueryTooLong => "query_too_long",
            ClickRefusal::InvalidHit => "invalid_hit",
            ClickRefusal::NotAHeaderValue => "bad_character",
        }
    }
}

impl fmt::Display for ClickRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClickRefusal::Target(e) => e.fmt(f),
            ClickRefusal::NotAllowed => {
                f.write_str("the target host is not on this site's redirect allowlist")
            }
            ClickRefusal::BadSignature => {
                f.write_str("the link's signature is not valid and the target host is not allowed")
            }
            ClickRefusal::QueryTooLong => f.write_str("the query is too long"),
            ClickRefusal::InvalidHit => f.write_str("the click has no valid site or kind"),
            ClickRefusal::NotAHeaderValue => f.write_str("the target cannot be a header value"),
        }
    }
}

/// What `pixelpipe-ingest url` is asked to build.
#[derive(Debug, Clone, Default)]
pub struct LinkRequest {
    /// Where the edge is reached, e.g. `https://px.shop.example`.
    pub base_url: String,
    /// Site id.
    pub site: String,
    /// Hit kind (`e`), e.g. `open`; `None` leaves the edge's default (`pageview`, or `click`
    /// on `/c`).
    pub kind: Option<String>,
    /// Further parameters in order (`campaign`, `msg`, custom properties...).
    pub params: Vec<(String, String)>,
    /// Build a click URL (`/c`) redirecting here, instead of a pixel URL.
    pub click_target: Option<String>,
    /// Sign the URL.
    pub sign: bool,
    /// Sign with this key instead of `links.sign_with`.
    pub key_id: Option<String>,
    /// The signature stops being valid after this time.
    pub expires_at_unix_secs: Option<u64>,
    /// When the email is sent, so that opens too soon after can be flagged.
    pub sent_at_unix_secs: Option<u64>,
}

/// The `<img>` tag for a pixel URL in an HTML email: 1x1, no border, empty alt text so that a
/// mail client that blocks images shows nothing.
pub fn img_tag(url: &str) -> String {
    let escaped = url
        .replace('&', "&amp;")
        .replace('"', "&quot;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!(
        "<img src=\"{escaped}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LinksConfig {
        let mut c = LinksConfig {
            keys: [
                ("k1".to_owned(), "first-secret-0123456789".to_owned()),
                ("k2".to_owned(), "second-secret-0123456789".to_owned()),
            ]
            .into(),
            sign_with: "k2".into(),
            redirect_allowlist: vec!["shop.example".into(), ".cdn.example".into()],
            ..LinksConfig::default()
        };
        c.sites.insert(
            "strict".into(),
            SiteLinks {
                unsigned_conversions: Some(ConversionPolicy::Drop),
                redirect_allowlist: Some(vec![]),
            },
        );
        c
    }

    #[test]
    fn settings_errors_name_the_setting() {
        let setting = |c: &LinksConfig| match c.check().unwrap_err() {
            ConfigError::Setting { setting, reason } => (setting, reason),
            other => panic!("{other}"),
        };
        let mut c = config();
        c.sign_with = "k9".into();
        assert_eq!(setting(&c).0, "links.sign_with");
        let mut c = config();
        c.keys.insert("K4".into(), "long-enough-secret-0123".into());
        let (name, reason) = setting(&c);
        assert!(
            name == "links.keys" && reason.contains("lower case"),
            "{reason}"
        );
        let mut c = config();
        c.keys.insert("k3".into(), "short".into());
        let (name, reason) = setting(&c);
        assert!(
            name == "links.keys" && reason.contains("\"k3\""),
            "{reason}"
        );
        let mut c = config();
        c.redirect_allowlist.push("https://evil.example/".into());
        assert_eq!(setting(&c).0, "links.redirect_allowlist");
        let mut c = config();
        c.sites.get_mut("strict").unwrap().redirect_allowlist = Some(vec!["Bad Host".into()]);
        assert_eq!(setting(&c).0, "links.sites.strict.redirect_allowlist");
        let c = LinksConfig {
            unsigned_conversions: ConversionPolicy::Flag,
            ..LinksConfig::default()
        };
        assert_eq!(setting(&c).0, "links.unsigned_conversions");
        assert!(config().check().is_ok());
    }

    #[test]
    fn built_urls_verify_and_carry_what_was_asked() {
        let links = Links::new(&config()).unwrap();
        let url = links
            .build(&LinkRequest {
                base_url: "https://px.example/".into(),
                site: "shop".into(),
                kind: Some("open".into()),
                params: vec![("campaign".into(), "spring sale".into())],
                sign: true,
                sent_at_unix_secs: Some(1_800_000_000),
                expires_at_unix_secs: Some(4_000_000_000),
                ..LinkRequest::default()
            })
            .unwrap();
        assert!(url.starts_with("https://px.example/p.gif?site=shop&e=open&campaign=spring%20sale&st=1800000000&kid=k2&exp=4000000000&sig="), "{url}");
        let query = url.split_once('?').unwrap().1;
        assert_eq!(
            links.verify("/p.gif", query, 1_800_000_100),
            Signature::Valid
        );
        assert_eq!(
            links.verify("/p.gif", "site=shop&e=open", 0),
            Signature::Absent,
            "unsigned"
        );
        // A click URL covers its target.
        let click = links
            .build(&LinkRequest {
                base_url: "https://px.example".into(),
                site: "shop".into(),
                click_target: Some("https://elsewhere.example/offer?id=7".into()),
                sign: true,
                key_id: Some("k1".into()),
                ..LinkRequest::default()
            })
            .unwrap();
        let query = click.split_once('?').unwrap().1;
        assert!(click.starts_with("https://px.example/c?"), "{click}");
        assert_eq!(links.verify("/c", query, 0), Signature::Valid);
        let tampered = query.replace("elsewhere.example", "evil.example");
        assert_eq!(links.verify("/c", &tampered, 0), Signature::Invalid);
    }

    #[test]
    fn builder_refuses_what_would_not_mean_anything() {
        let links = Links::new(&config()).unwrap();
        let base = LinkRequest {
            base_url: "https://px.example".into(),
            site: "shop".into(),
            ..LinkRequest::default()
        };
        for (req, needle) in [
            (
                LinkRequest {
                    sent_at_unix_secs: Some(1),
                    ..base.clone()
                },
                "--sign",
            ),
            (
                LinkRequest {
                    expires_at_unix_secs: Some(1),
                    ..base.clone()
                },
                "--sign",
            ),
            (
                LinkRequest {
                    click_target: Some("//evil.example".into()),
                    ..base.clone()
                },
                "click target",
            ),
            (
                LinkRequest {
                    sign: true,
                    key_id: Some("nope".into()),
                    ..base.clone()
                },
                "nope",
            ),
            (
                LinkRequest {
                    params: vec![("e".into(), "conversion".into())],
                    ..base.clone()
                },
                "own option",
            ),
            (
                LinkRequest {
                    params: vec![("plan".into(), "a".into()), ("plan".into(), "b".into())],
                    ..base.clone()
                },
                "twice",
            ),
        ] {
            let e = links.build(&req).unwrap_err();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn per_site_policy_and_allowlist() {
        let links = Links::new(&config()).unwrap();
        assert_eq!(links.conversion_policy("shop"), ConversionPolicy::Accept);
        assert_eq!(links.conversion_policy("strict"), ConversionPolicy::Drop);
        assert!(links.redirect_allowed(Some("shop"), "shop.example"));
        assert!(links.redirect_allowed(None, "img.cdn.example"));
        assert!(!links.redirect_allowed(Some("shop"), "evil.example"));
        assert!(
            !links.redirect_allowed(Some("strict"), "shop.example"),
            "the site's own (empty) list replaces the global one"
        );
    }

    #[test]
    fn admission_applies_the_conversion_policy_to_unsigned_conversions_only() {
        let mut c = config();
        c.sites.insert(
            "flagged".into(),
            SiteLinks {
                unsigned_conversions: Some(ConversionPolicy::Flag),
                ..SiteLinks::default()
            },
        );
        let links = Links::new(&c).unwrap();
        let hit = |site: &str, kind: &str, signature: Option<Signature>| {
            let mut h = crate::wire::testing::sample_hit();
            (h.site_id, h.kind, h.signature, h.unverified) =
                (site.into(), kind.into(), signature, false);
            h
        };
        let admitted = |mut h: Hit| links.admit(&mut h).map(|()| h.unverified);
        assert_eq!(admitted(hit("shop", "conversion", None)), Ok(false));
        assert_eq!(admitted(hit("flagged", "conversion", None)), Ok(true));
        assert_eq!(
            admitted(hit("flagged", "conversion", Some(Signature::Expired))),
            Ok(true)
        );
        assert_eq!(
            admitted(hit("strict", "conversion", Some(Signature::Invalid))),
            Err(DropReason::UnsignedConversion)
        );
        assert_eq!(
            admitted(hit("strict", "conversion", Some(Signature::Valid))),
            Ok(false)
        );
        assert_eq!(admitted(hit("strict", "open", None)), Ok(false));
    }

    #[test]
    fn clicks_redirect_when_signed_or_allowed() {
        let links = Links::new(&config()).unwrap();
        let target = |url: &str| parse_target(url).unwrap();
        let (allowed, elsewhere) = (
            target("https://shop.example/a"),
            target("https://partner.example/"),
        );
        assert_eq!(links.check_click(Some("shop"), &allowed, None), Ok(()));
        assert_eq!(
            links.check_click(Some("shop"), &elsewhere, Some(Signature::Valid)),
            Ok(())
        );
        assert_eq!(
            links.check_click(Some("shop"), &elsewhere, None),
            Err(ClickRefusal::NotAllowed)
        );
        assert_eq!(
            links.check_click(Some("shop"), &elsewhere, Some(Signature::Expired)),
            Err(ClickRefusal::BadSignature)
        );
        assert_eq!(
            links.check_click(Some("strict"), &allowed, None),
            Err(ClickRefusal::NotAllowed),
            "the site's own (empty) list"
        );
    }

    #[test]
    fn refusal_labels_are_the_listed_ones() {
        let policy = [
            ClickRefusal::NotAllowed,
            ClickRefusal::BadSignature,
            ClickRefusal::QueryTooLong,
            ClickRefusal::InvalidHit,
        ]
        .map(|r| r.as_str());
        assert_eq!(policy, ClickRefusal::POLICY_REASONS);
        assert!(TargetError::REASONS.contains(&ClickRefusal::NotAHeaderValue.as_str()));
        assert_eq!(
            ClickRefusal::Target(TargetError::NotHttp).as_str(),
            TargetError::NotHttp.as_str()
        );
    }

    #[test]
    fn img_tags_escape_the_url() {
        assert_eq!(
            img_tag("https://px.example/p.gif?a=1&b=\"x\""),
            "<img src=\"https://px.example/p.gif?a=1&amp;b=&quot;x&quot;\" width=\"1\" height=\"1\" alt=\"\" style=\"display:block;border:0;width:1px;height:1px\">"
        );
    }
}
