/* pixelpipe page snippet (docs/javascript.md). Load it with
 *   <script async src="https://px.example.com/px.js" data-site="shop"></script>
 * It sends one pageview as an image pixel, and defines pixelpipe(kind, props) which sends an
 * event with navigator.sendBeacon, so it survives the page being closed. No cookies, no storage.
 * A page nobody has looked at yet (prerendered, or opened in a background tab) sends nothing
 * until it is first shown, and nothing at all if it never is.
 */
(function (w, d) {
  "use strict";
  var script = d.currentScript;
  var site = script && script.getAttribute("data-site");
  if (!site) return;
  // The edge that served this file receives the hits.
  var base = script.src.replace(/\/px\.js(?:[?#].*)?$/, "");

  function query(fields) {
    var parts = [];
    for (var k in fields) {
      var v = fields[k];
      if (v !== undefined && v !== null && v !== "") {
        parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(v));
      }
    }
    return parts.join("&");
  }

  function merge(a, b) {
    var out = {};
    for (var k in a) out[k] = a[k];
    for (var j in b || {}) out[j] = b[j];
    return out;
  }

  function pixel(fields) {
    // An image works everywhere, needs no CORS, and the edge always answers it.
    var img = new Image(1, 1);
    img.src = base + "/p.gif?" + query(merge(fields, { cb: Date.now() }));
  }

  // Sends held until the page is first shown, null once it has been: a prerendered page or a
  // background tab that nobody looks at is no page view. A prerendering page turns visible just
  // before `prerendering` turns false (and still sends as a prefetch then), so both are checked.
  var held = [];
  function release() {
    if (held && !d.prerendering && d.visibilityState !== "hidden") {
      var sends = held;
      held = null;
      for (var i = 0; i < sends.length; i++) sends[i]();
    }
  }
  function whenShown(send) {
    if (!held) return send();
    held.push(send);
    release();
  }
  d.addEventListener("visibilitychange", release);
  d.addEventListener("prerenderingchange", release);

  var page = { site: site, url: w.location.href, ref: d.referrer, title: d.title };

  w.pixelpipe = function (kind, props) {
    whenShown(function () {
      var hit = merge(page, { e: kind });
      if (props) hit.props = props;
      var body = new Blob([JSON.stringify(hit)], { type: "text/plain" });
      // text/plain keeps the beacon a "simple" request: no CORS preflight.
      if (!(w.navigator.sendBeacon && w.navigator.sendBeacon(base + "/collect", body))) {
        pixel(merge(merge(page, props), { e: kind }));
      }
    });
  };

  whenShown(function () {
    pixel(merge(page, { e: "pageview" }));
  });
})(window, document);
