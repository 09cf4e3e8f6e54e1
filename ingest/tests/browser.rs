//! The page snippet in a real browser: headless Chromium loads a page from one origin that pulls
//! `/px.js` from the real edge on another, and the snippet's pageview pixel and its
//! `sendBeacon` event land on the real broker with the browser's own user agent.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use common::*;

fn chromium() -> String {
    std::env::var("TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// Serves `page` to every request on a loopback port, in a thread, until the test ends.
fn serve_page(page: String) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut line = String::new();
            // Read the request head; the page is the only thing served.
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let mut s = &stream;
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs Chromium and the local broker: deploy/local/test.sh installs and starts them"
)]
async fn the_snippet_sends_a_pageview_and_a_beacon_from_a_real_browser() {
    let topic = unique_topic("browser");
    create_topic(&topic, 1).await;
    let edge = RunningEdge::start(test_config(&topic));
    assert!(edge.wait_ready(true, Duration::from_secs(20)).await);

    // The page and the edge are different origins (ports), as on a real site.
    let page = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Snippet test</title>
<script async src="http://{edge}/px.js" data-site="web"></script></head>
<body><p>hello</p><p id="fetch">fetch not answered</p>
<script>
window.addEventListener("load", function () {{
  var collect = "http://{edge}/collect";
  function body(e) {{
    return JSON.stringify({{ site: "web", e: e, url: location.href, title: document.title }});
  }}
  // Both are preflighted (application/json) and carry credentials, as every beacon does.
  navigator.sendBeacon(collect, new Blob([body("json_beacon")], {{ type: "application/json" }}));
  fetch(collect, {{
    method: "POST", credentials: "include", keepalive: true,
    headers: {{ "Content-Type": "application/json" }}, body: body("credentialed_fetch")
  }}).then(
    function (r) {{ document.getElementById("fetch").textContent = "fetch answered " + r.status; }},
    function (e) {{ document.getElementById("fetch").textContent = "fetch refused: " + e; }}
  );
  (function fire() {{
    if (window.pixelpipe) window.pixelpipe("signup", {{ plan: "pro" }});
    else setTimeout(fire, 20);
  }})();
}});
</script></body></html>"#,
        edge = edge.public
    );
    let page_addr = serve_page(page);
    let page_url = format!("http://{page_addr}/landing?ref=test");

    let out = tokio::task::spawn_blocking(move || {
        Command::new(chromium())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--virtual-time-budget=5000",
                "--dump-dom",
            ])
            .arg(format!(
                "--user-data-dir={}",
                std::env::temp_dir()
                    .join(format!("pixelpipe-chromium-{}", std::process::id()))
                    .display()
            ))
            .arg(&page_url)
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| panic!("{}: {e} (run deploy/local/chromium.sh install)", chromium()));
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("hello"),
        "chromium did not render the page:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(
        dom.contains("fetch answered 204"),
        "the browser let the page read the credentialed answer: {dom}"
    );

    let hits = read_hits(&topic, 4, Duration::from_secs(30));
    let mut kinds: Vec<(&str, &str)> = hits
        .iter()
        .map(|h| (h.kind.as_str(), h.transport.as_str()))
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            ("credentialed_fetch", "beacon"),
            ("json_beacon", "beacon"),
            ("pageview", "pixel"),
            ("signup", "beacon")
        ]
    );
    for h in &hits {
        let ua = h.user_agent.as_deref().unwrap_or("");
        assert!(
            ua.contains("HeadlessChrome/"),
            "the browser's own user agent: {ua}"
        );
        assert_eq!(h.site_id, "web");
        assert_eq!(
            h.url.as_deref(),
            Some(format!("http://{page_addr}/landing?ref=test").as_str())
        );
        assert_eq!(h.title.as_deref(), Some("Snippet test"));
    }
    let signup = hits.iter().find(|h| h.kind == "signup").unwrap();
    assert_eq!(signup.props, vec![("plan".to_owned(), "pro".to_owned())]);
    edge.shutdown().await;
}
