// Live updates for the previewd web view. The pages are complete without this script;
// with it, the server's event stream says when what the page shows has changed, and the
// page fetches itself again and swaps its results in place (the filter form, and where
// the keyboard focus was, are kept). Changes are announced politely to screen readers.
(function () {
  "use strict";
  if (!window.EventSource || !window.fetch || !window.DOMParser) return;
  var results = document.getElementById("results");
  if (!results || !results.dataset.live) return;
  var pending = false;

  function announce(text) {
    var status = document.getElementById("live-status");
    if (status) status.textContent = text;
  }

  function refresh() {
    if (pending) return;
    pending = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (html) {
        pending = false;
        if (!html) return;
        var fresh = new DOMParser().parseFromString(html, "text/html").getElementById("results");
        if (!fresh) return;
        var focused = document.activeElement;
        var focusId = focused && results.contains(focused) ? focused.id : null;
        var focusHref = focused && results.contains(focused) ? focused.getAttribute("href") : null;
        results.replaceWith(fresh);
        results = fresh;
        if (focusId && document.getElementById(focusId)) {
          document.getElementById(focusId).focus();
        } else if (focusHref) {
          var again = results.querySelector('a[href="' + CSS.escape(focusHref) + '"]');
          if (again) again.focus();
        }
        announce("Updated at " + new Date().toLocaleTimeString());
      })
      .catch(function () { pending = false; });
  }

  var source = new EventSource(results.dataset.live, { withCredentials: true });
  source.addEventListener("changed", refresh);
  source.addEventListener("open", function () { announce("Live"); });
  source.addEventListener("error", function () { announce("Reconnecting…"); });
})();
