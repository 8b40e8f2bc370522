// Tern relay dashboard. Vanilla JS, no dependencies, nothing fetched but this relay's
// admin API (the page's Content-Security-Policy allows nothing else). Every API call
// carries the admin token as `Authorization: Bearer`; the token lives in this tab's
// sessionStorage only.
"use strict";

(function () {
  const TOKEN_KEY = "tern.admin.token";
  const OPERATOR_KEY = "tern.admin.operator";
  const REFRESH_MS = 1000;
  const AUDIT_EVERY = 3; // refreshes
  const STALE_AFTER_MS = 3500;
  const SVG_NS = "http://www.w3.org/2000/svg";

  const $ = (id) => document.getElementById(id);
  const state = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    operator: sessionStorage.getItem(OPERATOR_KEY) || "",
    status: null,
    history: [],
    audit: [],
    lastOk: 0,
    lastError: "",
    ticks: 0,
    timer: null,
    running: false,
  };

  // ---------- helpers ----------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "text") node.textContent = v;
      else if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
      else if (k === "dataset") Object.assign(node.dataset, v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  }

  function fmtNum(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "—";
    const d = digits === undefined ? (Math.abs(x) >= 100 ? 0 : Math.abs(x) >= 10 ? 1 : 2) : digits;
    if (Math.abs(x) >= 1e6) return (x / 1e6).toFixed(2) + "M";
    if (Math.abs(x) >= 1e4) return (x / 1e3).toFixed(1) + "k";
    return Number(x).toLocaleString("en-US", { maximumFractionDigits: d, minimumFractionDigits: 0 });
  }

  function fmtInt(x) {
    return x === null || x === undefined ? "—" : Number(x).toLocaleString("en-US");
  }

  function fmtBytes(b) {
    if (b === null || b === undefined) return "—";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (b >= 1024 && i < u.length - 1) { b /= 1024; i++; }
    return (i === 0 ? b : b.toFixed(1)) + " " + u[i];
  }

  function fmtDuration(s) {
    s = Math.floor(s);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + m + "m";
    if (m) return m + "m " + (s % 60) + "s";
    return s + "s";
  }

  function fmtTime(ms) {
    const d = new Date(ms);
    return d.toLocaleTimeString("en-GB", { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0").slice(0, 1);
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  // Rebuilds a table only when what it shows changed, so a button is not replaced
  // under the operator's cursor every second.
  const shown = {};
  function changed(key, value) {
    const sig = JSON.stringify(value);
    if (shown[key] === sig) return false;
    shown[key] = sig;
    return true;
  }

  // Header values must be ISO-8859-1 for fetch: keep printable ASCII only.
  function cleanOperator(s) { return (s || "").replace(/[^\x20-\x7e]/g, "").trim().slice(0, 64); }

  let toastTimer = null;
  function toast(text, kind) {
    const t = $("toast");
    t.textContent = text;
    t.dataset.state = kind || "ok";
    t.classList.remove("hidden");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => t.classList.add("hidden"), kind === "bad" ? 8000 : 3500);
  }

  // ---------- API ----------

  class ApiError extends Error {
    constructor(status, code, message) { super(message); this.status = status; this.code = code; }
  }

  async function api(method, path, body) {
    const headers = { Authorization: "Bearer " + state.token };
    if (state.operator) headers["X-Tern-Operator"] = state.operator;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let resp;
    try {
      resp = await fetch(path, {
        method, headers, cache: "no-store",
        body: body === undefined ? undefined : JSON.stringify(body),
      });
    } catch (e) {
      throw new ApiError(0, "network", "relay unreachable (" + e.message + ")");
    }
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (resp.status === 401) {
      signOut("The relay refused the token (401 Unauthorized). Enter the current admin token.");
      throw new ApiError(401, "unauthorized", "the relay refused the token");
    }
    if (!resp.ok) {
      const msg = data && data.message ? data.message : (text || resp.statusText);
      throw new ApiError(resp.status, data && data.error, resp.status + ": " + msg);
    }
    return data;
  }

  // A change: PUT/DELETE, then refresh at once so the page shows its effect.
  async function change(method, path, body, done) {
    try {
      const reply = await api(method, path, body);
      if (reply && reply.persisted === false) {
        // In force, but not on disk: a restart before the disk is fixed loses it.
        toast((done || "Applied") + " in memory only: the settings file could not be written (" +
          (reply.persist_error || "unknown error") + ")", "bad");
      } else {
        toast(done || "Applied", "ok");
      }
    } catch (e) {
      if (e.status !== 401) toast("Not applied: " + e.message, "bad");
    }
    state.ticks = 0; // audit refresh on the next tick
    await refresh();
  }

  // ---------- confirmation ----------

  let confirmResolve = null;
  function confirmAction(title, text, opts) {
    opts = opts || {};
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-ok").textContent = opts.ok || "Confirm";
    $("confirm-reason-label").classList.toggle("hidden", !opts.reason);
    $("confirm-reason").value = "";
    $("confirm").classList.remove("hidden");
    (opts.reason ? $("confirm-reason") : $("confirm-cancel")).focus();
    return new Promise((resolve) => { confirmResolve = resolve; });
  }
  function closeConfirm(ok) {
    $("confirm").classList.add("hidden");
    const r = confirmResolve;
    confirmResolve = null;
    if (r) r(ok ? { ok: true, reason: $("confirm-reason").value } : { ok: false });
  }

  // ---------- sign-in ----------

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = "";
    state.running = false;
    for (const k of Object.keys(shown)) delete shown[k];
    clearTimeout(state.timer);
    $("main").classList.add("hidden");
    $("login").classList.remove("hidden");
    $("login-error").textContent = message || "";
    $("operator-input").value = state.operator;
    $("token-input").value = "";
    $("token-input").focus();
    setLive(false, "signed out");
  }

  async function signIn(token, operator) {
    state.token = token.trim();
    state.operator = cleanOperator(operator);
    $("login-submit").disabled = true;
    $("login-error").textContent = "";
    try {
      await api("GET", "/admin/v1/status");
    } catch (e) {
      $("login-submit").disabled = false;
      if (e.status !== 401) $("login-error").textContent = "Could not reach the admin API: " + e.message;
      return;
    }
    $("login-submit").disabled = false;
    sessionStorage.setItem(TOKEN_KEY, state.token);
    sessionStorage.setItem(OPERATOR_KEY, state.operator);
    start();
  }

  function start() {
    $("login").classList.add("hidden");
    $("main").classList.remove("hidden");
    $("operator-label").textContent = state.operator ? "as " + state.operator : "operator unnamed";
    state.running = true;
    state.ticks = 0;
    loop();
  }

  async function loop() {
    if (!state.running) return;
    await refresh();
    if (state.running) state.timer = setTimeout(loop, REFRESH_MS);
  }

  // ---------- refresh ----------

  async function refresh() {
    if (!state.token) return;
    const wantAudit = state.ticks % AUDIT_EVERY === 0;
    state.ticks++;
    try {
      const [status, history, audit] = await Promise.all([
        api("GET", "/admin/v1/status"),
        api("GET", "/admin/v1/history"),
        wantAudit ? api("GET", "/admin/v1/audit") : Promise.resolve(null),
      ]);
      state.status = status;
      state.history = history || [];
      if (audit) state.audit = audit;
      state.lastOk = Date.now();
      state.lastError = "";
      render();
    } catch (e) {
      if (e.status === 401) return;
      state.lastError = e.message;
    }
    renderFreshness();
  }

  function setLive(ok, text) {
    $("live-dot").dataset.state = ok ? "ok" : "bad";
    $("last-updated").textContent = text;
  }

  function renderFreshness() {
    if (!state.running) return;
    const banner = $("error-banner");
    if (!state.lastOk) {
      setLive(false, "no data yet");
    } else {
      const age = Date.now() - state.lastOk;
      const stale = age > STALE_AFTER_MS;
      setLive(!stale && !state.lastError, "updated " + fmtTime(state.lastOk) + (age > 1500 ? " (" + (age / 1000).toFixed(0) + " s ago)" : ""));
      document.body.classList.toggle("stale", stale);
    }
    if (state.lastError) {
      banner.textContent = "Live data is failing: " + state.lastError +
        (state.lastOk ? ". Numbers below are from " + fmtTime(state.lastOk) + "." : ".");
      banner.classList.remove("hidden");
    } else {
      banner.classList.add("hidden");
    }
  }

  // ---------- render ----------

  function breakerView(name) {
    switch (name) {
      case "closed": return ["closed", "ok"];
      case "forced_closed": return ["forced closed", "warn"];
      case "half_open": return ["half-open", "warn"];
      case "open": return ["open", "bad"];
      case "forced_open": return ["forced open", "bad"];
      default: return [name || "—", "unknown"];
    }
  }

  function setKpi(id, text, kind) {
    const node = $(id);
    node.textContent = text;
    if (kind) node.dataset.state = kind; else delete node.dataset.state;
  }

  function render() {
    const s = state.status;
    if (!s) return;
    const now = s.rates.now;
    const sw = s.settings.switches;
    $("relay-id").textContent = s.relay_id;
    $("relay-version").textContent = "v" + s.version;
    $("relay-uptime").textContent = "up " + fmtDuration(s.uptime_s);
    document.title = "Tern relay " + s.relay_id + " — dashboard";

    const [bText, bKind] = breakerView(s.breaker.state);
    const bb = $("breaker-badge");
    bb.textContent = "breaker " + bText;
    bb.dataset.state = bKind;
    const fb = $("forwarding-badge");
    fb.textContent = sw.forwarding_degraded ? "forwarding degraded" : "forwarding normal";
    fb.dataset.state = sw.forwarding_degraded ? "bad" : "ok";
    // `drain` arrives with the drain feature (#7 item 3); absent on older relays.
    const drain = s.drain || null;
    const db = $("draining-badge");
    db.classList.toggle("hidden", !(drain && drain.draining));
    if (drain && drain.draining) db.textContent = "draining · " + fmtInt(drain.in_flight) + " in flight";

    setKpi("kpi-events", fmtNum(now.events_per_sec));
    setKpi("kpi-forwarded", fmtNum(now.forwarded_per_sec));
    setKpi("kpi-spooled", fmtNum(now.spooled_per_sec), now.spooled_per_sec > 0 ? "warn" : null);
    setKpi("kpi-retried", fmtNum(now.retried_per_sec), now.retried_per_sec > 0 ? "bad" : null);
    // p99 from relays that report it; the mean otherwise.
    const p99 = now.p99_ingest_ms;
    $("kpi-latency-label").textContent = p99 === undefined ? "Mean ingest latency" : "Ingest latency p99";
    const lat = p99 === undefined ? now.mean_ingest_ms : p99;
    setKpi("kpi-latency", fmtNum(lat) + " ms", lat > 10 ? "warn" : null);
    setKpi("kpi-spool", fmtInt(now.spool_objects), now.spool_objects > 0 ? "warn" : null);
    setKpi("kpi-lag", fmtNum(now.replay_lag_s) + " s", now.replay_lag_s > 60 ? "bad" : now.replay_lag_s > 0 ? "warn" : null);
    setKpi("kpi-connections", fmtInt(now.connections));

    renderCharts();
    renderServices(sw);
    renderDrain(drain);
    renderBreaker(s);
    renderReplay(s);
    renderTotals(s);
    renderApps(s);
    renderAudit();
  }

  // ---------- charts ----------

  const CHARTS = [
    { id: "chart-events", title: "Events acknowledged / s", series: [["events_per_sec", "events/s", "#38bdf8"]] },
    {
      id: "chart-batches", title: "Batches / s", series: [
        ["forwarded_per_sec", "forwarded", "#22c55e"], ["spooled_per_sec", "spooled", "#f59e0b"],
        ["retried_per_sec", "retry", "#ef4444"], ["rejected_per_sec", "rejected", "#a78bfa"]],
    },
    { id: "chart-latency", title: "Ingest latency (ms)", series: [["p99_ingest_ms", "p99", "#e879f9"], ["mean_ingest_ms", "mean", "#38bdf8"]] },
    { id: "chart-spool", title: "Spool objects waiting", series: [["spool_objects", "objects", "#f59e0b"]] },
    { id: "chart-breaker", title: "Breaker", step: true, yLabels: ["closed", "half-open", "open"], yMax: 2, series: [["breaker", "state", "#ef4444"]] },
  ];

  function niceMax(x) {
    if (!(x > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(x)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= x) return m * p;
    return 10 * p;
  }

  function renderCharts() {
    const h = state.history;
    for (const c of CHARTS) drawChart($(c.id), c, h);
  }

  function drawChart(fig, c, samples) {
    clear(fig);
    const latest = samples.length ? samples[samples.length - 1] : null;
    const legend = el("span", { class: "legend" });
    for (const [key, label, color] of c.series) {
      const i = el("i");
      i.style.background = color;
      const v = latest ? (c.yLabels ? c.yLabels[latest[key]] || latest[key] : fmtNum(latest[key])) : "—";
      legend.append(el("span", {}, i, label + " " + v));
    }
    fig.append(el("figcaption", {}, el("span", { text: c.title }), legend));

    const W = Math.max(300, Math.floor(fig.clientWidth - 24)), H = 150;
    const padL = 52, padR = 8, padT = 8, padB = 18;
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", "aria-label": c.title });
    // The window: the history held (up to five minutes), at least one minute.
    const end = latest ? latest.at_ms : Date.now();
    const held = samples.length ? (end - samples[0].at_ms) / 1000 : 0;
    const span = Math.min(300, Math.max(60, Math.ceil(held / 60) * 60));
    const start = end - span * 1000;
    let max = c.yMax || 0;
    if (!c.yMax) for (const s of samples) for (const [key] of c.series) max = Math.max(max, s[key] || 0);
    max = c.yMax || niceMax(max);
    const x = (t) => padL + (W - padL - padR) * (t - start) / (end - start);
    const y = (v) => padT + (H - padT - padB) * (1 - Math.min(v, max) / max);

    const ticks = c.yLabels ? c.yLabels.map((_, i) => i) : [0, max / 4, max / 2, (3 * max) / 4, max];
    for (const t of ticks) {
      root.append(svg("line", { class: "grid-line", x1: padL, x2: W - padR, y1: y(t), y2: y(t) }));
      const label = svg("text", { x: padL - 6, y: y(t) + 3, "text-anchor": "end" });
      label.textContent = c.yLabels ? c.yLabels[t] : fmtNum(t);
      root.append(label);
    }
    const xTicks = [];
    for (let secs = span; secs > 0; secs -= span >= 180 ? 60 : span / 4) {
      xTicks.push([secs, span >= 120 ? "-" + secs / 60 + " min" : "-" + secs + " s"]);
    }
    xTicks.push([0, "now"]);
    for (const [secs, text] of xTicks) {
      const lab = svg("text", { x: x(end - secs * 1000), y: H - 4, "text-anchor": secs === 0 ? "end" : secs === span ? "start" : "middle" });
      lab.textContent = text;
      root.append(lab);
    }
    for (const [key, , color] of c.series) {
      if (!samples.length) break;
      let d = "";
      samples.forEach((s, i) => {
        const px = x(s.at_ms).toFixed(1), py = y(s[key] || 0).toFixed(1);
        if (i === 0) d += `M${px},${py}`;
        else if (c.step) d += `H${px}V${py}`;
        else d += `L${px},${py}`;
      });
      if (c.series.length === 1) {
        const first = x(samples[0].at_ms).toFixed(1), last = x(end).toFixed(1), base = y(0).toFixed(1);
        root.append(svg("path", { class: "area", d: `${d}L${last},${base}L${first},${base}Z`, fill: color }));
      }
      root.append(svg("path", { class: "series", d, stroke: color }));
    }
    fig.append(root);
  }

  // ---------- services ----------

  const SERVICES = [
    { name: "forwarding", flag: "forwarding_degraded", title: "Forwarding", normal: "to the backend", degraded: "spool only",
      warn: "Every batch goes to the spool; nothing is forwarded to the backend and replay waits until forwarding is restored." },
    { name: "config", flag: "config_cache_only", title: "Config refresh", normal: "polling the backend", degraded: "cache only",
      warn: "Devices get the cached config bundles; the backend is not polled, so changes made there do not reach devices." },
    { name: "messages", flag: "messages_off", title: "In-app messages", normal: "served", degraded: "off",
      warn: "Config bundles are served without in-app messages; devices drop the messages they hold." },
    { name: "push", flag: "push_off", title: "Live push", normal: "streams open", degraded: "off",
      warn: "Every open push stream is ended and new ones are refused; devices fall back to polling." },
  ];

  function renderServices(sw) {
    if (!changed("services", sw)) return;
    const body = $("services-body");
    clear(body);
    for (const svc of SERVICES) {
      const degraded = !!sw[svc.flag];
      const button = degraded
        ? el("button", { type: "button", id: "svc-" + svc.name + "-toggle", dataset: { action: "restore" },
            on: { click: () => change("PUT", "/admin/v1/services/" + svc.name, { degraded: false }, svc.title + " restored") } },
            "Restore")
        : el("button", { type: "button", class: "danger", id: "svc-" + svc.name + "-toggle", dataset: { action: "degrade" },
            on: { click: () => degradeService(svc) } }, "Degrade…");
      body.append(el("tr", { id: "svc-" + svc.name, dataset: { degraded: String(degraded) } },
        el("td", {}, el("strong", { text: svc.title })),
        el("td", { text: degraded ? svc.degraded : svc.normal }),
        el("td", {}, el("span", { class: "pill", dataset: { state: degraded ? "bad" : "ok" }, text: degraded ? "DEGRADED" : "NORMAL" })),
        el("td", {}, button)));
    }
  }

  // Drain: shown only when the relay reports a drain state (it has the route).
  function renderDrain(drain) {
    const row = $("drain-row");
    row.classList.toggle("hidden", !drain);
    if (!drain) return;
    const b = $("drain-button");
    b.disabled = drain.draining;
    b.textContent = drain.draining ? "Draining…" : "Drain relay…";
  }

  async function drainRelay() {
    const id = state.status ? state.status.relay_id : "this relay";
    const r = await confirmAction("Drain " + id + "?",
      "The relay stops taking connections and requests, finishes those in flight, tells devices to move to the next relay, hands its spool over and exits. It does not come back by itself.",
      { ok: "Drain " + id });
    if (r.ok) await change("POST", "/admin/v1/drain", undefined, "Draining " + id);
  }

  async function degradeService(svc) {
    const r = await confirmAction("Degrade " + svc.title.toLowerCase() + "?", svc.warn, { ok: "Degrade " + svc.name });
    if (r.ok) await change("PUT", "/admin/v1/services/" + svc.name, { degraded: true }, svc.title + " degraded");
  }

  // ---------- breaker and replay ----------

  function renderBreaker(s) {
    $("breaker-state").textContent = breakerView(s.breaker.state)[0];
    for (const b of $("breaker-buttons").querySelectorAll("button")) {
      b.classList.toggle("active", b.dataset.override === s.breaker.setting);
    }
  }

  async function setBreaker(setting) {
    if (state.status && state.status.breaker.setting === setting) return;
    if (setting === "force_open") {
      const r = await confirmAction("Force the breaker open?",
        "Every batch is spooled instead of forwarded until the override is removed; the backend receives no ingest traffic.",
        { ok: "Force open" });
      if (!r.ok) return;
    } else if (setting === "force_closed") {
      const r = await confirmAction("Force the breaker closed?",
        "Every batch is forwarded even if the backend fails or is slow; devices get Retry instead of being spooled.",
        { ok: "Force closed" });
      if (!r.ok) return;
    }
    await change("PUT", "/admin/v1/breaker", { override: setting }, "Breaker override: " + setting);
  }

  function renderReplay(s) {
    const r = s.replay, p = r.progress;
    const parts = [];
    parts.push(r.paused ? "PAUSED by an operator" : r.held_by_degraded_forwarding ? "held: forwarding is degraded" : "running");
    parts.push("rate " + fmtInt(p.rate_per_sec) + " batches/s" + (r.max_rate ? " (cap " + fmtInt(r.max_rate) + ")" : " (default cap)"));
    parts.push(fmtInt(p.objects_waiting) + " objects waiting, lag " + fmtNum(p.lag_ms / 1000) + " s");
    parts.push(fmtInt(p.batches_replayed) + " batches replayed");
    $("replay-summary").textContent = parts.join(" · ");
    const t = $("replay-toggle");
    t.textContent = r.paused ? "Resume replay" : "Pause replay…";
    t.className = r.paused ? "primary" : "danger";
    t.dataset.paused = String(r.paused);
    const input = $("replay-rate-input");
    if (document.activeElement !== input) input.placeholder = r.max_rate ? String(r.max_rate) : "default";
  }

  async function toggleReplay() {
    const paused = state.status && state.status.replay.paused;
    if (!paused) {
      const r = await confirmAction("Pause replay?",
        "Spooled batches stay in the spool until replay is resumed; the replay lag grows.", { ok: "Pause replay" });
      if (!r.ok) return;
    }
    await change("PUT", "/admin/v1/replay", { paused: !paused }, paused ? "Replay resumed" : "Replay paused");
  }

  // ---------- totals and spool ----------

  function kvRows(body, rows) {
    clear(body);
    for (const [k, v] of rows) body.append(el("tr", {}, el("td", { text: k }), el("td", { text: v })));
  }

  function renderTotals(s) {
    const t = s.totals;
    kvRows($("totals-body"), [
      ["events accepted", fmtInt(t.events_accepted)],
      ["batches forwarded", fmtInt(t.accepted_forwarded)],
      ["batches spooled", fmtInt(t.accepted_spooled)],
      ["  of which forwarding degraded", fmtInt(t.degraded_spooled)],
      ["batches answered Retry", fmtInt(t.retried)],
      ["batches rejected", fmtInt(t.rejected)],
      ["misrouted batches", fmtInt(t.misrouted)],
      ["push subscribers", fmtInt(s.connections.push_subscribers)],
      ["shard map version", fmtInt(s.shard_map_version)],
    ]);
    const rows = [];
    if (!s.spool) rows.push(["spool", "none configured"]);
    else {
      rows.push(["room for another object", s.spool.has_room ? "yes" : "NO (devices get Retry)"]);
      for (const t of s.spool.targets) {
        rows.push([t.name, fmtBytes(t.bytes) + (t.capacity_bytes ? " of " + fmtBytes(t.capacity_bytes) : "")]);
      }
    }
    rows.push(["objects replayed", fmtInt(s.replay.progress.objects_replayed)]);
    rows.push(["taken over from other relays", fmtInt(s.replay.progress.objects_taken_over)]);
    kvRows($("spool-body"), rows);
  }

  // ---------- apps ----------

  function renderApps(s) {
    const st = s.settings, rates = s.rates.per_app_events_per_sec || {};
    const d = s.default_app_limit;
    $("apps-default").textContent = "Apps without their own limit: " + fmtInt(d.events_per_sec) + " events/s, burst " + fmtInt(d.burst) + ". Apps listed: with traffic in the last second, a limit or a block.";
    const apps = new Set([...Object.keys(rates), ...Object.keys(st.app_limits), ...Object.keys(st.blocked_apps)]);
    const shownRates = {};
    for (const a of apps) shownRates[a] = fmtNum(rates[a] || 0);
    if (!changed("apps", [shownRates, st.app_limits, st.blocked_apps])) return;
    const body = $("apps-body");
    clear(body);
    if (!apps.size) {
      body.append(el("tr", {}, el("td", { colspan: 5, class: "muted", text: "No traffic, limits or blocks." })));
      return;
    }
    for (const app of [...apps].sort()) {
      const limit = st.app_limits[app];
      const blocked = Object.prototype.hasOwnProperty.call(st.blocked_apps, app);
      const actions = el("td", {});
      actions.append(el("button", { type: "button", class: "ghost", on: { click: () => editApp(app, limit) } }, "Edit limit"));
      if (limit) {
        actions.append(" ", el("button", { type: "button", class: "ghost",
          on: { click: () => change("DELETE", "/admin/v1/apps/" + encodeURIComponent(app) + "/limit", undefined, app + ": default limit") } }, "Default limit"));
      }
      actions.append(" ", blocked
        ? el("button", { type: "button", class: "primary",
            on: { click: () => change("DELETE", "/admin/v1/apps/" + encodeURIComponent(app) + "/block", undefined, app + " unblocked") } }, "Unblock")
        : el("button", { type: "button", class: "danger", on: { click: () => blockApp(app) } }, "Block…"));
      body.append(el("tr", { dataset: { app } },
        el("td", {}, el("code", { text: app })),
        el("td", { class: "num", text: fmtNum(rates[app] || 0) }),
        el("td", { text: limit ? fmtInt(limit.events_per_sec) + "/s, burst " + fmtInt(limit.burst) : "default" }),
        el("td", {}, blocked
          ? el("span", { class: "pill", dataset: { state: "bad" }, text: "BLOCKED" + (st.blocked_apps[app] ? ": " + st.blocked_apps[app] : "") })
          : el("span", { class: "pill", dataset: { state: "ok" }, text: "active" })),
        actions));
    }
  }

  function editApp(app, limit) {
    $("app-input").value = app;
    const d = state.status.default_app_limit;
    $("app-rate-input").value = (limit || d).events_per_sec;
    $("app-burst-input").value = (limit || d).burst;
    $("app-rate-input").focus();
  }

  async function blockApp(app) {
    if (!app) { toast("Name the app to block", "bad"); return; }
    const r = await confirmAction("Block app " + app + "?",
      "Every batch of this app's devices is answered Retry (devices keep their events) until it is unblocked.",
      { ok: "Block " + app, reason: true });
    if (!r.ok) return;
    await change("PUT", "/admin/v1/apps/" + encodeURIComponent(app) + "/block", { reason: r.reason }, app + " blocked");
  }

  async function submitLimit(ev) {
    ev.preventDefault();
    const app = $("app-input").value.trim();
    const rate = Number($("app-rate-input").value), burst = Number($("app-burst-input").value);
    if (!app || !(rate >= 1) || !(burst >= 1)) { toast("App, events/s and burst are required", "bad"); return; }
    await change("PUT", "/admin/v1/apps/" + encodeURIComponent(app) + "/limit",
      { events_per_sec: Math.floor(rate), burst: Math.floor(burst) }, app + ": limit set");
  }

  // ---------- audit ----------

  function renderAudit() {
    const last = state.audit[state.audit.length - 1];
    if (!changed("audit", [state.audit.length, last && last.at_ms, last && last.action])) return;
    const body = $("audit-body");
    clear(body);
    const entries = state.audit.slice(-100).reverse();
    if (!entries.length) {
      body.append(el("tr", {}, el("td", { colspan: 6, class: "muted", text: "No changes since the relay started." })));
      return;
    }
    for (const e of entries) {
      body.append(el("tr", {},
        el("td", { text: new Date(e.at_ms).toLocaleString("en-GB", { hour12: false }) }),
        el("td", { text: e.operator }),
        el("td", { text: e.remote || "—" }),
        el("td", { text: e.action }),
        el("td", { text: JSON.stringify(e.before) }),
        el("td", { text: JSON.stringify(e.after) })));
    }
  }

  // ---------- wiring ----------

  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      signIn($("token-input").value, $("operator-input").value);
    });
    $("sign-out").addEventListener("click", () => signOut("Signed out."));
    $("confirm-ok").addEventListener("click", () => closeConfirm(true));
    $("confirm-cancel").addEventListener("click", () => closeConfirm(false));
    document.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape" && confirmResolve) closeConfirm(false);
    });
    for (const b of $("breaker-buttons").querySelectorAll("button")) {
      b.addEventListener("click", () => setBreaker(b.dataset.override));
    }
    $("replay-toggle").addEventListener("click", toggleReplay);
    $("drain-button").addEventListener("click", drainRelay);
    $("replay-rate-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const v = Number($("replay-rate-input").value);
      if (!(v >= 1)) { toast("The cap is at least 1 batch/s (pause replay instead)", "bad"); return; }
      $("replay-rate-input").value = "";
      change("PUT", "/admin/v1/replay", { max_rate: Math.floor(v) }, "Replay cap set");
    });
    $("replay-rate-clear").addEventListener("click", () => change("PUT", "/admin/v1/replay", { max_rate: null }, "Replay cap: default"));
    $("app-form").addEventListener("submit", submitLimit);
    $("app-block-submit").addEventListener("click", () => blockApp($("app-input").value.trim()));
    setInterval(renderFreshness, 500);
    window.addEventListener("resize", () => { if (state.status) renderCharts(); });

    if (state.token) start();
    else signOut("");
  });
})();
