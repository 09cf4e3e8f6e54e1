//! The client address behind trusted proxies: CIDR matching, the one believed header, the walk
//! from the right, and the node forms of `X-Forwarded-For` and `Forwarded` (RFC 7239).

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

fn trusting(networks: &[&str], header: ClientIpHeader) -> TrustedProxies {
    TrustedProxies::parse(networks, header).unwrap()
}

/// The client a request from `peer` with `pairs` gets, behind proxies in 10.0.0.0/8 that write
/// `header`.
fn client(header: ClientIpHeader, peer: &str, pairs: &[(&'static str, &str)]) -> Option<IpAddr> {
    trusting(&["10.0.0.0/8"], header).client_ip(ip(peer), &headers(pairs))
}

fn xff(peer: &str, pairs: &[(&'static str, &str)]) -> Option<IpAddr> {
    client(ClientIpHeader::XForwardedFor, peer, pairs)
}

fn fwd(peer: &str, pairs: &[(&'static str, &str)]) -> Option<IpAddr> {
    client(ClientIpHeader::Forwarded, peer, pairs)
}

fn some(s: &str) -> Option<IpAddr> {
    Some(ip(s))
}

#[test]
fn cidr_matching() {
    let t = trusting(
        &[
            "10.0.0.0/8",
            "192.168.1.1",
            "2001:db8::/33",
            "172.16.0.0/12",
        ],
        ClientIpHeader::default(),
    );
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
    let all = trusting(&["0.0.0.0/0"], ClientIpHeader::default());
    assert!(all.trusts(ip("8.8.8.8")) && !all.trusts(ip("::1")));
}

#[test]
fn bad_cidrs_are_named() {
    for bad in ["10.0.0.0/33", "::/129", "10.0.0/8", "nope", "10.0.0.0/x"] {
        let e = TrustedProxies::parse(&[bad], ClientIpHeader::default()).unwrap_err();
        assert!(e.contains(bad), "{e}");
    }
}

#[test]
fn the_default_header_is_x_forwarded_for() {
    assert_eq!(ClientIpHeader::default(), ClientIpHeader::XForwardedFor);
}

#[test]
fn untrusted_peer_is_the_client_whatever_it_claims() {
    let h = [("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=5.6.7.8")];
    assert_eq!(xff("203.0.113.9", &h), some("203.0.113.9"));
    assert_eq!(fwd("203.0.113.9", &h), some("203.0.113.9"));
    assert_eq!(
        TrustedProxies::default().client_ip(ip("10.0.0.1"), &headers(&h)),
        some("10.0.0.1")
    );
}

/// The example: the proxy writes only `X-Forwarded-For`, and passes the client's own
/// `Forwarded` through untouched.
#[test]
fn a_forged_forwarded_is_ignored_behind_a_proxy_that_writes_x_forwarded_for() {
    let h = [
        ("forwarded", "for=198.51.100.7"),
        ("x-forwarded-for", "203.0.113.9"),
    ];
    assert_eq!(xff("10.0.0.1", &h), some("203.0.113.9"));
}

#[test]
fn only_the_configured_header_is_believed() {
    // A proxy writing `Forwarded`: a forged `X-Forwarded-For` is ignored.
    let h = [
        ("x-forwarded-for", "198.51.100.7"),
        ("forwarded", "for=203.0.113.9"),
    ];
    assert_eq!(fwd("10.0.0.1", &h), some("203.0.113.9"));
    // A proxy setting `X-Real-IP`: both of the others are ignored.
    let h = [
        ("forwarded", "for=198.51.100.7"),
        ("x-forwarded-for", "198.51.100.8"),
        ("x-real-ip", "203.0.113.9"),
    ];
    assert_eq!(
        client(ClientIpHeader::XRealIp, "10.0.0.1", &h),
        some("203.0.113.9")
    );
    let h = [("x-real-ip", "[2001:db8::9]:443")];
    assert_eq!(
        client(ClientIpHeader::XRealIp, "10.0.0.1", &h),
        some("2001:db8::9")
    );
}

/// client → load balancer 10.0.0.5 → nginx 10.0.0.1 → edge; nginx appends its peer with
/// `$proxy_add_x_forwarded_for` and passes every other header through.
#[test]
fn an_nginx_chain_names_the_client_left_of_the_trusted_hops() {
    let forged = ("forwarded", "for=198.51.100.7");
    assert_eq!(
        xff(
            "10.0.0.1",
            &[forged, ("x-forwarded-for", "203.0.113.9, 10.0.0.5")]
        ),
        some("203.0.113.9")
    );
    // The client's own `X-Forwarded-For` is to the left of what the proxies appended.
    assert_eq!(
        xff(
            "10.0.0.1",
            &[
                forged,
                ("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.0.0.5")
            ]
        ),
        some("203.0.113.9")
    );
    // Several header lines are one list, in order (RFC 9110 §5.3); empty elements are ignored.
    assert_eq!(
        xff(
            "10.0.0.1",
            &[
                forged,
                ("x-forwarded-for", "198.51.100.7"),
                ("x-forwarded-for", "203.0.113.9,, 10.0.0.5 ")
            ]
        ),
        some("203.0.113.9")
    );
}

/// An AWS Application Load Balancer at 10.0.3.7 appending the client with its port
/// (`routing.http.xff_client_port.enabled`).
#[test]
fn an_alb_chain_with_client_ports_names_the_client() {
    let forged = ("forwarded", "for=198.51.100.7");
    for (header, want) in [
        ("203.0.113.9:51234", "203.0.113.9"),
        ("198.51.100.7:1, 203.0.113.9:51234", "203.0.113.9"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
    ] {
        assert_eq!(
            xff("10.0.3.7", &[forged, ("x-forwarded-for", header)]),
            some(want),
            "{header}"
        );
    }
    // An IPv6 load balancer, itself trusted as an IPv4-mapped address.
    assert_eq!(
        xff(
            "::ffff:10.0.0.1",
            &[("x-forwarded-for", "[2001:db8::5]:443")]
        ),
        some("2001:db8::5")
    );
}

#[test]
fn forwarded_elements_ports_quotes_and_brackets() {
    for (header, want) in [
        (
            "for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\"",
            "2001:db8:cafe::17",
        ),
        ("for=\"192.0.2.43:47011\"", "192.0.2.43"),
        ("FOR=192.0.2.43", "192.0.2.43"),
        ("for=\"[2001:db8::1]\"", "2001:db8::1"),
        ("for=\"192.0.2.43:_p1\"", "192.0.2.43"),
        ("for=\"[2001:db8::1]:_p1\"", "2001:db8::1"),
        ("proto=https ; for = 192.0.2.43 ;by=10.0.0.1", "192.0.2.43"),
        ("for=\"\\192.0.2.43\"", "192.0.2.43"),
        // A comma inside a quoted string does not end the element.
        ("for=192.0.2.43;host=\"a,b\", for=10.0.0.5", "192.0.2.43"),
    ] {
        assert_eq!(
            fwd("10.0.0.1", &[("forwarded", header)]),
            some(want),
            "{header}"
        );
    }
    // Several lines are one list.
    let h = [
        ("forwarded", "for=198.51.100.7"),
        ("forwarded", "for=192.0.2.43, for=10.0.0.5"),
    ];
    assert_eq!(fwd("10.0.0.1", &h), some("192.0.2.43"));
}

/// Where the walk meets an entry that is not an address, nobody vouches for what is left of it
/// and the hop right of it is a proxy: the client is unknown, never the proxy.
#[test]
fn an_entry_that_is_not_an_address_leaves_the_client_unknown() {
    for header in [
        "203.0.113.9, unknown",
        "unknown, 10.0.0.5",
        "203.0.113.9, garbage, 10.0.0.5",
        "_hidden",
        "203.0.113.9:port",
        "fe80::1%eth0",
        "[2001:db8::1",
    ] {
        assert_eq!(
            xff("10.0.0.1", &[("x-forwarded-for", header)]),
            None,
            "{header}"
        );
    }
    for header in [
        "for=unknown",
        "for=\"unknown:80\"",
        "for=_hidden, for=10.0.0.2",
        "for=\"_gazonk\"",
        "for=\"[2001:db8::1]:4711\", for=_Hidden.1-x",
        // An element without `for`, or with it twice, says nothing usable about the hop.
        "proto=https;by=10.0.0.1",
        "for=203.0.113.9;for=198.51.100.7",
        "for=\"192.0.2.43",
        // The client left a quote open and the proxy appended its element to the same line:
        // the proxy's element cannot be told apart, and the client's `for` must not win.
        "for=198.51.100.7;ext=\"a, for=203.0.113.9",
    ] {
        assert_eq!(fwd("10.0.0.1", &[("forwarded", header)]), None, "{header}");
    }
    // A header line that is not text.
    let mut h = HeaderMap::new();
    h.append(
        "x-forwarded-for",
        HeaderValue::from_bytes(b"203.0.113.\xff").unwrap(),
    );
    let t = trusting(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
    assert_eq!(t.client_ip(ip("10.0.0.1"), &h), None);
}

#[test]
fn an_entry_left_of_the_client_is_never_read() {
    assert_eq!(
        xff("10.0.0.1", &[("x-forwarded-for", "unknown, 203.0.113.9")]),
        some("203.0.113.9")
    );
    assert_eq!(
        fwd(
            "10.0.0.1",
            &[("forwarded", "for=_hidden;x=\"open, for=203.0.113.9")]
        ),
        None,
        "but an open quote swallows everything after it"
    );
    assert_eq!(
        fwd(
            "10.0.0.1",
            &[("forwarded", "for=_hidden;x=\"a\", for=203.0.113.9")]
        ),
        some("203.0.113.9")
    );
}

#[test]
fn a_chain_of_trusted_hops_names_its_leftmost() {
    assert_eq!(
        xff("10.0.0.1", &[("x-forwarded-for", "10.1.1.1, 10.2.2.2")]),
        some("10.1.1.1")
    );
    assert_eq!(
        fwd("10.0.0.1", &[("forwarded", "for=10.1.1.1, for=10.2.2.2")]),
        some("10.1.1.1")
    );
}

#[test]
fn a_trusted_peer_without_the_header_is_the_client() {
    assert_eq!(xff("10.0.0.1", &[]), some("10.0.0.1"));
    assert_eq!(
        xff("10.0.0.1", &[("x-forwarded-for", "")]),
        some("10.0.0.1")
    );
    assert_eq!(
        xff("10.0.0.1", &[("x-forwarded-for", " , ")]),
        some("10.0.0.1")
    );
    assert_eq!(fwd("10.0.0.1", &[("forwarded", "")]), some("10.0.0.1"));
}

/// An IPv4-mapped network (`::ffff:a.b.c.d/n`) is matched as the IPv4 network it carries, since
/// every address is compared in its canonical form: a mapped peer is the IPv4 peer.
#[test]
fn ipv4_mapped_networks_are_the_ipv4_networks_they_carry() {
    let t = trusting(
        &["::ffff:127.0.0.0/104", "::ffff:192.0.2.7"],
        ClientIpHeader::default(),
    );
    for trusted in ["127.0.0.1", "127.255.0.9", "::ffff:127.0.0.1", "192.0.2.7"] {
        assert!(t.trusts(ip(trusted)), "{trusted}");
    }
    for other in ["128.0.0.1", "192.0.2.8", "::1", "::127.0.0.1"] {
        assert!(!t.trusts(ip(other)), "{other}");
    }
    let every_v4 = trusting(&["::ffff:0.0.0.0/96"], ClientIpHeader::default());
    assert!(every_v4.trusts(ip("8.8.8.8")) && every_v4.trusts(ip("::ffff:8.8.8.8")));
    assert!(!every_v4.trusts(ip("2001:db8::1")));
}

/// A mapped network shorter than /96 would reach past the mapped block into plain IPv6, while a
/// mapped address is matched as IPv4: what was meant cannot be told, so it is refused.
#[test]
fn a_mapped_network_shorter_than_96_bits_is_refused() {
    for bad in ["::ffff:0.0.0.0/95", "::ffff:10.0.0.0/8", "::ffff:0:0/0"] {
        let e = TrustedProxies::parse(&[bad], ClientIpHeader::default()).unwrap_err();
        assert!(e.contains(bad) && e.contains("96"), "{e}");
    }
}

proptest::proptest! {
    /// Whatever the text, the parser answers Ok or an error, and a network it accepted matches
    /// any address without panicking (and always matches its own address).
    #[test]
    fn any_cidr_text_parses_or_is_refused_and_never_panics_later(
        v4 in proptest::prelude::any::<std::net::Ipv4Addr>(),
        v6 in proptest::prelude::any::<Ipv6Addr>(),
        prefix in 0u16..300,
        form in 0u8..4,
        noise in "\\PC{0,24}",
        probes in proptest::collection::vec(proptest::prelude::any::<IpAddr>(), 1..8),
    ) {
        let text = match form {
            0 => format!("{}/{prefix}", v4.to_ipv6_mapped()),
            1 => format!("{v6}/{prefix}"),
            2 => format!("{v4}/{prefix}"),
            _ => noise,
        };
        if let Ok(cidr) = Cidr::parse(&text) {
            for probe in probes {
                let _ = cidr.contains(probe);
                let _ = cidr.contains(IpAddr::V6(match probe {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                }));
            }
            proptest::prop_assert!(cidr.contains(cidr.network), "{text}");
        }
    }
}

/// nginx's `$proxy_add_x_forwarded_for` appends the peer to whatever the client sent, on the same
/// line: bytes the client sent that are not text spoil only their own entry, and the proxy's
/// entry to the right of them still names the client.
#[test]
fn an_entry_that_is_not_text_spoils_only_itself() {
    let raw = |header: &'static str, value: &[u8], header_kind| {
        let mut h = HeaderMap::new();
        h.append(header, HeaderValue::from_bytes(value).unwrap());
        trusting(&["10.0.0.0/8"], header_kind).client_ip(ip("10.0.0.1"), &h)
    };
    let xff = |value: &[u8]| raw("x-forwarded-for", value, ClientIpHeader::XForwardedFor);
    let fwd = |value: &[u8]| raw("forwarded", value, ClientIpHeader::Forwarded);
    assert_eq!(xff(b"\xff\xfe, 203.0.113.9"), some("203.0.113.9"));
    assert_eq!(xff(b"\xff\xfe, 203.0.113.9, 10.0.0.5"), some("203.0.113.9"));
    assert_eq!(
        xff("caf\u{e9}, 203.0.113.9".as_bytes()),
        some("203.0.113.9")
    );
    assert_eq!(
        xff(b"203.0.113.9, \xff\xfe"),
        None,
        "the walk reaches the bad entry"
    );
    assert_eq!(fwd(b"for=\xff\xfe, for=203.0.113.9"), some("203.0.113.9"));
    assert_eq!(
        fwd(b"for=198.51.100.7;ext=\"\xff\", for=203.0.113.9"),
        some("203.0.113.9")
    );
    assert_eq!(fwd(b"for=203.0.113.9, for=\"\xff\""), None);
}

#[test]
fn a_forwarding_header_from_an_untrusted_peer_is_noted_as_ignored() {
    let proxies = trusting(&["10.0.0.0/8"], ClientIpHeader::XForwardedFor);
    let forwarded = headers(&[("x-forwarded-for", "198.51.100.7")]);
    // From a trusted proxy: believed, not ignored.
    assert!(!proxies.ignored_forwarding(ip("10.1.2.3"), &forwarded));
    // From anyone else: ignored, and said so; mapped IPv4 peers are their IPv4 address.
    assert!(proxies.ignored_forwarding(ip("203.0.113.9"), &forwarded));
    assert!(!proxies.ignored_forwarding(ip("::ffff:10.1.2.3"), &forwarded));
    // No header, or another header than the configured one: nothing was ignored.
    assert!(!proxies.ignored_forwarding(ip("203.0.113.9"), &HeaderMap::new()));
    let real_ip = headers(&[("x-real-ip", "198.51.100.7")]);
    assert!(!proxies.ignored_forwarding(ip("203.0.113.9"), &real_ip));
}
