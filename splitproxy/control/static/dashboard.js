// splitproxy's dashboard: reads /status every second and acts through the admin API's
// POST /routes/{route}/{action}, same origin, as JSON, with the bearer token when the admin
// API has one (typed once, kept in sessionStorage: this tab only). No framework, no build
// step. Every value from the server is put in the page as text (textContent), never as HTML.
"use strict";

(function () {
  const POLL_MS = 1000;
  const TOKEN_KEY = "splitproxy-admin-token";
  const CONFIRM_MS = 5000;
  const HISTORY = 30;

  let plan = null;            // /dashboard/plan: the steps of every route, per generation
  let planGeneration = null;
  const history = {};         // route -> [{time, text}], phase changes seen by this page
  const last = {};            // route -> "run/phase/step" last seen
  let busy = false;           // an action in flight: no re-render under the click

  // -- small DOM helpers ------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else if (key === "title") node.title = value;
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === "string" ? document.createTextNode(child) : child);
    }
    return node;
  }

  function pct(x, digits) {
    if (x === null || x === undefined) return "-";
    return (100 * x).toFixed(digits === undefined ? 1 : digits) + "%";
  }

  function num(x, digits) {
    if (x === null || x === undefined) return "-";
    return Number(x).toFixed(digits === undefined ? 1 : digits);
  }

  function clock(t) {
    return t ? new Date(t * 1000).toLocaleTimeString() : "-";
  }

  // -- the token ----------------------------------------------------------------------------
  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function headers(extra) {
    const out = Object.assign({}, extra || {});
    if (token()) out["Authorization"] = "Bearer " + token();
    return out;
  }

  function askToken(why) {
    const form = document.getElementById("token-form");
    form.hidden = false;
    document.getElementById("config").textContent = why;
  }

  // -- talking to the admin API -------------------------------------------------------------
  async function getJSON(path) {
    const resp = await fetch(path, {headers: headers(), cache: "no-store",
                                    credentials: "same-origin"});
    if (resp.status === 401) {
      const err = new Error(token() ? "the token was refused" : "this admin API needs its token");
      err.auth = true;
      throw err;
    }
    if (!resp.ok) throw new Error(path + ": HTTP " + resp.status);
    return resp.json();
  }

  async function act(route, action, query) {
    const url = "/routes/" + encodeURIComponent(route) + "/" + action + (query || "");
    busy = true;
    try {
      const resp = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        cache: "no-store",
        // JSON and the action header: what the admin API asks of a browser's POST, and
        // what no cross-site form can send.
        headers: headers({"Content-Type": "application/json", "X-Splitproxy-Action": action}),
        body: "{}",
      });
      let body = null;
      try { body = await resp.json(); } catch (e) { body = null; }
      if (resp.ok && body && body.rollout) {
        const ro = body.rollout;
        say(route + ": " + action + " ok: phase " + ro.phase + ", step " + ro.step + "/" +
            ro.steps, "ok");
      } else {
        const detail = body && body.error ? body.error : "HTTP " + resp.status;
        say(route + ": " + action + " refused: " + detail, "error");
      }
    } catch (e) {
      say(route + ": " + action + " failed: " + e.message, "error");
    } finally {
      busy = false;
      refresh();
    }
  }

  function say(text, kind) {
    const box = document.getElementById("message");
    box.hidden = false;
    box.className = kind;
    box.textContent = text;
  }

  // -- one route ----------------------------------------------------------------------------
  const EXPLAIN = {
    "waiting for evidence": "the pause is over; the step goes on at the first check where " +
      "the guard passes (it needs more requests to tell). promote skips the wait, blind.",
    "waiting for promote": "a `pause: {}` step: promote goes on.",
    "manual": "paused by an operator: resume goes on.",
    "outside deployment window": "steps wait for the deployment window; abort still works.",
  };

  function enabled(ro, action) {
    const phase = ro.phase, reason = ro.pause_reason, steps = ro.steps > 0;
    switch (action) {
      case "promote":
      case "promote-full":
        return steps && (phase === "progressing" || phase === "paused");
      case "abort": return phase !== "aborted";
      case "retry": return phase === "aborted";
      case "pause":
        return steps && (phase === "progressing" || (phase === "paused" &&
          (reason === "waiting for evidence" || reason === "outside deployment window")));
      case "resume": return phase === "paused" && reason === "manual";
    }
    return false;
  }

  const armedUntil = {};      // "route/action" -> time a first click's confirmation ends

  function button(route, ro, action, label, confirm) {
    const key = route + "/" + action;
    const armed = () => confirm && armedUntil[key] > Date.now();
    const b = el("button", {type: "button", "data-action": action,
                            class: "act-" + action + (armed() ? " confirm" : ""),
                            disabled: !enabled(ro, action)},
                 armed() ? "confirm " + label + "?" : label);
    b.addEventListener("click", () => {
      if (confirm && !armed()) {
        // Two clicks for what cannot be taken back in one: the label asks, for a moment.
        armedUntil[key] = Date.now() + CONFIRM_MS;
        b.classList.add("confirm");
        b.textContent = "confirm " + label + "?";
        return;
      }
      delete armedUntil[key];
      if (action === "promote-full") act(route, "promote", "?full=1");
      else if (action === "abort") {
        const input = document.querySelector('[data-route="' + CSS.escape(route) +
                                             '"] input[name=reason]');
        const why = input && input.value.trim() ? input.value.trim() : "from the dashboard";
        act(route, "abort", "?reason=" + encodeURIComponent(why));
      } else act(route, action, "");
    });
    return b;
  }

  function actions(route, ro) {
    return el("div", {class: "actions"},
      button(route, ro, "promote", "promote"),
      button(route, ro, "promote-full", "promote to the end", true),
      button(route, ro, "pause", "pause"),
      button(route, ro, "resume", "resume"),
      button(route, ro, "retry", "retry"),
      el("input", {name: "reason", type: "text", maxlength: "500", placeholder: "abort reason",
                   "aria-label": "abort reason"}),
      button(route, ro, "abort", "abort", true));
  }

  function duration(seconds) {
    const parts = [];
    for (const [unit, size] of [["h", 3600], ["m", 60]]) {
      if (seconds >= size) {
        parts.push(Math.floor(seconds / size) + unit);
        seconds %= size;
      }
    }
    if (seconds || !parts.length) parts.push(+seconds.toFixed(3) + "s");
    return parts.join("");
  }

  function stepLabel(step) {
    if (step.set_weight !== undefined && step.set_weight !== null) return step.set_weight + "%";
    if (step.set_header_route !== undefined) return "route " + step.set_header_route;
    if (step.set_mirror !== undefined) return "mirror " + step.set_mirror;
    if (step.pause === null) return "until promote";
    return "pause " + duration(step.pause);
  }

  function timeline(ro, steps) {
    const list = el("ol", {class: "timeline", "data-field": "timeline"});
    steps.forEach((step, i) => {
      let state = i < ro.step ? "done" : i === ro.step ? "current" : "todo";
      if (ro.phase === "promoted") state = "done";
      if (state === "current" && ro.phase !== "progressing") state += " " + ro.phase;
      list.append(el("li", {class: state, title: "step " + (i + 1)}, stepLabel(step)));
    });
    const end = ro.phase === "promoted" ? "done" : ro.phase === "aborted" ? "aborted" : "todo";
    list.append(el("li", {class: "end " + end},
      ro.phase === "aborted" ? "aborted" : "promoted"));
    return list;
  }

  function shareBar(configured, realized) {
    const bar = el("div", {class: "bars"});
    const c = el("div", {class: "bar configured", title: "weight now " + pct(configured)});
    c.style.width = (100 * (configured || 0)) + "%";
    const r = el("div", {class: "bar realized", title: "realized " + pct(realized)});
    r.style.width = (100 * (realized || 0)) + "%";
    bar.append(c, r);
    return bar;
  }

  function versions(route, ro, windowSeconds) {
    const table = el("table", {class: "versions"},
      el("thead", {}, el("tr", {},
        el("th", {}, "version"), el("th", {}, "weight now"),
        el("th", {}, "realized, last " + Math.round(windowSeconds || 0) + " s"),
        el("th", {}, "split: now / realized"), el("th", {}, "requests"),
        el("th", {}, "errors"), el("th", {}, "p99 ms"), el("th", {}, "endpoints"))));
    const body = el("tbody");
    for (const [name, v] of Object.entries(route.versions)) {
      const role = name === ro.canary ? "canary" : name === ro.baseline ? "baseline" : "";
      const eps = el("span", {class: "endpoints"});
      for (const e of v.endpoints) {
        eps.append(el("span", {class: "endpoint " + (e.up ? "up" : "down"),
          title: e.url + (e.up ? " up" : " ejected") + ", " + e.consecutive_failures +
            " failures in a row, " + e.ejections + " ejections"},
          (e.up ? "\u25cf " : "\u25cb ") + e.url.replace("http://", "")));
      }
      body.append(el("tr", {"data-version": name},
        el("td", {}, el("strong", {}, name), role ? el("span", {class: "role"}, role) : null),
        el("td", {"data-field": "weight"},
          v.effective_weight + (v.effective_weight !== v.configured_weight
            ? " (config " + v.configured_weight + ")" : "")),
        el("td", {"data-field": "realized"}, pct(v.realized_share)),
        el("td", {}, shareBar(v.configured_share, v.realized_share)),
        el("td", {}, String(v.requests_in_window)),
        el("td", {class: v.errors_in_window ? "bad" : ""}, pct(v.error_rate_in_window, 2)),
        el("td", {}, num(v.p99_ms_in_window)),
        el("td", {}, eps)));
    }
    table.append(body);
    return table;
  }

  function meter(logE, at, kind) {
    // Evidence as a share of the way to its level, on a log scale (e-values multiply).
    const share = at > 1 ? Math.max(0, Math.min(1, logE / Math.log(at))) : 0;
    const m = el("div", {class: "meter " + kind,
      title: kind + " evidence e=" + Math.exp(logE).toPrecision(3) + " of " + at});
    const fill = el("div", {class: "fill"});
    fill.style.width = (100 * share) + "%";
    m.append(fill);
    return m;
  }

  function guard(ro) {
    const g = ro.guard;
    if (!g) return null;
    const box = el("div", {class: "guard", "data-field": "guard"},
      el("h3", {}, "guard ",
        el("span", {class: "badge " + g.outcome, "data-field": "outcome"}, g.outcome),
        el("span", {class: "muted"}, " step " + g.step + ", segment " + g.segment +
          (g.current ? "" : " (last verdict of an earlier step)") +
          ": fail at e \u2265 " + num(g.fail_at, 0) + ", pass at e \u2265 " + num(g.pass_at, 0))));
    const table = el("table", {class: "tests"},
      el("thead", {}, el("tr", {}, el("th", {}, "version / metric"), el("th", {}, "estimate"),
        el("th", {}, "limit"), el("th", {}, "counts"), el("th", {}, "fail evidence"),
        el("th", {}, "pass evidence"), el("th", {}, "verdict"))));
    const body = el("tbody");
    for (const t of g.tests || []) {
      const metric = t.metric + (t.limit_ms ? " (over " + t.limit_ms + " ms)" : "") +
        (t.against ? " vs " + t.against : "");
      body.append(el("tr", {title: t.summary},
        el("td", {}, t.version + " " + metric),
        el("td", {}, pct(t.estimate, 2) + " [" + pct(t.lower, 1) + ", " + pct(t.upper, 1) + "]"),
        el("td", {}, t.threshold !== null && t.threshold !== undefined ? pct(t.threshold, 1) : "-"),
        el("td", {}, t.events + " / " + t.trials),
        el("td", {}, meter(t.log_e_fail, t.fail_at, "fail")),
        el("td", {}, meter(t.log_e_pass, t.pass_at, "pass")),
        el("td", {}, el("span", {class: "badge " + t.outcome}, t.outcome))));
    }
    table.append(body);
    box.append(table);
    const checks = el("div", {class: "checks"}, el("span", {class: "muted"}, "last checks: "));
    for (const c of (ro.checks || []).slice(-20)) {
      checks.append(el("span", {class: "check " + c.result,
        title: clock(c.time) + " step " + c.step + ": " + c.result + ": " + (c.summary || "")}));
    }
    box.append(checks);
    return box;
  }

  function remember(route, ro) {
    const key = ro.run + "/" + ro.phase + "/" + ro.step;
    if (last[route] === key) return;
    const list = history[route] = history[route] || [];
    const why = ro.abort_reason || ro.pause_reason || "";
    list.unshift({time: new Date().toLocaleTimeString(),
                  text: ro.phase + " at step " + ro.step + "/" + ro.steps +
                        (last[route] && last[route].split("/")[0] !== ro.run
                          ? " (new run " + ro.run + ")" : "") + (why ? ": " + why : "")});
    list.length = Math.min(list.length, HISTORY);
    last[route] = key;
  }

  function routeCard(route, windowSeconds) {
    const ro = route.rollout;
    const name = route.name;
    remember(name, ro);
    const steps = plan && plan.routes[name] ? plan.routes[name].steps : [];
    const reason = ro.abort_reason || ro.pause_reason;
    const card = el("section", {class: "route", "data-route": name},
      el("h2", {}, name, " ",
        el("span", {class: "badge " + ro.phase, "data-field": "phase"}, ro.phase),
        el("span", {class: "muted"}, " " + ro.strategy + ", run " + ro.run +
          (ro.revision ? ", revision " + ro.revision : "") +
          (ro.steps ? ", step " + ro.step + "/" + ro.steps : ""))));
    if (reason) {
      card.append(el("p", {class: "reason " + ro.phase, "data-field": "reason"},
        (ro.aborted_by ? "aborted by " + ro.aborted_by + " at " + clock(ro.aborted_at) + ": "
          : "") + reason, EXPLAIN[reason] ? el("span", {class: "muted"}, " \u2014 " +
          EXPLAIN[reason]) : null));
    }
    if (ro.gate) card.append(el("p", {class: "reason"}, "pre-step webhook: " + ro.gate));
    const pending = ro.write_pending;
    if (pending && pending.error) {  // a write on its way is normal; one that failed is news
      card.append(el("p", {class: "reason bad"}, "state not written yet (" + pending.attempts +
        " attempts, retrying): " + pending.error));
    }
    if (steps.length) card.append(timeline(ro, steps));
    card.append(actions(name, ro), versions(route, ro, windowSeconds));
    const g = guard(ro);
    if (g) card.append(g);
    else if (route.rollout.strategy === "canary") {
      card.append(el("p", {class: "muted"}, "no analysis: nothing watches this route"));
    }
    const events = el("ol", {class: "events", "data-field": "events"});
    for (const e of history[name] || []) events.append(el("li", {}, e.time + " " + e.text));
    card.append(el("details", {open: true}, el("summary", {}, "seen on this page"), events));
    return card;
  }

  // -- the page -----------------------------------------------------------------------------
  function header(status) {
    const c = status.config;
    const store = status.state_store;
    const parts = [c.path + ", generation " + c.generation,
                   "state " + store.backend + (store.up ? "" : " DOWN: " + store.error)];
    const line = document.getElementById("config");
    line.textContent = parts.join(" \u00b7 ");
    if (c.last_reload && c.last_reload.result === "error") {
      line.append(el("span", {class: "bad"}, " \u00b7 last reload failed: " +
        c.last_reload.error));
    }
    document.getElementById("updated").textContent =
      (status.ready ? "ready" : "NOT READY") + ", updated " + new Date().toLocaleTimeString();
  }

  function render(status) {
    header(status);
    // Keep what the user is typing (an abort reason), and where, across the re-render.
    const typed = {};
    for (const input of document.querySelectorAll("section.route input[name=reason]")) {
      typed[input.closest("section").dataset.route] = input.value;
    }
    const focused = document.activeElement;
    const focusRoute = focused && focused.name === "reason"
      ? focused.closest("section").dataset.route : null;
    const caret = focusRoute !== null ? focused.selectionStart : null;
    const main = document.getElementById("routes");
    main.replaceChildren(...status.routes.map(
      r => routeCard(r, status.realized_window_seconds)));
    for (const [route, value] of Object.entries(typed)) {
      const input = main.querySelector('[data-route="' + CSS.escape(route) +
                                       '"] input[name=reason]');
      if (!input) continue;
      input.value = value;
      if (route === focusRoute) {
        input.focus();
        input.setSelectionRange(caret, caret);
      }
    }
  }

  let timer = null;

  async function refresh() {
    clearTimeout(timer);
    try {
      const status = await getJSON("/status");
      if (planGeneration !== status.config.generation) {
        plan = await getJSON("/dashboard/plan");
        planGeneration = status.config.generation;
      }
      if (!busy) render(status);
      document.getElementById("token-form").hidden = true;
    } catch (e) {
      if (e.auth) askToken(e.message);
      else document.getElementById("updated").textContent = "cannot reach /status: " + e.message;
    }
    timer = setTimeout(refresh, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.getElementById("token-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const value = document.getElementById("token").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
      document.getElementById("token").value = "";
      refresh();
    });
    refresh();
  });
})();
