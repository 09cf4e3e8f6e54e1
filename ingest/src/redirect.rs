//! Click redirect targets: whether the `u` of `GET /c?site=..&u=<target>` is a safe absolute
//! `http(s)` URL to put in a `Location` header, and which host it points at.
//!
//! The edge redirects only when the click URL is validly signed (see `signing`) or the target's
//! host is on the site's allowlist ([`host_allowed`]); anything else would make the edge an open
//! redirect that phishing mail could hide behind. This module owns the syntax check and the
//! allowlist match. It does not decide which of the two conditions applies, read configuration,
//! count refusals or build the response.
//!
//! The check is deliberately stricter than the URL standard. Browsers repair many odd URLs (they
//! drop tabs and newlines, read `\` as `/`, accept `https:evil.com`), and each repair is a way to
//! make the host we checked differ from the host the browser visits. Refusing an odd but
//! legitimate URL costs one lost click; redirecting somewhere unintended costs far more.

/// Longest target accepted, in bytes.
pub const MAX_TARGET_LEN: usize = 2048;

/// A target that passed [`parse_target`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL exactly as given, to put in `Location`. Only printable ASCII, so it is a valid
    /// header value as is.
    pub url: String,
    /// The host, lower-cased, without the port; what the allowlist is matched against.
    pub host: String,
}

/// Why a target was refused. Messages never repeat the target itself: it is attacker-controlled
/// text that does not belong in logs unescaped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// `u` is absent or empty.
    #[error("no redirect target given")]
    Missing,
    /// Longer than [`MAX_TARGET_LEN`].
    #[error("redirect target is {len} bytes, more than the {MAX_TARGET_LEN} allowed")]
    TooLong {
        /// Length of the target in bytes.
        len: usize,
    },
    /// A space, control character, non-ASCII byte or backslash.
    #[error(
        "redirect target has a space, control character, non-ASCII byte or backslash at byte {at}"
    )]
    BadCharacter {
        /// Offset of the first such byte.
        at: usize,
    },
    /// Not starting with `http://` or `https://`.
    #[error("redirect target does not start with http:// or https://")]
    NotHttp,
    /// An `@` in the authority: `https://good.com@evil.com` goes to `evil.com`.
    #[error("redirect target has user info ('@') in its authority")]
    Userinfo,
    /// The host is empty or not a plain DNS name.
    #[error("redirect target host is not acceptable: {0}")]
    BadHost(&'static str),
    /// A port that is empty, not a number, or outside 1..=65535.
    #[error("redirect target port is not a number from 1 to 65535")]
    BadPort,
}

impl TargetError {
    /// Every [`TargetError::as_str`] label (to pre-register metric labels).
    pub const REASONS: [&'static str; 7] = [
        "missing",
        "too_long",
        "bad_character",
        "not_http",
        "userinfo",
        "bad_host",
        "bad_port",
    ];

    /// A short label for metrics, one of [`TargetError::REASONS`].
    pub fn as_str(&self) -> &'static str {
        match self {
            TargetError::Missing => "missing",
            TargetError::TooLong { .. } => "too_long",
            TargetError::BadCharacter { .. } => "bad_character",
            TargetError::NotHttp => "not_http",
            TargetError::Userinfo => "userinfo",
            TargetError::BadHost(_) => "bad_host",
            TargetError::BadPort => "bad_port",
        }
    }
}

/// Checks a redirect target, given as the already percent-decoded value of `u`.
///
/// Accepted: at most 2048 bytes, all printable ASCII (`0x21..=0x7E`, so internationalised names
/// must come punycoded) without `\`; starting with `http://` or `https://` (scheme in any case,
/// both slashes literal); an authority (up to the first `/`, `?` or `#`) without `@` or `%`,
/// made of a host and an optional `:port` (1 to 5 digits, 1..=65535). The host is letters,
/// digits, `-` and `.`, neither starting nor ending with `.` or `-`, without `..`. IPv6 literals
/// (`[::1]`) are refused: links in mail have no need for them and their syntax invites tricks.
/// IPv4 literals pass the syntax check; the allowlist or the signature is what admits a host.
pub fn parse_target(raw: &str) -> Result<Target, TargetError> {
    if raw.is_empty() {
        return Err(TargetError::Missing);
    }
    if raw.len() > MAX_TARGET_LEN {
        return Err(TargetError::TooLong { len: raw.len() });
    }
    // Browsers silently drop tabs and newlines and read `\` as `/`; refusing them outright means
    // the text checked below is the text the browser will follow.
    if let Some(at) = raw
        .bytes()
        .position(|b| !(0x21..=0x7E).contains(&b) || b == b'\\')
    {
        return Err(TargetError::BadCharacter { at });
    }
    // From here on every byte is ASCII, so byte offsets are char boundaries.
    let rest = strip_prefix_ignore_case(raw, "https://")
        .or_else(|| strip_prefix_ignore_case(raw, "http://"))
        .ok_or(TargetError::NotHttp)?;
    let authority = rest.find(['/', '?', '#']).map_or(rest, |end| &rest[..end]);
    if authority.is_empty() {
        return Err(TargetError::BadHost("it is empty"));
    }
    if authority.contains('@') {
        return Err(TargetError::Userinfo);
    }
    if authority.contains('%') {
        return Err(TargetError::BadHost("it is percent-encoded"));
    }
    if authority.starts_with('[') {
        return Err(TargetError::BadHost("IPv6 literals are not accepted"));
    }
    let (host, port) = match authority.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    check_host(host)?;
    if let Some(port) = port {
        check_port(port)?;
    }
    Ok(Target {
        url: raw.to_owned(),
        host: host.to_ascii_lowercase(),
    })
}

