//! Traffic for benchmarks and demos: a deterministic mix of realistic pixel and beacon hits.
//!
//! Shared by the criterion benchmarks, the instruction-count example and the `pixelpipe-loadgen`
//! binary so all of them exercise the same requests. It does not measure anything itself.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;
use hyper::Request;
use hyper_util::rt::TokioIo;

/// A keep-alive HTTP/1.1 connection to `addr` (`TCP_NODELAY`, its driver spawned on the current
/// runtime), for the load generators; `None` when it cannot be made within 2 s.
pub async fn connect(addr: SocketAddr) -> Option<SendRequest<Full<Bytes>>> {
    let stream = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    stream.set_nodelay(true).ok()?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

/// The `i`-th request of the mix as an in-memory `GET`, with the headers a browser sends (meant
/// for the pixel requests of the mix; see [`sample_request`]).
pub fn pixel_request(i: u64) -> Request<Full<Bytes>> {
    let s = sample_request(i);
    Request::builder()
        .method("GET")
        .uri(s.target)
        .header("host", "px.example")
        .header("user-agent", s.user_agent)
        .header("referer", "https://blog.example/")
        .header("accept-language", "en-GB,en;q=0.9")
        .body(Full::new(Bytes::new()))
        .expect("the sample requests are valid")
}

/// The `i`-th beacon of the mix (every tenth request of [`sample_request`]) as an in-memory
/// `POST /collect`, with the headers a browser's `sendBeacon` sends.
pub fn beacon_request(i: u64) -> Request<Full<Bytes>> {
    let s = sample_request(i / 10 * 10 + 9);
    Request::builder()
        .method("POST")
        .uri(s.target)
        .header("host", "px.example")
        .header("user-agent", s.user_agent)
        .header("origin", "https://blog.example")
        .header("content-type", "text/plain;charset=UTF-8")
        .header("content-length", s.body.len())
        .body(Full::new(Bytes::from(s.body)))
        .expect("the sample requests are valid")
}

/// One request of the mix.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRequest {
    /// `GET` or `POST`.
    pub method: &'static str,
    /// Path and query.
    pub target: String,
    /// `User-Agent` header.
    pub user_agent: &'static str,
    /// JSON body for `POST /collect`, empty otherwise.
    pub body: String,
}

/// Real user agents of the kinds a pixel sees.
pub const USER_AGENTS: [&str; 5] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
];

const CAMPAIGNS: [&str; 3] = ["spring-sale", "newsletter-42", "retarget-q2"];

/// The `i`-th request of the mix: mostly page views and email opens, some ad impressions,
/// conversions with a value, and every tenth a `/collect` beacon carrying two hits.
pub fn sample_request(i: u64) -> SampleRequest {
    // A fixed scramble of `i`, so runs are repeatable without a random number generator.
    let r = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17);
    let campaign = CAMPAIGNS[(r % 3) as usize];
    let variant = if r & 0x100 == 0 { "A" } else { "B" };
    let user_agent = USER_AGENTS[((r >> 8) % USER_AGENTS.len() as u64) as usize];
    if i % 10 == 9 {
        let body = format!(
            r#"[{{"site":"blog.example","e":"pageview","url":"https://blog.example/post/{i}","title":"Post {i}"}},{{"site":"shop.example","e":"conversion","campaign":"{campaign}","variant":"{variant}","value":{}.99,"currency":"EUR","props":{{"plan":"pro"}}}}]"#,
            10 + r % 90
        );
        return SampleRequest {
            method: "POST",
            target: "/collect".into(),
            user_agent,
            body,
        };
    }
    let target = match r % 10 {
        0..=3 => format!("/p.gif?site=blog.example&e=pageview&url=https%3A%2F%2Fblog.example%2Fpost%2F{i}&ref=https%3A%2F%2Fsearch.example%2F"),
        4..=6 => format!("/p.gif?site=mail.example&e=open&campaign={campaign}&variant={variant}&msg=m-{i}&uid=u-{}", r % 5000),
        7 | 8 => format!("/p.gif?site=ads.example&e=impression&campaign={campaign}&utm_source=partner&utm_medium=display&cb={r}"),
        _ => format!("/p.gif?site=shop.example&e=conversion&campaign={campaign}&variant={variant}&value={}.50&currency=EUR&order=o-{i}", 5 + r % 200),
    };
    SampleRequest {
        method: "GET",
        target,
        user_agent,
        body: String::new(),
    }
}

/// How many hits request `i` carries (a beacon carries two).
pub fn hits_in(i: u64) -> u64 {
    if i % 10 == 9 {
        2
    } else {
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_repeatable_and_varied() {
        assert_eq!(sample_request(5), sample_request(5));
        let kinds: std::collections::HashSet<_> = (0..100)
            .map(|i| {
                sample_request(i)
                    .target
                    .split("&e=")
                    .nth(1)
                    .map(|s| s.split('&').next().unwrap().to_owned())
            })
            .collect();
        for k in ["pageview", "open", "impression", "conversion"] {
            assert!(
                kinds.contains(&Some(k.to_string())),
                "{k} missing from the mix"
            );
        }
        assert_eq!((0..100).map(hits_in).sum::<u64>(), 110);
    }
}
