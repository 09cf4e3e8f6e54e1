//! Which IP address a hit came from.
//!
//! The socket peer is the client unless it is one of the configured trusted proxies
//! (`http.trusted_proxies`). Only then is a forwarding header believed, and only the one those
//! proxies write (`http.client_ip_header`: `X-Forwarded-For`, `Forwarded` of RFC 7239, or
//! `X-Real-IP`). The others are ignored: a proxy passes on unchanged whatever the client put in a
//! header the proxy does not write itself, so believing it would let a client choose its address.
//!
//! The chosen header's entries are walked from the right, the nearest hop, past every trusted
//! address; the first address not trusted is the client. An entry the walk reaches that is not an
//! address (`unknown`, an obfuscated `_name` of RFC 7239 §6.3, garbage, bytes that are not UTF-8)
//! leaves the client unknown: everything to its left was written by a node nobody vouches for, and
//! the proxy to its right is not the client. This module owns that rule, the parsing of the
//! headers and the CIDR matching; it does not decide what is kept of the address (privacy is
//! applied later, off the request path).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use hyper::header::{HeaderMap, HeaderName, FORWARDED};
use serde::{Deserialize, Deserializer, Serialize};

/// One network, such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    /// `a.b.c.d[/n]` or `x:y::z[/n]`. An IPv4-mapped network (`::ffff:a.b.c.d/n`, n ≥ 96) becomes
    /// the IPv4 network `a.b.c.d/(n − 96)`: addresses are matched in their canonical form, so a
    /// mapped peer is its IPv4 address. A mapped network shorter than /96 is refused: it would
    /// reach past the mapped block into plain IPv6, and what was meant cannot be told.
    fn parse(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match len {
            None => max,
            Some(l) => l
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{text}` has a prefix length outside 0-{max}"))?,
        };
        match (network, network.to_canonical()) {
            (IpAddr::V6(_), v4 @ IpAddr::V4(_)) => Ok(Cidr {
                network: v4,
                prefix_len: prefix_len.checked_sub(96).ok_or_else(|| {
                    format!(
                        "`{text}` is an IPv4-mapped network shorter than /96; \
                         write the IPv4 network itself (::ffff:a.b.c.d/n is a.b.c.d/(n-96))"
                    )
                })?,
            }),
            _ => Ok(Cidr {
                network,
                prefix_len,
            }),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => same_prefix(
                u32::from(net).into(),
                u32::from(ip).into(),
                32,
                self.prefix_len,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                same_prefix(u128::from(net), u128::from(ip), 128, self.prefix_len)
            }
            _ => false,
        }
    }
}

/// Whether two addresses of `width` bits agree in their first `prefix_len` bits. Total for any
/// `prefix_len`: beyond `width` it compares every bit, and a shift by all 128 bits (`/0` of IPv6),
/// which `checked_shr` refuses on both sides alike, compares none.
fn same_prefix(a: u128, b: u128, width: u8, prefix_len: u8) -> bool {
    let host_bits = u32::from(width.saturating_sub(prefix_len));
    a.checked_shr(host_bits) == b.checked_shr(host_bits)
}

/// The one header the trusted proxies write to name the client (`http.client_ip_header`):
/// written as its name in lower case, and read in any case (see its `Deserialize`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2`, each hop appending the address it received the
    /// request from: what nginx (`$proxy_add_x_forwarded_for`), HAProxy (`option forwardfor`),
    /// Envoy, Traefik, Caddy and the cloud load balancers write. Entries may carry a port
    /// (`203.0.113.9:1234`, `[2001:db8::1]:443`).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239 §4): the `for` parameter of each element,
    /// quoted or not, with or without a port (`for="[2001:db8::1]:4711"`).
    Forwarded,
    /// `X-Real-IP: client`: one address that the proxy sets rather than appends to, such as
    /// nginx's `proxy_set_header X-Real-IP $remote_addr`.
    XRealIp,
}

impl ClientIpHeader {
    const ALL: [ClientIpHeader; 3] = [
        ClientIpHeader::XForwardedFor,
        ClientIpHeader::Forwarded,
        ClientIpHeader::XRealIp,
    ];

    fn name(self) -> HeaderName {
        // Built at compile time: every request asks (`ignored_forwarding`), and building the name
        // at run time validates its bytes each time.
        const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
        const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
        match self {
            ClientIpHeader::XForwardedFor => X_FORWARDED_FOR,
            ClientIpHeader::Forwarded => FORWARDED,
            ClientIpHeader::XRealIp => X_REAL_IP,
        }
    }
}

impl<'de> Deserialize<'de> for ClientIpHeader {
    /// Header names are case-insensitive (RFC 9110 §5.1), so `X-Real-IP`, as proxies' manuals
    /// spell it, is `x-real-ip`. Any other name is an unknown variant, listing the names taken.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        const NAMES: &[&str] = &["x-forwarded-for", "forwarded", "x-real-ip"];
        let text = Cow::<str>::deserialize(deserializer)?;
        ClientIpHeader::ALL
            .into_iter()
            .find(|h| h.name().as_str().eq_ignore_ascii_case(&text))
            .ok_or_else(|| serde::de::Error::unknown_variant(&text, NAMES))
    }
}

/// The proxies whose forwarding header is believed, and which header that is.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    networks: Vec<Cidr>,
    header: ClientIpHeader,
}

