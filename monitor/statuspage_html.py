"""The status page's HTML, CSS and script (string.Template: $updated, $cards, $chart).
Inline only: the page must work with no network beyond the control port."""

from __future__ import annotations

from string import Template

TEMPLATE = Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cdp-monitor</title>
<style>
body{font-family:system-ui,sans-serif;margin:0;padding:12px;background:#f6f7f9;color:#111}
h1{font-size:1.3em;margin:0 0 4px}h2{font-size:1em;margin:0 0 6px}
.muted,.updated{color:#666;font-size:.85em}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:10px;margin-top:10px}
.card{background:#fff;border-radius:8px;padding:10px;box-shadow:0 1px 2px #0002;
  overflow-wrap:anywhere}
.wide{grid-column:1/-1}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:2px 4px;font-size:.9em}
th{font-weight:normal;color:#555;width:45%}
.badge{padding:1px 8px;border-radius:10px;color:#fff;font-weight:bold}
.ok{background:#16a34a}.warn{background:#d97706}.bad{background:#dc2626}
svg{width:100%;height:auto;background:#fafafa}
ul{padding-left:18px;margin:0}li{font-size:.85em;margin:2px 0}
form{display:flex;flex-wrap:wrap;gap:6px;align-items:center}
input{padding:6px;font-size:1em;min-width:0;flex:1 1 120px}
button{padding:8px 12px;font-size:1em;border-radius:6px;border:1px solid #888;background:#fff}
#result{font-size:.85em;white-space:pre-wrap}
</style></head>
<body>
<h1>cdp-monitor</h1>
<div class="updated">updated $updated (every minute) &middot; <a href="/">refresh</a></div>
<div class="grid">
$cards
<section class="card wide"><h2>Channels and creations</h2>$chart</section>
<section class="card wide"><h2>Act</h2>
<form id="act" onsubmit="return false">
<input id="token" type="password" autocomplete="current-password" placeholder="control token">
<input id="for" placeholder="pause for, e.g. 30m">
<input id="reason" placeholder="reason">
<button id="pause" type="button" data-path="/pause">Pause</button>
<button id="resume" type="button" data-path="/resume">Resume</button>
<button id="reconcile" type="button" data-path="/reconcile">Reconcile (dry run)</button>
</form><div id="result"></div></section>
</div>
<script>
"use strict";
function body(path) {
  if (path === "/reconcile") return {dry_run: true};
  if (path !== "/pause") return {};
  var out = {}, f = document.getElementById("for").value.trim(),
      r = document.getElementById("reason").value.trim();
  if (f) out["for"] = f;
  if (r) out.reason = r;
  return out;
}
function act(ev) {
  var path = ev.target.getAttribute("data-path"), token = document.getElementById("token").value;
  var result = document.getElementById("result");
  var headers = {"Content-Type": "application/json"};
  if (token) headers.Authorization = "Bearer " + token;
  result.textContent = "sending...";
  fetch(path, {method: "POST", headers: headers, body: JSON.stringify(body(path))})
    .then(function (resp) {
      return resp.json().then(function (data) { return [resp.status, data]; });
    })
    .then(function (r) {
      if (r[0] >= 400) { result.textContent = "HTTP " + r[0] + ": " + (r[1].error || ""); return; }
      if (path === "/reconcile") { result.textContent = JSON.stringify(r[1], null, 1); return; }
      location.reload();
    })
    .catch(function (err) { result.textContent = String(err); });
}
["pause", "resume", "reconcile"].forEach(function (id) {
  document.getElementById(id).addEventListener("click", act);
});
// Fresh numbers every minute, unless someone is typing or reading an answer.
setInterval(function () {
  var busy = Array.prototype.some.call(document.querySelectorAll("input"), function (el) {
    return el.value !== "";
  });
  if (!busy && document.getElementById("result").textContent === "") location.reload();
}, 60000);
</script>
</body></html>
"""
)
