// Overview: event counts, a live chart of ingested and delivered events per second (from
// successive GET /api/queue/stats polls: no page reload), and the endpoints' health.

import { h, replace, badge } from "./dom.js";

const POLL_MS = 2000;
/** The endpoints' success rates are read every this many polls (one request per endpoint). */
const HEALTH_EVERY = 5;
/** How many of an endpoint's latest attempts its success rate covers. */
const RECENT_ATTEMPTS = 20;
/**
 * At most this many success-rate reads at once: the organization's requests share a few
 * places at the store (TRIGGERS_STORE_CONCURRENCY), with its own inbox consumers.
 */
const HEALTH_CONCURRENCY = 2;
/** How much history the chart keeps (5 minutes of polls). */
const WINDOW_MS = 5 * 60 * 1000;
const SVG = "http://www.w3.org/2000/svg";

/** Samples survive leaving and re-entering the view (not a reload). */
const samples = [];

/** Forgets the chart's history (on sign-out: it belongs to one organization). */
export function resetSamples() {
  samples.length = 0;
}

export function render(root, ctx) {
  const counts = {};
  const cards = h("div", { className: "cards" },
    ["pending", "in_flight", "delivered", "failed"].map((k) => {
      counts[k] = h("div", { className: "count", data: { testid: `count-${k}` } }, "…");
      return h("div", { className: `card stat ${k}` }, counts[k], h("div", { className: "label" }, k.replace("_", " ")));
    }));
  const chart = h("div", { className: "chart" });
  const rates = h("p", { className: "hint", data: { testid: "rates" } });
  const health = h("tbody");
  replace(root,
    h("h1", {}, "Overview"),
    cards,
    h("section", { className: "card" },
      h("h2", {}, "Events per second, last 5 minutes"),
      h("div", { className: "legend" },
        h("span", { className: "key ingested" }, "ingested"),
        h("span", { className: "key delivered" }, "delivered")),
      chart, rates),
    h("section", { className: "card" },
      h("h2", {}, "Endpoints"),
      h("table", {},
        h("thead", {}, h("tr", {}, ["URL", "Filter", "State", "Recent success"].map((t) => h("th", {}, t)))),
        health)));

  // Success rates by endpoint id, refreshed every HEALTH_EVERY polls.
  let success = new Map();
  let polls = 0;

  async function tick() {
    const stats = await ctx.api("GET", "/api/queue/stats");
    for (const k of Object.keys(counts)) counts[k].textContent = String(stats[k] ?? 0);
    const now = Date.now();
    samples.push({ at: now, total: stats.pending + stats.delivered + stats.failed, delivered: stats.delivered });
    while (samples.length && samples[0].at < now - WINDOW_MS) samples.shift();
    drawChart(chart, rates);
    const { webhooks } = await ctx.api("GET", "/api/webhook/config");
    if (polls++ % HEALTH_EVERY === 0 || webhooks.some((w) => !success.has(w.id))) {
      success = await successRates(ctx, webhooks, success);
    }
    replace(health, webhooks.length
      ? webhooks.map((w) => h("tr", {},
        h("td", { className: "mono" }, w.url),
        h("td", { className: "mono" }, w.event_type_filter ?? "*"),
        h("td", {}, w.enabled ? badge("enabled") : badge("disabled"),
          w.disabled_reason ? h("span", { className: "hint" }, ` ${w.disabled_reason}`) : null),
        h("td", { data: { testid: "success-rate" } }, success.get(w.id) ?? "—")))
      : h("tr", {}, h("td", { colSpan: 4, className: "hint" }, "No endpoints: events wait in the inbox.")));
  }
  return ctx.poll(tick, POLL_MS);
}

/**
 * Each endpoint's share of successful attempts among its latest RECENT_ATTEMPTS, as text,
 * read HEALTH_CONCURRENCY at a time. An endpoint whose read fails keeps its `previous` text
 * (or says so) until the next round: one failure neither hides the others nor makes every
 * read run again at the next poll.
 */
async function successRates(ctx, webhooks, previous) {
  const out = new Map();
  let next = 0;
  const worker = async () => {
    while (next < webhooks.length) {
      const w = webhooks[next++];
      try {
        const q = `limit=${RECENT_ATTEMPTS}`;
        const { attempts } = await ctx.api("GET", `/api/webhooks/${encodeURIComponent(w.id)}/attempts?${q}`);
        const ok = attempts.filter((a) => a.success).length;
        out.set(w.id, attempts.length
          ? `${Math.round((100 * ok) / attempts.length)} % of last ${attempts.length}`
          : "no attempts yet");
      } catch (e) {
        if (e.status === 401) throw e; // signed out: the poll shows it
        out.set(w.id, previous.get(w.id) ?? "unavailable");
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(HEALTH_CONCURRENCY, webhooks.length) }, worker));
  return out;
}

/** Per-second rates between successive samples (never negative: retention may purge). */
function rates() {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const a = samples[i - 1], b = samples[i];
    const dt = (b.at - a.at) / 1000;
    if (dt <= 0) continue;
    out.push({
      at: b.at,
      ingested: Math.max(0, (b.total - a.total) / dt),
      delivered: Math.max(0, (b.delivered - a.delivered) / dt),
    });
  }
  return out;
}

function drawChart(box, caption) {
  const W = 720, H = 180, PAD = 28;
  const points = rates();
  const max = niceCeil(Math.max(1, ...points.map((p) => Math.max(p.ingested, p.delivered))));
  const now = Date.now();
  const x = (at) => PAD + (W - PAD - 4) * (1 - (now - at) / WINDOW_MS);
  const y = (v) => H - PAD - (H - 2 * PAD) * (v / max);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", "ingested and delivered events per second");
  const el = (name, attrs, text) => {
    const e = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    svg.append(e);
    return e;
  };
  for (const v of [0, max / 2, max]) {
    el("line", { x1: PAD, x2: W - 4, y1: y(v), y2: y(v), class: "grid" });
    el("text", { x: PAD - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" }, fmt(v));
  }
  el("text", { x: PAD, y: H - 8, class: "axis" }, "−5 min");
  el("text", { x: W - 4, y: H - 8, class: "axis", "text-anchor": "end" }, "now");
  for (const series of ["ingested", "delivered"]) {
    if (points.length === 0) continue;
    const d = points.map((p) => `${x(p.at).toFixed(1)},${y(p[series]).toFixed(1)}`).join(" ");
    el("polyline", { points: d, class: `line ${series}` });
  }
  replace(box, svg);
  const last = points[points.length - 1];
  caption.textContent = last
    ? `now: ${fmt(last.ingested)}/s ingested, ${fmt(last.delivered)}/s delivered (delivered includes acknowledged)`
    : "collecting…";
}

function fmt(v) {
  return v >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1);
}

/** The smallest 1, 2 or 5 × 10^k at or above `v`: round axis labels. */
function niceCeil(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((n) => n >= v);
}