impl TrustedProxies {
    /// Parses CIDRs or single addresses of proxies that write `header`; the error names the entry
    /// that is wrong.
    pub fn parse<S: AsRef<str>>(
        entries: &[S],
        header: ClientIpHeader,
    ) -> Result<TrustedProxies, String> {
        let networks = entries
            .iter()
            .map(|e| Cidr::parse(e.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies { networks, header })
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.networks.iter().any(|c| c.contains(ip))
    }

    /// The client's address for a request from `peer` with these headers; `None` when the
    /// trusted proxies name a client that is not an address.
    ///
    /// - A peer that is not trusted is the client, whatever the headers say.
    /// - A trusted peer that sends no entries (header absent or empty) is the client itself: the
    ///   request was not forwarded (a health check, a client inside a trusted network).
    /// - Otherwise the entries, several header lines being one list in order (RFC 9110 §5.3),
    ///   are walked from the right: a trusted address is passed, the first untrusted one is the
    ///   client, and one that is not an address makes the client unknown (`None`).
    /// - When every entry is trusted, the leftmost is the client: a trusted hop vouches for it.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> Option<IpAddr> {
        let peer = peer.to_canonical();
        if !self.trusts(peer) {
            return Some(peer);
        }
        let mut client = peer;
        for entry in self.chain(headers).into_iter().rev() {
            client = entry?.to_canonical();
            if !self.trusts(client) {
                break;
            }
        }
        Some(client)
    }

    /// Whether a request from `peer` carried the configured header although `peer` is not
    /// trusted, so the header was ignored and `peer` recorded. A client may send one to choose its
    /// address; a steady rate near the request rate means the proxy in front of the edge is
    /// missing from `http.trusted_proxies`, and every hit records the proxy's address.
    pub fn ignored_forwarding(&self, peer: IpAddr, headers: &HeaderMap) -> bool {
        !self.trusts(peer.to_canonical()) && headers.contains_key(self.header.name())
    }

    /// The entries of the configured header, from the original client to the nearest proxy;
    /// `None` for one that is not an address.
    fn chain(&self, headers: &HeaderMap) -> Vec<Option<IpAddr>> {
        let mut chain = Vec::new();
        for line in headers.get_all(self.header.name()) {
            // An appending proxy writes its entry on the line the client started, so bytes that
            // are not text must spoil only the client's own entry, not the line. Lossy decoding
            // does that: it never turns an ASCII byte (`,` `;` `"` `\`) into anything else, and
            // an entry holding U+FFFD is not an address. Text that is valid, as nearly every
            // line is, is borrowed, not copied.
            let text = String::from_utf8_lossy(line.as_bytes());
            let text = text.as_ref();
            match self.header {
                ClientIpHeader::Forwarded => forwarded_for(text, &mut chain),
                ClientIpHeader::XForwardedFor | ClientIpHeader::XRealIp => chain.extend(
                    text.split(',')
                        .map(str::trim)
                        // Empty list elements are ignored (RFC 9110 §5.6.1).
                        .filter(|e| !e.is_empty())
                        .map(parse_node),
                ),
            }
        }
        chain
    }
}

/// Appends the `for` node of each element of one `Forwarded` line (RFC 7239 §4) to `chain`:
/// `None` for an element without exactly one `for`, or whose quoted string is never closed (a
/// proxy that appends `, for=…` to the client's text would otherwise have its element swallowed
/// by the client's open quote).
fn forwarded_for(line: &str, chain: &mut Vec<Option<IpAddr>>) {
    let (elements, closed) = split_unquoted(line, b',');
    let last = elements.len() - 1;
    for (i, element) in elements.into_iter().enumerate() {
        if i == last && !closed {
            chain.push(None);
        } else if !element.trim().is_empty() {
            let (pairs, _) = split_unquoted(element, b';');
            let mut fors = pairs.iter().filter_map(|pair| {
                let (name, value) = pair.split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| value.trim())
            });
            let node = match (fors.next(), fors.next()) {
                (Some(value), None) => unquote(value).and_then(|v| parse_node(&v)),
                _ => None,
            };
            chain.push(node);
        }
    }
}

/// Splits `text` at `sep` outside quoted strings (RFC 9110 §5.6.4: `"` opens and closes one,
/// `\` escapes the next character), and says whether every quoted string was closed.
fn split_unquoted(text: &str, sep: u8) -> (Vec<&str>, bool) {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in text.bytes().enumerate() {
        if escaped {
            escaped = false;
        } else if quoted && b == b'\\' {
            escaped = true;
        } else if b == b'"' {
            quoted = !quoted;
        } else if b == sep && !quoted {
            parts.push(&text[start..i]);
            start = i + 1;
        }
    }
    parts.push(&text[start..]);
    (parts, !quoted)
}

/// A parameter value: a token as it is, or a quoted string without its quotes and escapes.
fn unquote(value: &str) -> Option<Cow<'_, str>> {
    let Some(rest) = value.strip_prefix('"') else {
        return Some(Cow::Borrowed(value));
    };
    let inner = rest.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next()? } else { c });
    }
    Some(Cow::Owned(out))
}

/// One node (RFC 7239 §6; the same forms in `X-Forwarded-For`): `192.0.2.43`,
/// `192.0.2.43:47011`, `[2001:db8::1]`, `[2001:db8::1]:4711`, and leniently a bare
/// `2001:db8::1`. An obfuscated port (`192.0.2.43:_p1`) still gives the address; `unknown`, an
/// obfuscated name (`_hidden`) and anything else give `None`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = node.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    if let Some(v6) = node.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        return v6.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    // An obfuscated port (`_` then letters, digits, `.`, `_`, `-`) hides only the port.
    let (host, port) = node.rsplit_once(':')?;
    let obfuscated = port.len() > 1
        && port.starts_with('_')
        && port
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !obfuscated {
        return None;
    }
    format!("{host}:0")
        .parse::<SocketAddr>()
        .ok()
        .map(|s| s.ip())
}

#[cfg(test)]
mod tests;
