// crashonly job status: follows a job with EventSource (which reconnects by itself, sending
// Last-Event-ID) and renders its state into an element.
//   <span data-crashonly-job="/jobs/42"></span>  <script src="/static/crashonly/jobs.js"></script>
(function () {
  "use strict";
  function follow(element) {
    const base = element.getAttribute("data-crashonly-job");
    const source = new EventSource(base + "/events");
    source.addEventListener("state", function (event) {
      const job = JSON.parse(event.data);
      element.dataset.state = job.state;
      if (job.state === "done") {
        element.textContent = "done: " + JSON.stringify(job.result);
      } else if (job.state === "buried") {
        element.textContent = "failed: " + (job.error || "");
      } else {
        element.textContent = job.state + "…";
      }
      if (job.final) source.close();
    });
  }
  function start() {
    document.querySelectorAll("[data-crashonly-job]").forEach(follow);
  }
  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
