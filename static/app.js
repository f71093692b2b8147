// elite: progressive enhancement only; every page works without this file.
(function () {
  "use strict";
  // Live job progress over server-sent events.
  document.querySelectorAll(".job[data-job-id]").forEach(function (el) {
    if (el.dataset.finished === "true" || !window.EventSource) return;
    var source = new EventSource("/jobs/" + el.dataset.jobId + "/events");
    source.addEventListener("progress", function (e) {
      var ev = JSON.parse(e.data);
      var set = function (name, text) { var f = el.querySelector('[data-field="' + name + '"]'); if (f) f.textContent = text; };
      set("status", ev.status);
      set("count", ev.done + " / " + ev.total);
      set("message", ev.message || "");
      var bar = el.querySelector('[data-field="bar"]');
      if (bar) { bar.max = ev.total; bar.value = ev.done; }
      if (["succeeded", "failed", "cancelled"].indexOf(ev.status) >= 0) { source.close(); }
    });
  });
  // Live run progress: counts, throughput, time left and the latest errors, while it runs.
  var run = document.getElementById("progress");
  if (run && run.dataset.events && run.dataset.state === "running" && window.EventSource) {
    var runSource = new EventSource(run.dataset.events);
    var text = function (id, value) { var f = document.getElementById(id); if (f) f.textContent = value; };
    runSource.addEventListener("progress", function (e) {
      var p = JSON.parse(e.data);
      text("p-responses", p.responses); text("p-items", p.items); text("p-errors", p.errors);
      text("p-judged", p.judged); text("p-unscored", p.unscored);
      text("p-answers-rate", p.answers_per_second.toFixed(1));
      text("p-judge-rate", p.judgements_per_second.toFixed(1));
      text("p-eta", p.eta_seconds === null ? "-" : Math.round(p.eta_seconds) + " s");
      text("p-queued", p.jobs_queued); text("p-running", p.jobs_running);
      text("p-failed", p.jobs_failed); text("p-cancelled", p.jobs_cancelled);
      var bar = document.getElementById("p-bar");
      if (bar) { bar.max = p.items; bar.value = p.responses; }
      var list = document.getElementById("p-errors-list");
      if (list) {
        list.replaceChildren();
        p.recent_errors.forEach(function (message) {
          var li = document.createElement("li"); li.textContent = message; list.appendChild(li);
        });
      }
      text("p-state", p.state === "running" ? "in progress" : p.state);
      if (p.state !== "running") {
        // Complete, incomplete (failed chunks to retry) or cancelled: the page shows which.
        runSource.close();
        var ready = document.getElementById("p-ready");
        if (ready) ready.hidden = false;
        var cancel = document.getElementById("cancel-form");
        if (cancel) cancel.remove();
      }
    });
    runSource.addEventListener("error", function () { /* the browser reconnects by itself */ });
  }
})();
