// epfiot console: fetches the page's content again every few seconds and puts it in place, so states and
// bootstraps show without a reload. The session cookie is HttpOnly: this script never sees the token.
"use strict";

(function () {
  const content = document.getElementById("content");
  const status = document.getElementById("live-status");
  if (!content || !content.dataset.live) {
    return;
  }
  const every = Number(content.dataset.live) * 1000;
  let last = null;
  let timer = null;

  function say(text, stale) {
    if (status) {
      status.textContent = text;
      status.classList.toggle("stale", stale);
    }
  }

  async function refresh() {
    timer = null;
    if (document.hidden) {
      return; // visibilitychange starts again
    }
    const url = new URL(window.location.href);
    url.searchParams.set("fragment", "1");
    try {
      const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) {
        window.location.assign("/console/login");
        return;
      }
      if (!response.ok) {
        throw new Error("HTTP " + response.status);
      }
      const html = await response.text();
      if (html !== last) {
        last = html;
        content.innerHTML = html;
      }
      say("Updated " + new Date().toLocaleTimeString(), false);
    } catch (error) {
      say("Not reachable (" + error.message + "): trying again", true);
    }
    schedule();
  }

  function schedule() {
    if (timer === null && !document.hidden) {
      timer = window.setTimeout(refresh, every);
    }
  }

  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) {
      if (timer !== null) {
        window.clearTimeout(timer);
        timer = null;
      }
      refresh();
    }
  });
  schedule();
})();
