// joulegate's live page: polls this admin listener and draws what it says. No library, no build
// step; every value from the server goes into the page as text (tags and models are client input).
"use strict";
(() => {
  const RECENT = __RECENT_ROWS__;  // finished requests asked for per poll
  const IN_FLIGHT_ROWS = 50;       // in-flight rows shown (the count above them is the total)
  const REFRESH_MS = 1000;
  const SMOOTH = 5;                // points averaged in the energy-split chart
  const SVG = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f7fd1", "#d1495b", "#2e8b57", "#8e5cc2", "#e0913b", "#00798c", "#b5651d", "#6b7480"];

  // With `admin_token` set the page is opened as /?token=...; the data routes need the header.
  const token = new URLSearchParams(location.search).get("token");
  const headers = token ? { Authorization: "Bearer " + token } : {};

  let lastSeq = 0;
  let lastUptime = -1;
  let devices = [];
  let points = [];
  let capacity = 600;

  const $ = (id) => document.getElementById(id);

  async function get(path) {
    const r = await fetch(path, { headers, cache: "no-store" });
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }

  function setStatus(state, text) {
    const s = $("status");
    s.dataset.state = state;
    s.textContent = text;
  }

  // Numbers ---------------------------------------------------------------------------------
  const num = (x, digits) => (x == null || !isFinite(x)) ? "–" : Number(x).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: 0 });
  function sig(x, n = 3) {
    if (x == null || !isFinite(x)) return "–";
    if (x === 0) return "0";
    const d = Math.max(0, n - 1 - Math.floor(Math.log10(Math.abs(x))));
    return num(x, Math.min(d, 6));
  }
  function joules(x) {
    if (x == null || !isFinite(x)) return "–";
    if (Math.abs(x) >= 3.6e6) return sig(x / 3.6e6) + " kWh";
    if (Math.abs(x) >= 1e4) return sig(x / 1e3) + " kJ";
    return sig(x) + " J";
  }
  const watts = (x) => (x == null || !isFinite(x)) ? "–" : sig(x) + " W";
  const hms = (rfc) => { const d = rfc ? new Date(rfc) : null; return d && !isNaN(d) ? d.toLocaleTimeString("en-GB") : "–"; };

  // DOM helpers -----------------------------------------------------------------------------
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v != null) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text != null) e.textContent = text;
    return e;
  }
  // cells: [text, className] pairs; className "n" right-aligns numbers.
  function row(cells, attrs) {
    const tr = el("tr", attrs);
    for (const [text, cls] of cells) tr.appendChild(el("td", cls ? { class: cls } : null, text));
    return tr;
  }
  function fill(tbodyId, rows, emptyText, columns) {
    const body = $(tbodyId);
    if (rows.length === 0) {
      const tr = el("tr", { class: "none" });
      tr.appendChild(el("td", { colspan: columns }, emptyText));
      body.replaceChildren(tr);
    } else {
      body.replaceChildren(...rows);
    }
  }
  function legend(id, items) {
    $(id).replaceChildren(...items.map(([label, color, dashed]) => {
      const s = el("span");
      const i = el("i");
      i.style.background = dashed ? "repeating-linear-gradient(90deg," + color + " 0 4px,transparent 4px 7px)" : color;
      s.append(i, label);
      return s;
    }));
  }

  // Charts ------------------------------------------------------------------------------------
  const W = 640, H = 240, L = 46, R = 10, T = 10, B = 22;

  // Draws a time chart: `series` are {label, color, pts: [[t, y]...], fill?, dashed?}; stacked
  // areas come as `areas`: {color, top: [[t, y]...], bottom: [[t, y]...]}.
  function chart(id, t0, t1, yMax, series, areas, emptyText, pointCount) {
    const root = $(id);
    const kids = [];
    const x = (t) => L + (W - L - R) * (t - t0) / Math.max(1e-9, t1 - t0);
    const y = (v) => T + (H - T - B) * (1 - v / yMax);
    const step = niceStep(yMax / 4);
    for (let v = 0; v <= yMax + 1e-9; v += step) {
      kids.push(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      kids.push(svg("text", { class: "axis", x: L - 4, y: y(v) + 3, "text-anchor": "end" }, sig(v, 2)));
    }
    const span = t1 - t0;
    const tStep = span > 300 ? 60 : span > 120 ? 30 : span > 40 ? 10 : 5;
    for (let back = 0; back <= span + 1e-9; back += tStep) {
      const t = t1 - back;
      kids.push(svg("text", { class: "axis", x: x(t), y: H - 6, "text-anchor": back === 0 ? "end" : "middle" }, back === 0 ? "now" : "−" + fmtAgo(back)));
    }
    for (const a of areas) {
      if (a.top.length < 2) continue;
      const up = a.top.map(([t, v]) => x(t).toFixed(1) + "," + y(v).toFixed(1));
      const down = a.bottom.slice().reverse().map(([t, v]) => x(t).toFixed(1) + "," + y(v).toFixed(1));
      kids.push(svg("polygon", { points: up.concat(down).join(" "), fill: a.color, "fill-opacity": "0.75", stroke: "none" }));
    }
    for (const s of series) {
      if (s.pts.length === 0) continue;
      const d = s.pts.map(([t, v], i) => (i ? "L" : "M") + x(t).toFixed(1) + " " + y(Math.min(v, yMax)).toFixed(1)).join(" ");
      const attrs = { d, stroke: s.color, class: s.dashed ? "baseline" : "series", "data-series": s.label };
      if (s.dashed) attrs.fill = "none";
      kids.push(svg("path", attrs));
    }
    if (pointCount === 0) {
      kids.push(svg("text", { class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle" }, emptyText));
    }
    root.replaceChildren(...kids);
    root.dataset.points = String(pointCount);
    root.dataset.series = String(series.filter((s) => s.pts.length > 0 && !s.dashed).length);
  }
  function niceStep(raw) {
    if (!(raw > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    const m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }
  const fmtAgo = (s) => s >= 60 ? (s % 60 === 0 ? (s / 60) + " min" : Math.floor(s / 60) + "m" + (s % 60) + "s") : s + " s";
  function window_(now) {
    const t1 = Math.max(now, points.length ? points[points.length - 1].t_s : now);
    const first = points.length ? points[0].t_s : t1 - 60;
    return [Math.max(first, t1 - capacity, 0), Math.max(t1, first + 10)];
  }

  function drawPower(now, available) {
    const [t0, t1] = window_(now);
    const series = devices.map((name, i) => ({
      label: name, color: COLORS[i % COLORS.length],
      pts: points.filter((p) => p.power_w[i] != null).map((p) => [p.t_s, p.power_w[i]]),
    }));
    if (devices.length > 1) {
      series.push({
        label: "total", color: "#1d232b",
        pts: points.filter((p) => p.power_w.some((w) => w != null)).map((p) => [p.t_s, p.power_w.reduce((a, w) => a + (w || 0), 0)]),
      });
    }
    const idle = points.length ? points[points.length - 1].p_idle_w : null;
    let yMax = 1;
    for (const s of series) for (const [, v] of s.pts) yMax = Math.max(yMax, v);
    if (idle != null) {
      yMax = Math.max(yMax, idle);
      series.push({ label: "idle", color: "#6b7480", dashed: true, pts: [[t0, idle], [t1, idle]] });
    }
    const drawn = series.filter((s) => !s.dashed).reduce((n, s) => Math.max(n, s.pts.length), 0);
    chart("power-chart", t0, t1, yMax * 1.1, series, [], available ? "waiting for the first second of ticks…" : "energy unavailable: no working meter (see /stats meters)", drawn);
    legend("power-legend", series.map((s) => [s.dashed ? "idle " + watts(idle) : s.label, s.color, s.dashed]));
  }

  function drawSplit(now, available) {
    const [t0, t1] = window_(now);
    const att = [], idl = [], una = [], mea = [];
    // Settlement comes in steps (held ticks settle together): a 5-point window keeps the
    // stacked rates readable without hiding minutes-long trends.
    for (let i = 1; i < points.length; i++) {
      const a = points[Math.max(0, i - SMOOTH)], b = points[i];
      const dt = b.t_s - a.t_s;
      if (!(dt > 0)) continue;
      const da = Math.max(0, b.attributed_joules - a.attributed_joules) / dt;
      const di = Math.max(0, b.idle_joules - a.idle_joules) / dt;
      const du = Math.max(0, b.unattributed_joules - a.unattributed_joules) / dt;
      att.push([b.t_s, da]);
      idl.push([b.t_s, da + di]);
      una.push([b.t_s, da + di + du]);
      mea.push([b.t_s, Math.max(0, b.measured_joules - a.measured_joules) / dt]);
    }
    const zero = att.map(([t]) => [t, 0]);
    let yMax = 1;
    for (const [, v] of una.concat(mea)) yMax = Math.max(yMax, v);
    const css = getComputedStyle(document.documentElement);
    const c = (name) => css.getPropertyValue(name).trim();
    const areas = [
      { color: c("--attributed"), top: att, bottom: zero },
      { color: c("--idle"), top: idl, bottom: att },
      { color: c("--unattributed"), top: una, bottom: idl },
    ];
    const series = [{ label: "measured", color: c("--measured"), pts: mea }];
    chart("split-chart", t0, t1, yMax * 1.1, series, areas, available ? "waiting for two seconds of ticks…" : "energy unavailable: no working meter", att.length);
    legend("split-chart-legend", [["attributed", c("--attributed")], ["idle", c("--idle")], ["unattributed", c("--unattributed")], ["measured", c("--measured")]]);
  }

  // Figures -----------------------------------------------------------------------------------
  function drawTiles(stats) {
    const t = stats.totals || {};
    const last = points.length ? points[points.length - 1] : null;
    const power = last ? last.power_w.reduce((a, w) => a + (w || 0), 0) : null;
    const tiles = [
      ["power now", watts(power)],
      ["idle baseline", watts(stats.idle && stats.idle.p_idle_w)],
      ["measured", joules(t.measured_joules)],
      ["attributed", joules(t.attributed_joules)],
      ["idle", joules(t.idle_joules)],
      ["unattributed", joules(t.unattributed_joules)],
      ["pending", joules(t.pending_joules)],
      ["J / token", sig(t.joules_per_token)],
      ["requests", num(t.requests, 0)],
      ["in flight", num(t.in_flight, 0)],
    ];
    if (t.co2_grams != null) tiles.push(["CO₂", sig(t.co2_grams) + " g"]);
    if (!stats.energy_available) tiles.unshift(["energy", "unavailable"]);
    $("tiles").replaceChildren(...tiles.map(([k, v]) => {
      const d = el("div", { class: "tile" });
      d.append(el("div", { class: "k" }, k), el("div", { class: "v" }, v));
      return d;
    }));
    const parts = [["attributed", t.attributed_joules, "--attributed"], ["idle", t.idle_joules, "--idle"], ["unattributed", t.unattributed_joules, "--unattributed"]];
    const sum = parts.reduce((a, [, v]) => a + (v || 0), 0);
    const css = getComputedStyle(document.documentElement);
    $("split-bar").replaceChildren(...parts.map(([label, v, color]) => {
      const s = el("span", { title: label });
      s.style.width = sum > 0 ? (100 * (v || 0) / sum).toFixed(2) + "%" : "0";
      s.style.background = css.getPropertyValue(color).trim();
      return s;
    }));
    legend("split-legend", parts.map(([label, v, color]) => [label + " " + (sum > 0 ? num(100 * (v || 0) / sum, 1) : "0") + " %", css.getPropertyValue(color).trim()]));
  }

  function drawRequests(reqs) {
    const now = Date.now();
    const live = (reqs.in_flight || []).slice(0, IN_FLIGHT_ROWS).map((r) => row([
      [r.id, "id"], [r.model || "–", "cut"], [r.tag || "–", "cut"], [r.state],
      [num((now - Date.parse(r.arrival)) / 1000, 1), "n"],
      [num(r.prompt_tokens, 0), "n"], [num(r.completion_tokens, 0), "n"],
      [sig(r.energy_joules), "n"], [r.status, "st-" + r.status],
    ], { "data-id": r.id }));
    $("inflight-count").textContent = "(" + (reqs.in_flight_total || 0) + ")";
    fill("inflight-rows", live, "none", 9);
    const done = (reqs.requests || []).map((r) => {
      const tokens = (r.prompt_tokens || 0) + (r.completion_tokens || 0);
      return row([
        [hms(r.end)], [r.id, "id"], [r.model || "–", "cut"], [r.tag || "–", "cut"], [r.endpoint + (r.stream ? " (stream)" : "")],
        [num(r.prompt_tokens, 0), "n"], [num(r.completion_tokens, 0), "n"],
        [sig(r.energy_joules), "n"], [tokens > 0 ? sig(r.energy_joules / tokens) : "–", "n"],
        [r.status, "st-" + r.status],
      ], { "data-id": r.id, "data-status": r.status });
    });
    $("recent-count").textContent = "(newest " + done.length + ")";
    fill("recent-rows", done, "no finished request yet", 10);
  }

  function drawGroups(tbodyId, table) {
    const rows = Object.entries(table || {})
      .sort((a, b) => (b[1].energy_joules || 0) - (a[1].energy_joules || 0))
      .map(([name, g]) => row([
        [name, "cut"], [num(g.requests, 0), "n"], [num(g.tokens, 0), "n"], [joules(g.energy_joules), "n"],
        [sig(g.joules_per_token), "n"], [sig(g.mean_power_w), "n"],
      ], { "data-name": name }));
    fill(tbodyId, rows, "none yet", 6);
  }

  function mergeHistory(hist, uptime) {
    if (uptime < lastUptime) { lastSeq = 0; points = []; }  // the proxy restarted
    lastUptime = uptime;
    capacity = hist.capacity || capacity;
    devices = hist.devices || [];
    for (const p of hist.points || []) points.push(p);
    if (points.length) lastSeq = points[points.length - 1].seq;
    if (points.length > capacity) points = points.slice(points.length - capacity);
  }

  async function refresh() {
    try {
      const [stats, reqs, hist] = await Promise.all([
        get("/stats"), get("/requests?limit=" + RECENT), get("/history?since=" + lastSeq),
      ]);
      mergeHistory(hist, stats.uptime_s);
      drawTiles(stats);
      drawPower(hist.now_s, stats.energy_available);
      drawSplit(hist.now_s, stats.energy_available);
      drawRequests(reqs);
      drawGroups("tags-rows", stats.tags);
      drawGroups("models-rows", stats.models);
      setStatus("live", "updated " + new Date().toLocaleTimeString("en-GB"));
    } catch (e) {
      setStatus("error", String((e && e.message) || e));
    } finally {
      setTimeout(refresh, REFRESH_MS);
    }
  }
  refresh();
})();