/// Whether `host` is on `allowlist`, comparing ASCII case-insensitively. An entry `example.com`
/// matches that host only. An entry with a leading dot, `.example.com`, matches every subdomain
/// (`a.example.com`, `a.b.example.com`) but neither `example.com` itself (list both to allow
/// both) nor `badexample.com`. Note that a subdomain entry trusts whoever controls names under
/// it: `evil.com.example.com` is allowed by `.example.com`, as it is a name inside example.com.
pub fn host_allowed(host: &str, allowlist: &[String]) -> bool {
    !host.is_empty()
        && allowlist.iter().any(|entry| {
            if entry.starts_with('.') {
                // The entry's own dot is the label boundary, so `badexample.com` cannot match;
                // requiring a longer host keeps a bare `.example.com` from matching itself.
                entry.len() > 1
                    && host.len() > entry.len()
                    && host.as_bytes()[host.len() - entry.len()..]
                        .eq_ignore_ascii_case(entry.as_bytes())
            } else {
                host.eq_ignore_ascii_case(entry)
            }
        })
}

/// `s` without `prefix`, compared ASCII case-insensitively; `None` when it does not start so.
fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.as_bytes().get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix.as_bytes()) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

fn check_host(host: &str) -> Result<(), TargetError> {
    if host.is_empty() {
        return Err(TargetError::BadHost("it is empty"));
    }
    if !host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(TargetError::BadHost(
            "it may only hold letters, digits, '-' and '.'",
        ));
    }
    // A trailing dot (`good.com.`) is a valid absolute name, but refused with the rest: no mail
    // link needs one, and it would need its own allowlist handling.
    if host.starts_with(['.', '-']) || host.ends_with(['.', '-']) {
        return Err(TargetError::BadHost("it starts or ends with '.' or '-'"));
    }
    if host.contains("..") {
        return Err(TargetError::BadHost("it has an empty label ('..')"));
    }
    Ok(())
}

