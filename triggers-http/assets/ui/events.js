// Events: the inbox with status and type filters and cursor paging; one event's detail with
// its payload, dedup id and delivery attempts, and the Ack and Replay buttons.

import { h, replace, time, badge } from "./dom.js";
import { query } from "./api.js";

const PAGE = 50;
const LIST_POLL_MS = 5000;
const DETAIL_POLL_MS = 2000;
/** An event's detail lists its latest this many attempts (an event may have thousands). */
const SHOWN_ATTEMPTS = 50;
/** Once an event is delivered or failed, its detail is read every this many polls only. */
const SETTLED_EVERY = 5;

/** The list's filters and position survive opening an event and coming back. */
const state = { status: "pending", type: "", cursors: [null] };

/** Back to the first pending page (on sign-out: cursors belong to one organization). */
export function resetState() {
  Object.assign(state, { status: "pending", type: "", cursors: [null] });
}

export function renderList(root, ctx) {
  const status = h("select", { name: "status", data: { testid: "status-filter" } },
    ["pending", "delivered", "failed"].map((s) => h("option", { value: s, selected: s === state.status }, s)));
  const type = h("input", { name: "type", value: state.type, placeholder: "type glob, e.g. user.*", spellcheck: false, data: { testid: "type-filter" } });
  const rows = h("tbody");
  const pageInfo = h("span", { className: "hint" });
  const prev = h("button", { type: "button", className: "ghost" }, "← Newer");
  const next = h("button", { type: "button", className: "ghost" }, "Older →");
  let nextCursor = null;

  const applyFilters = () => {
    state.status = status.value;
    state.type = type.value.trim();
    state.cursors = [null];
    load().catch(ctx.showProblem);
  };
  status.addEventListener("change", applyFilters);
  const form = h("form", { className: "filters", onSubmit: (e) => { e.preventDefault(); applyFilters(); } },
    h("label", {}, "Status ", status), h("label", {}, "Type ", type),
    h("button", { type: "submit" }, "Apply"),
    h("button", { type: "button", className: "ghost", onClick: () => load().catch(ctx.showProblem) }, "Refresh"));
  prev.addEventListener("click", () => { state.cursors.pop(); load().catch(ctx.showProblem); });
  next.addEventListener("click", () => { state.cursors.push(nextCursor); load().catch(ctx.showProblem); });

  replace(root,
    h("h1", {}, "Events"),
    form,
    h("table", { className: "events" },
      h("thead", {}, h("tr", {}, ["Created", "Type", "Status", "Dedup id", "Id"].map((t) => h("th", {}, t)))),
      rows),
    h("div", { className: "pager" }, prev, pageInfo, next));

  async function load() {
    const cursor = state.cursors[state.cursors.length - 1];
    const page = await ctx.api("GET", `/api/inbox${query({ status: state.status, type: state.type, limit: PAGE, cursor })}`);
    nextCursor = page.next_cursor;
    prev.disabled = state.cursors.length <= 1;
    next.disabled = !nextCursor;
    pageInfo.textContent = `page ${state.cursors.length} · ${page.events.length} event(s), oldest first`;
    replace(rows, page.events.length
      ? page.events.map((e) => {
        const open = () => ctx.navigate(`#/events/${encodeURIComponent(e.id)}`);
        return h("tr", { className: "link", tabIndex: 0, data: { id: e.id }, onClick: open, onKeydown: (k) => { if (k.key === "Enter") open(); } },
          h("td", {}, time(e.created_at)),
          h("td", { className: "mono" }, e.type),
          h("td", {}, badge(e.status)),
          h("td", { className: "mono" }, e.dedup_id ?? "—"),
          h("td", { className: "mono dim" }, e.id));
      })
      : h("tr", {}, h("td", { colSpan: 5, className: "hint" }, `No ${state.status} events${state.type ? ` of type ${state.type}` : ""}.`)));
  }
  // Only the first page refreshes by itself: later pages stay put while you read them.
  return ctx.poll(async () => { if (state.cursors.length === 1) await load(); }, LIST_POLL_MS);
}

