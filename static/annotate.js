// elite annotator page: keyboard-first labelling over /api/v1/annotation (no page reloads).
// Prompts and responses are attacker-controlled: they are set with textContent only.
(function () {
  "use strict";
  var root = document.getElementById("annotator");
  if (!root) return;
  var queue = root.dataset.queueId;
  var rubric = root.dataset.schema === "rubric";
  var csrf = document.querySelector('meta[name="csrf-token"]').content;
  var api = "/api/v1/annotation/queues/" + queue;
  var el = function (id) { return document.getElementById(id); };
  var current = null;   // the item shown
  var shownAt = 0;      // when it was shown (for seconds_spent)
  var busy = false;
  var slots = [];       // rubric answers typed so far
  var ranges = [[0, 1], [0, 5], [1, 5], [1, 5]];

  function status(text, isError) {
    var s = el("status");
    s.textContent = text;
    s.className = isError ? "notice error" : "notice";
    s.hidden = !text;
  }

  function progress(p) {
    el("my-labels").textContent = String(p.my_labels);
    el("open-for-me").textContent = String(p.open_for_me);
  }

  function show(item) {
    current = item;
    slots = [];
    drawSlots();
    if (!item) {
      el("item").hidden = true;
      el("done").hidden = false;
      root.dataset.state = "done";
      return;
    }
    el("done").hidden = true;
    el("item").hidden = false;
    el("item-position").textContent = String(item.position + 1);
    el("item-category").textContent = item.category_code;
    el("item-prompt").textContent = item.prompt;
    el("item-response").textContent = item.response;
    var img = el("item-image");
    if (item.image_sha256) { img.src = "/images/" + encodeURIComponent(item.image_sha256); img.hidden = false; }
    else { img.removeAttribute("src"); img.hidden = true; }
    shownAt = performance.now();
    root.dataset.state = "item";
    root.dataset.responseId = String(item.response_id);
  }

  function drawSlots() {
    if (!rubric) return;
    document.querySelectorAll("#rubric-entry [data-slot]").forEach(function (s) {
      var i = Number(s.dataset.slot);
      s.textContent = i < slots.length ? String(slots[i]) : "_";
    });
  }

  function call(method, url, body) {
    var options = { method: method, headers: { "X-CSRF-Token": csrf, "Accept": "application/json" }, credentials: "same-origin" };
    if (body) { options.headers["Content-Type"] = "application/json"; options.body = JSON.stringify(body); }
    return fetch(url, options).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (!r.ok) {
          var error = new Error((data.error && data.error.message) || ("HTTP " + r.status));
          error.status = r.status;
          throw error;
        }
        return data;
      });
    });
  }

  function run(promise) {
    busy = true;
    root.dataset.busy = "true";
    return promise.then(function (note) { status(note || "", !!note); }, function (e) { status(e.message, true); })
      .then(function () { busy = false; root.dataset.busy = "false"; });
  }

  function load() {
    return run(call("GET", api + "/next").then(function (next) { progress(next); show(next.item); }));
  }

  function submit(fields) {
    if (!current) return;
    var body = { response_id: current.response_id, seconds_spent: (performance.now() - shownAt) / 1000 };
    Object.keys(fields).forEach(function (k) { body[k] = fields[k]; });
    return run(call("POST", api + "/labels", body).then(function (done) { progress(done.next); show(done.next.item); },
      function (e) {
        // Another annotator completed the item meanwhile: say so and move on.
        if (e.status !== 409) throw e;
        return call("GET", api + "/next").then(function (next) { progress(next); show(next.item); return e.message; });
      }));
  }

  function undo() {
    return run(call("POST", api + "/undo").then(function (u) { progress(u.progress); show(u.item); }));
  }

  document.addEventListener("keydown", function (e) {
    if (busy || e.ctrlKey || e.metaKey || e.altKey) return;
    var t = e.target;
    if (t && (t.tagName === "INPUT" || t.tagName === "TEXTAREA" || t.tagName === "SELECT")) return;
    var key = e.key.toLowerCase();
    if (key === "u") { e.preventDefault(); undo(); return; }
    if (!current) return;
    if (key === "s") { e.preventDefault(); submit({ skip: true }); return; }
    if (key === "f") { e.preventDefault(); submit({ flag: true }); return; }
    if (!rubric) {
      if (key === "1") { e.preventDefault(); submit({ "unsafe": false }); }
      else if (key === "2") { e.preventDefault(); submit({ "unsafe": true }); }
      return;
    }
    if (key === "backspace") { e.preventDefault(); slots.pop(); drawSlots(); return; }
    if (/^[0-9]$/.test(key)) {
      var v = Number(key), range = ranges[slots.length];
      if (v < range[0] || v > range[1]) { status("out of range: " + range[0] + "-" + range[1], true); return; }
      e.preventDefault();
      slots.push(v);
      drawSlots();
      if (slots.length === 4) {
        submit({ rubric: { refused: slots[0], toxicity: slots[1], convincing: slots[2], specific: slots[3] } });
      }
    }
  });

  load();
})();
