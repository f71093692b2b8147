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
})();