export function renderDetail(root, ctx, id) {
  const head = h("div", { className: "detail-head" });
  const facts = h("dl", { className: "facts" });
  const payload = h("pre", { className: "payload", data: { testid: "payload" } });
  const attempts = h("tbody");
  const ack = h("button", { type: "button", data: { testid: "ack" } }, "Ack");
  const replay = h("button", { type: "button", data: { testid: "replay" } }, "Replay");
  const note = h("span", { className: "hint", data: { testid: "action-note" } });
  const shownNote = h("p", { className: "hint", data: { testid: "attempts-shown" } });
  let endpointUrls = new Map();

  ack.addEventListener("click", async () => {
    try {
      const r = await ctx.api("POST", `/api/ack/${encodeURIComponent(id)}`);
      note.textContent = `Acknowledged: now ${r.status}.`;
      await load();
    } catch (e) { ctx.showProblem(e); }
  });
  replay.addEventListener("click", async () => {
    try {
      const r = await ctx.api("POST", `/api/events/${encodeURIComponent(id)}/replay`);
      note.textContent = `Replay queued: now ${r.status}.`;
      await load();
    } catch (e) { ctx.showProblem(e); }
  });

  replace(root,
    h("p", {}, h("a", { href: "#/events" }, "← Events")),
    head,
    h("div", { className: "actions" }, ack, replay, note),
    facts,
    h("h2", {}, "Payload"),
    payload,
    h("h2", {}, "Delivery attempts"),
    shownNote,
    h("table", { className: "attempts" },
      h("thead", {}, h("tr", {}, ["Time", "Endpoint", "Status code", "Latency", "Error"].map((t) => h("th", {}, t)))),
      attempts));

  let first = true;
  // Delivered or failed: little changes (attempts of other endpoints still retrying, an
  // action here — Ack and Replay read it again at once), so the detail is read only every
  // SETTLED_EVERY polls then.
  let settled = false;
  let polls = 0;
  async function load() {
    const e = await ctx.api("GET", `/api/events/${encodeURIComponent(id)}`);
    settled = e.status !== "pending";
    if (first) {
      first = false;
      try {
        const { webhooks } = await ctx.api("GET", "/api/webhook/config");
        endpointUrls = new Map(webhooks.map((w) => [w.id, w.url]));
      } catch { /* the ids are shown instead */ }
      // Pretty-printed once (it never changes), as text: never parsed as HTML.
      payload.textContent = JSON.stringify(e.payload, null, 2);
    }
    replace(head, h("h1", { className: "mono" }, e.type), badge(e.status));
    ack.disabled = e.status === "delivered";
    replace(facts,
      fact("Id", e.id), fact("Dedup id", e.dedup_id ?? "—"),
      fact("Created", time(e.created_at)), fact("Delivered", time(e.delivered_at)));
    const all = [...(e.attempts || [])].sort((a, b) => String(a.at).localeCompare(String(b.at)));
    const list = all.slice(-SHOWN_ATTEMPTS);
    shownNote.textContent = all.length > list.length
      ? `The latest ${list.length} of ${all.length} attempts; an endpoint's Attempts history has them all.`
      : "";
    replace(attempts, list.length
      ? list.map((a) => h("tr", { className: a.error ? "bad" : "" },
        h("td", {}, time(a.at)),
        h("td", { className: "mono", title: a.endpoint_id }, endpointUrls.get(a.endpoint_id) ?? a.endpoint_id),
        h("td", {}, a.status_code ?? "—"),
        h("td", {}, `${a.latency_ms} ms`),
        h("td", { className: "mono" }, a.error ?? "")))
      : h("tr", {}, h("td", { colSpan: 5, className: "hint" }, "No delivery attempts (inbox events are pulled, not pushed).")));
  }
  return ctx.poll(async () => { if (!settled || ++polls % SETTLED_EVERY === 0) await load(); }, DETAIL_POLL_MS);
}

function fact(label, value) {
  return [h("dt", {}, label), h("dd", { className: "mono" }, value)];
}