fn check_port(port: &str) -> Result<(), TargetError> {
    let digits_only = (1..=5).contains(&port.len()) && port.bytes().all(|b| b.is_ascii_digit());
    match port.parse::<u32>() {
        Ok(n) if digits_only && (1..=65535).contains(&n) => Ok(()),
        _ => Err(TargetError::BadPort),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(raw: &str) -> &'static str {
        match parse_target(raw) {
            Ok(t) => panic!("{raw:?} was accepted as {t:?}"),
            Err(e) => e.as_str(),
        }
    }

    fn host(raw: &str) -> String {
        parse_target(raw).unwrap().host
    }

    #[test]
    fn attacks_are_refused_with_their_reason() {
        let cases = [
            ("", "missing"),
            ("//evil.com", "not_http"),
            ("https:evil.com", "not_http"),
            ("https:/evil.com", "not_http"),
            ("/\\evil.com", "bad_character"),
            ("\\\\evil.com", "bad_character"),
            ("https:\\\\evil.com", "bad_character"),
            ("https://evil.com\\@good.com", "bad_character"),
            ("https://good.com@evil.com", "userinfo"),
            ("https://good.com:pass@evil.com", "userinfo"),
            ("https://@evil.com", "userinfo"),
            // Still encoded (double-encoded in the query): the host would be decoded later.
            ("https://good.com%40evil.com", "bad_host"),
            ("javascript:alert(1)", "not_http"),
            ("data:text/html,x", "not_http"),
            ("ftp://good.com", "not_http"),
            ("https://good.com/\r\nSet-Cookie:x", "bad_character"),
            ("https://good.com\t.evil.com", "bad_character"),
            ("https://ev il.com", "bad_character"),
            ("https://évil.com", "bad_character"),
            ("https://good.com/\x7f", "bad_character"),
            ("https://good.com/\0", "bad_character"),
            ("https://good.com:99999/", "bad_port"),
            ("https://good.com:65536/", "bad_port"),
            ("https://good.com:0/", "bad_port"),
            ("https://good.com:/", "bad_port"),
            ("https://good.com:+80/", "bad_port"),
            ("https://good.com:000080/", "bad_port"),
            ("https://good.com:80:80/", "bad_port"),
            ("https://.com", "bad_host"),
            ("https://good.com.", "bad_host"),
            ("https://-good.com", "bad_host"),
            ("https://good..com", "bad_host"),
            ("https://good_com", "bad_host"),
            ("https://[::1]/", "bad_host"),
            ("https://", "bad_host"),
            ("https:///evil.com", "bad_host"),
            ("https://:443/", "bad_host"),
        ];
        for (raw, reason) in cases {
            assert_eq!(refused(raw), reason, "{raw:?}");
        }
        assert_eq!(
            refused(&format!("https://a.com/{}", "x".repeat(2048))),
            "too_long"
        );
    }

    #[test]
    fn decoded_userinfo_is_refused() {
        // `u=https://good.com%40evil.com` reaches parse_target decoded, with a plain `@`.
        let decoded = crate::form::percent_decode("https://good.com%40evil.com").unwrap();
        assert_eq!(refused(&decoded), "userinfo");
    }

    #[test]
    fn ordinary_urls_are_accepted() {
        let t = parse_target("HTTPS://GOOD.COM/x").unwrap();
        assert_eq!(t.host, "good.com");
        assert_eq!(t.url, "HTTPS://GOOD.COM/x", "the URL is kept as given");

        let t = parse_target("https://good.com:8443/path?q=1#f").unwrap();
        assert_eq!(t.host, "good.com");
        assert_eq!(t.url, "https://good.com:8443/path?q=1#f");

        // Percent-encoded CR LF in the path is printable text, harmless in a header.
        assert_eq!(host("https://good.com/%0d%0a"), "good.com");
        assert_eq!(host("http://good.com"), "good.com");
        assert_eq!(host("https://xn--vil-bma.com/"), "xn--vil-bma.com");
        assert_eq!(host("https://a.b-c.example.com:1/"), "a.b-c.example.com");
        assert_eq!(host("https://good.com:65535"), "good.com");
        // `@` after the authority is path or query text, and the browser agrees on the host.
        assert_eq!(host("https://medium.com/@user"), "medium.com");
        assert_eq!(host("https://good.com?next=@evil.com"), "good.com");
        assert_eq!(host("https://good.com#@evil.com"), "good.com");
        assert!(parse_target(&format!("https://a.com/{}", "x".repeat(2034))).is_ok());
    }

    #[test]
    fn allowlist_matching() {
        let list =
            |entries: &[&str]| -> Vec<String> { entries.iter().map(|e| e.to_string()).collect() };
        let exact = list(&["example.com"]);
        assert!(host_allowed("example.com", &exact));
        assert!(host_allowed("EXAMPLE.com", &exact));
        assert!(!host_allowed("badexample.com", &exact));
        assert!(!host_allowed("a.example.com", &exact));
        assert!(!host_allowed("example.com.evil.com", &exact));

        let subs = list(&[".Example.com"]);
        assert!(host_allowed("a.example.com", &subs));
        assert!(host_allowed("a.b.example.com", &subs));
        // A subdomain, whatever it looks like: example.com controls it.
        assert!(host_allowed("evil.com.example.com", &subs));
        assert!(!host_allowed("example.com", &subs));
        assert!(!host_allowed(".example.com", &subs));
        assert!(!host_allowed("badexample.com", &subs));
        assert!(!host_allowed("example.com.evil.com", &subs));

        assert!(!host_allowed("", &list(&[""])));
        assert!(!host_allowed("a.", &list(&["."])));
        assert!(!host_allowed("example.com", &[]));
    }

    #[test]
    fn reasons_are_listed() {
        let errors = [
            TargetError::Missing,
            TargetError::TooLong { len: 0 },
            TargetError::BadCharacter { at: 0 },
            TargetError::NotHttp,
            TargetError::Userinfo,
            TargetError::BadHost(""),
            TargetError::BadPort,
        ];
        let labels: Vec<_> = errors.iter().map(TargetError::as_str).collect();
        assert_eq!(labels, TargetError::REASONS);
    }
}
