//! Which IP address a hit came from.
//!
//! The socket peer is the client unless it is one of the configured trusted proxies; only then are
//! `Forwarded` (RFC 7239) or `X-Forwarded-For` believed, walked from the right past every trusted
//! hop, so a client cannot forge its address by sending the header itself. This module owns that
//! rule and the CIDR matching it needs; it does not decide what is kept of the address (privacy is
//! applied later, off the request path).

use std::net::IpAddr;

use hyper::header::{HeaderMap, FORWARDED};

/// One network, such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
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
        Ok(Cidr {
            network: network.to_canonical(),
            prefix_len,
        })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix_len)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(&net.octets(), &ip.octets(), self.prefix_len)
            }
            _ => false,
        }
    }
}

fn prefix_eq(a: &[u8], b: &[u8], prefix_len: u8) -> bool {
    let full = usize::from(prefix_len / 8);
    let rest = prefix_len % 8;
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || {
        let mask = 0xffu8 << (8 - rest);
        a[full] & mask == b[full] & mask
    }
}

/// The proxies whose forwarding headers are believed.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<Cidr>);

impl TrustedProxies {
    /// Parses CIDRs or single addresses; the error names the entry that is wrong.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<TrustedProxies, String> {
        entries
            .iter()
            .map(|e| Cidr::parse(e.as_ref()))
            .collect::<Result<_, _>>()
            .map(TrustedProxies)
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|c| c.contains(ip))
    }

    /// The client's address for a request from `peer` with these headers.
    ///
    /// Walks the forwarding chain from the nearest hop outwards and returns the first address not
    /// trusted. An entry that is not an address (`unknown`, an obfuscated name, garbage) stops the
    /// walk: the last address known to be real is returned rather than a guess.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if self.0.is_empty() || !self.trusts(peer) {
            return peer;
        }
        let chain = forwarded_chain(headers);
        let mut client = peer;
        for hop in chain.iter().rev() {
            match hop {
                Some(ip) => {
                    client = ip.to_canonical();
                    if !self.trusts(client) {
                        break;
                    }
                }
                None => break,
            }
        }
        client
    }
}

/// The `for=` addresses of `Forwarded`, or failing that of `X-Forwarded-For`, in order from the
/// original client to the nearest proxy; `None` for entries that are not addresses.
fn forwarded_chain(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let forwarded: Vec<Option<IpAddr>> = headers
        .get_all(FORWARDED)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .filter_map(|element| {
            element.split(';').find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(v.trim()))
            })
        })
        .collect();
    if !forwarded.is_empty() {
        return forwarded;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("").split(','))
        .map(|s| parse_node(s.trim()))
        .collect()
}

/// One node: `1.2.3.4`, `1.2.3.4:80`, `"[2001:db8::1]:4711"`, `2001:db8::1`.
fn parse_node(raw: &str) -> Option<IpAddr> {
    let s = raw.trim_matches('"');
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn cidr_matching() {
        let t = TrustedProxies::parse(&[
            "10.0.0.0/8",
            "192.168.1.1",
            "2001:db8::/33",
            "172.16.0.0/12",
        ])
        .unwrap();
        assert!(t.trusts(ip("10.255.1.2")));
        assert!(!t.trusts(ip("11.0.0.1")));
        assert!(t.trusts(ip("192.168.1.1")));
        assert!(!t.trusts(ip("192.168.1.2")));
        assert!(t.trusts(ip("2001:db8:7fff::1")));
        assert!(!t.trusts(ip("2001:db8:8000::1")));
        assert!(t.trusts(ip("172.31.255.255")));
        assert!(!t.trusts(ip("172.32.0.0")));
        assert!(
            t.trusts(ip("::ffff:10.1.2.3")),
            "mapped IPv4 matches IPv4 networks"
        );
        let all = TrustedProxies::parse(&["0.0.0.0/0"]).unwrap();
        assert!(all.trusts(ip("8.8.8.8")) && !all.trusts(ip("::1")));
    }

    #[test]
    fn bad_cidrs_are_named() {
        for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "nope", "10.0.0.0/x"] {
            let e = TrustedProxies::parse(&[bad]).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_it_claims() {
        let t = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        let h = headers(&[("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")]);
        assert_eq!(t.client_ip(ip("203.0.113.9"), &h), ip("203.0.113.9"));
        assert_eq!(
            TrustedProxies::default().client_ip(ip("10.0.0.1"), &h),
            ip("10.0.0.1")
        );
    }

    #[test]
    fn x_forwarded_for_is_walked_from_the_right() {
        let t = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        // The client forged 6.6.6.6; the first untrusted hop from the right is the real client.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.7")]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("1.2.3.4"));
        // Several header lines form one list.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "1.2.3.4"),
        ]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("1.2.3.4"));
        // Every hop trusted: the leftmost is the best we know.
        let h = headers(&[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("10.1.1.1"));
        // Garbage stops the walk at the last real address.
        let h = headers(&[("x-forwarded-for", "1.2.3.4, garbage, 10.0.0.9")]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.9"));
        // No header from a trusted proxy: the proxy itself.
        assert_eq!(
            t.client_ip(ip("10.0.0.1"), &HeaderMap::new()),
            ip("10.0.0.1")
        );
        // IPv6 and ports.
        let h = headers(&[("x-forwarded-for", "[2001:db8::5]:443, 1.2.3.4:5678")]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("1.2.3.4"));
        let h = headers(&[("x-forwarded-for", "2001:db8::5")]);
        assert_eq!(t.client_ip(ip("::ffff:10.0.0.1"), &h), ip("2001:db8::5"));
    }

    #[test]
    fn forwarded_wins_over_x_forwarded_for() {
        let t = TrustedProxies::parse(&["10.0.0.0/8"]).unwrap();
        let h = headers(&[
            (
                "forwarded",
                "for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\"",
            ),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
        let h = headers(&[("forwarded", "for=\"192.0.2.43:47011\"")]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("192.0.2.43"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.1"));
        let h = headers(&[("forwarded", "for=_hidden, for=10.0.0.2")]);
        assert_eq!(t.client_ip(ip("10.0.0.1"), &h), ip("10.0.0.2"));
    }
}
