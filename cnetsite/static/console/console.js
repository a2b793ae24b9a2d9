/* CNET Agent console: live refresh of the dashboard, live logs and timeline of a workload,
   the submit form's type switch, and the topology's subtrees loaded on demand. Plain JavaScript,
   nothing loaded from elsewhere. */
(function () {
  "use strict";

  function poll(every, step) {
    // Run step() now and then every `every` ms after it settles; stop when it returns false.
    var stopped = false;
    function tick() {
      if (stopped) return;
      Promise.resolve(step()).then(function (more) {
        if (more === false) { stopped = true; return; }
        setTimeout(tick, every);
      }, function () { setTimeout(tick, every * 2); });
    }
    tick();
  }

  function getJSON(url) {
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) {
        if (!r.ok || r.redirected) throw new Error("HTTP " + r.status);
        return r.json();
      });
  }

  function clock() {
    return new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false });
  }

  /* Dashboard: fetch the live fragment every few seconds and swap it in. */
  function dashboard(root) {
    var status = document.querySelector("[data-live-status]");
    var every = parseInt(root.dataset.liveEvery || "3000", 10);
    var first = true;
    poll(every, function () {
      if (first) { first = false; return true; }
      return fetch(root.dataset.liveUrl, { credentials: "same-origin" }).then(function (r) {
        if (!r.ok || r.redirected) throw new Error("HTTP " + r.status);
        return r.text();
      }).then(function (html) {
        root.innerHTML = html;
        root.dataset.refreshed = String(parseInt(root.dataset.refreshed || "0", 10) + 1);
        if (status) { status.textContent = "live · updated " + clock(); status.classList.remove("stale"); }
        return true;
      }).catch(function (error) {
        if (status) { status.textContent = "not updating (" + error.message + ")"; status.classList.add("stale"); }
        return true;
      });
    });
  }

  /* Workload page: follow the logs (the API's /logs, with this session) and the timeline. */
  function workload(root) {
    var log = document.getElementById("log");
    var state = document.getElementById("log-state");
    var terminal = root.dataset.terminal === "1";
    var lastStatus = null, lastEvents = -1, lastLog = null, lastFacts = null;

    function renderLogs(data) {
      var text = data.lines.join("\n");
      if (text === lastLog) return;
      lastLog = text;
      var atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
      log.textContent = text || "";
      if (!text) { log.innerHTML = '<span class="muted">no output yet</span>'; }
      if (atBottom) log.scrollTop = log.scrollHeight;
    }

    function fetchLogs() {
      return getJSON(root.dataset.logsUrl + "?lines=2000").then(renderLogs);
    }

    function finish() {
      terminal = true;
      if (state) { state.textContent = "finished"; state.classList.add("off"); }
    }

    // Finished already: the logs once, no polling.
    if (terminal) { fetchLogs(); return; }

    poll(1000, function () {
      return fetchLogs().then(function () { return !terminal; });
    });
    poll(1500, function () {
      return getJSON(root.dataset.liveUrl).then(function (data) {
        // The facts change on their own while it waits (its queue place moves as others go).
        if (data.status !== lastStatus || data.events !== lastEvents || data.facts !== lastFacts) {
          document.getElementById("wl-head").innerHTML = data.head;
          document.getElementById("wl-facts").innerHTML = data.facts;
          document.getElementById("wl-timeline").innerHTML = data.timeline;
          lastStatus = data.status; lastEvents = data.events; lastFacts = data.facts;
        }
        if (data.terminal) {
          // One last read so the final lines are shown, then stop following.
          return fetchLogs().then(function () { finish(); return false; });
        }
        return true;
      });
    });
  }

  /* Submit form: show the fields of the chosen type only. */
  function submitForm(form) {
    function sync() {
      var checked = form.querySelector('input[name="type"]:checked') || form.querySelector('input[name="type"]');
      var kind = checked ? checked.value : "";
      form.querySelectorAll("[data-types]").forEach(function (row) {
        row.hidden = row.dataset.types.split(" ").indexOf(kind) === -1;
      });
    }
    form.querySelectorAll('input[name="type"]').forEach(function (radio) {
      radio.addEventListener("change", sync);
    });
    sync();
  }

  /* Deploy form: fill in the seed's example. */
  function seedButton(button) {
    button.addEventListener("click", function () {
      var example = JSON.parse(button.dataset.example);
      Object.keys(example).forEach(function (name) {
        var input = document.getElementById("id_" + name);
        if (input) input.value = example[name];
      });
    });
  }

  /* Topology: subtrees open and close on a click, loading their children the first time;
     "N more" loads the next page of a node's children in its place. */
  function topology(tree) {
    function getHTML(url) {
      return fetch(url, { credentials: "same-origin" }).then(function (r) {
        if (!r.ok || r.redirected) throw new Error("HTTP " + r.status);
        return r.text();
      });
    }
    function childList(item) {
      for (var i = 0; i < item.children.length; i++) {
        if (item.children[i].matches("ul.tree")) return item.children[i];
      }
      return null;
    }
    tree.addEventListener("click", function (event) {
      var toggle = event.target.closest(".tree-toggle");
      var more = event.target.closest(".tree-more-button");
      if (toggle) {
        var item = toggle.closest(".tree-item");
        var list = childList(item);
        if (list) {
          list.hidden = !list.hidden;
          toggle.setAttribute("aria-expanded", String(!list.hidden));
          return;
        }
        if (toggle.dataset.loading) return;
        toggle.dataset.loading = "1";
        getHTML(toggle.dataset.childrenUrl).then(function (html) {
          list = document.createElement("ul");
          list.className = "tree";
          list.innerHTML = html;
          item.appendChild(list);
          toggle.setAttribute("aria-expanded", "true");
          toggle.classList.remove("failed");
        }).catch(function (error) {
          toggle.classList.add("failed");
          toggle.title = "could not load (" + error.message + "): click to retry";
        }).then(function () { delete toggle.dataset.loading; });
      } else if (more) {
        if (more.disabled) return;
        more.disabled = true;
        getHTML(more.dataset.moreUrl).then(function (html) {
          var place = more.closest(".tree-more");
          place.insertAdjacentHTML("beforebegin", html);
          place.remove();
        }).catch(function (error) {
          more.disabled = false;
          more.textContent = "could not load (" + error.message + "): retry";
        });
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    var el;
    if ((el = document.getElementById("tree"))) topology(el);
    if ((el = document.getElementById("fill-seed"))) seedButton(el);
    if ((el = document.getElementById("dashboard-live"))) dashboard(el);
    if ((el = document.getElementById("workload-live"))) workload(el);
    if ((el = document.getElementById("submit-form"))) submitForm(el);
  });
})();
