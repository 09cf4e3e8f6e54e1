//! The page snippet in a real browser: headless Chromium loads pages from one origin that pull
//! `/px.js` from the real edge on another, and what they send lands on the real broker with the
//! browser's own user agent: the snippet's pageview pixel and `sendBeacon` event, a preflighted,
//! credentialed beacon and `fetch` (the edge's CORS answer), and no page view for a page nobody
//! has looked at (a background tab, a prerender) until it is shown.
// Test code: a failed step should panic where it happened.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use pixelpipe_common::wire::Hit;
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

fn chromium() -> String {
    std::env::var("TEST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

/// What every Chromium here runs with: headless, and nothing of its own on the network.
const CHROMIUM_ARGS: [&str; 8] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

/// A fresh profile directory per test, so that tests running at once use separate browsers.
fn user_data_dir(test: &str) -> String {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("pixelpipe-chromium-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    format!("--user-data-dir={}", dir.display())
}

/// Serves `pages` by path (the query is ignored; anything else is 404) on a loopback port, in a
/// thread, until the test ends.
fn serve_pages(pages: HashMap<&'static str, String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(&stream);
            let mut request_line = String::new();
            let _ = reader.read_line(&mut request_line);
            let target = request_line.split(' ').nth(1).unwrap_or("");
            let path = target.split('?').next().unwrap_or("");
            let mut line = String::new();
            // Read the rest of the request head.
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let (status, page) = match pages.get(path) {
                Some(page) => ("200 OK", page.as_str()),
                None => ("404 Not Found", ""),
            };
            let mut s = &stream;
            let _ = write!(
                s,
                "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
    addr
}

/// Headless Chromium driven over the DevTools protocol (a WebSocket on a port of its own), for
/// what a command line cannot do: open a tab in the background, bring it to the front. Killed
/// when dropped.
struct Browser {
    child: Child,
    devtools: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Browser {
    fn launch(test: &str) -> Browser {
        let mut child = Command::new(chromium())
            .args(CHROMIUM_ARGS)
            .arg("--remote-debugging-port=0")
            .arg(user_data_dir(test))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{}: {e} (run deploy/local/chromium.sh install)", chromium())
            });
        // Chromium prints the address it listens on; the rest of its log is drained so that
        // it never blocks on a full pipe.
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium prints its DevTools address");
        let (devtools, _) = tungstenite::connect(url.as_str()).unwrap();
        Browser {
            child,
            devtools,
            next_id: 0,
        }
    }

    /// Calls `method` and returns its result; events that arrive meanwhile are skipped.
    fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let request = json!({ "id": id, "method": method, "params": params });
        self.devtools
            .send(Message::text(request.to_string()))
            .unwrap();
        loop {
            let Message::Text(text) = self.devtools.read().unwrap() else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text).unwrap();
            if reply["id"] == id {
                assert!(reply.get("error").is_none(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Opens `url` in a new tab, in front or in the background (hidden, as when a link is opened
    /// in a new background tab); returns the tab's target id.
    fn open(&mut self, url: &str, background: bool) -> String {
        let target = self.call(
            "Target.createTarget",
            json!({ "url": url, "background": background }),
        );
        target["targetId"].as_str().unwrap().to_owned()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A page with the snippet that, once the snippet has run (an async script and the images it
/// starts delay the load event), says so with a pixel of its own (`e=loaded`), and once the edge
/// has answered that, with a storage event for any same-origin page that prerendered it.
fn tracked_page(edge: SocketAddr) -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>Tracked</title>
<script async src="http://{edge}/px.js" data-site="web"></script></head>
<body><p>tracked</p>
<script>
window.addEventListener("load", function () {{
  var loaded = new Image();
  loaded.onload = function () {{ localStorage.setItem(location.pathname, "loaded"); }};
  loaded.src = "http://{edge}/p.gif?site=web&e=loaded&url=" + encodeURIComponent(location.href);
}});
</script></body></html>"#
    )
}

/// A hit as `(kind, url)`.
fn kind_and_url(h: &Hit) -> (&str, &str) {
    (h.kind.as_str(), h.url.as_deref().unwrap_or(""))
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
    let page_addr = serve_pages(HashMap::from([("/landing", page)]));
    let page_url = format!("http://{page_addr}/landing?ref=test");

    let out = tokio::task::spawn_blocking(move || {
        Command::new(chromium())
            .args(CHROMIUM_ARGS)
            .args(["--virtual-time-budget=5000", "--dump-dom"])
            .arg(user_data_dir("snippet"))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs Chromium and the local broker: deploy/local/test.sh installs and starts them"
)]
async fn a_background_tab_sends_its_pageview_only_once_it_is_shown() {
    let topic = unique_topic("browser-hidden");
    create_topic(&topic, 1).await;
    let edge = RunningEdge::start(test_config(&topic));
    assert!(edge.wait_ready(true, Duration::from_secs(20)).await);
    let page = tracked_page(edge.public);
    let pages = serve_pages(HashMap::from([("/seen", page.clone()), ("/never", page)]));
    let (seen, never) = (
        format!("http://{pages}/seen"),
        format!("http://{pages}/never"),
    );

    let mut browser = Browser::launch("hidden");
    let seen_tab = browser.open(&seen, true);
    browser.open(&never, true);
    // Both tabs have loaded, and run the snippet, once their own pixels are in; anything the
    // snippet sent at load is in the topic before them (one partition, one batcher: the topic
    // keeps the order in which the edge took the hits).
    let loaded = read_hits(&topic, 2, Duration::from_secs(30));
    let mut got: Vec<_> = loaded.iter().map(kind_and_url).collect();
    got.sort();
    assert_eq!(
        got,
        vec![("loaded", never.as_str()), ("loaded", seen.as_str())],
        "nothing from the snippet while nobody has looked"
    );

    browser.call("Target.activateTarget", json!({ "targetId": seen_tab }));
    let hits = read_hits(&topic, 3, Duration::from_secs(30));
    assert_eq!(hits.len(), 3, "{hits:?}");
    assert_eq!(
        kind_and_url(&hits[2]),
        ("pageview", seen.as_str()),
        "one page view, from the tab brought to the front, none from the one never shown"
    );
    assert!(!hits[2].prefetch);
    drop(browser);
    edge.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(feature = "integration"),
    ignore = "needs Chromium and the local broker: deploy/local/test.sh installs and starts them"
)]
async fn a_prerendered_page_sends_its_pageview_only_once_it_is_shown() {
    let topic = unique_topic("browser-prerender");
    create_topic(&topic, 1).await;
    let edge = RunningEdge::start(test_config(&topic));
    assert!(edge.wait_ready(true, Duration::from_secs(20)).await);
    // The launcher prerenders two pages (Speculation Rules) and, once both have loaded and
    // their own pixels have been answered, follows a link to one of them, which activates it.
    let launcher = r#"<!doctype html><html><head><meta charset="utf-8"><title>Launcher</title>
<script type="speculationrules">
{"prerender": [{"source": "list", "urls": ["/seen", "/never"], "eagerness": "immediate"}]}
</script></head><body><p>launcher</p>
<script>
var loaded = {};
window.addEventListener("storage", function (e) {
  loaded[e.key] = true;
  if (loaded["/seen"] && loaded["/never"]) location.href = "/seen";
});
</script></body></html>"#;
    let page = tracked_page(edge.public);
    let pages = serve_pages(HashMap::from([
        ("/", launcher.to_owned()),
        ("/seen", page.clone()),
        ("/never", page),
    ]));
    let (seen, never) = (
        format!("http://{pages}/seen"),
        format!("http://{pages}/never"),
    );

    let mut browser = Browser::launch("prerender");
    browser.open(&format!("http://{pages}/"), false);
    let hits = read_hits(&topic, 3, Duration::from_secs(30));
    let got: Vec<_> = hits.iter().map(kind_and_url).collect();
    let mut before: Vec<_> = got.iter().take(2).copied().collect();
    before.sort();
    assert_eq!(
        before,
        vec![("loaded", never.as_str()), ("loaded", seen.as_str())],
        "nothing from the snippet while prerendering: {got:?}"
    );
    assert!(
        hits[..2].iter().all(|h| h.prefetch),
        "the edge marks what a prerendering page sends (Sec-Purpose)"
    );
    assert_eq!(
        got[2..],
        [("pageview", seen.as_str())],
        "one page view, from the page shown, none from the one never shown"
    );
    assert!(!hits[2].prefetch, "sent once shown: a human page view");
    drop(browser);
    edge.shutdown().await;
}
