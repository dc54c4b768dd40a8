// Endpoints: create (the secret shown once, with a copy button), disable, enable, recover,
// attempt history, rotate the secret, delete.
//
// Each row's buttons come from ACTIONS: an action the API gains later is one more entry there.

import { h, replace, badge, confirmButton, secretBox, time } from "./dom.js";

/** Attempts shown per page of an endpoint's history. */
const ATTEMPTS_PAGE = 20;

/**
 * The endpoint's attempts, newest first, a page at a time (GET /api/webhooks/{id}/attempts);
 * "Older" follows the cursor. Error texts come from receivers: text nodes only.
 */
async function attemptHistory(w, ctx) {
  const rows = h("tbody");
  const older = h("button", { type: "button", className: "ghost", disabled: true }, "Older");
  let cursor = null;
  async function more() {
    const q = new URLSearchParams({ limit: String(ATTEMPTS_PAGE) });
    if (cursor) q.set("cursor", cursor);
    const page = await ctx.api("GET", `/api/webhooks/${encodeURIComponent(w.id)}/attempts?${q}`);
    for (const a of page.attempts) {
      rows.append(h("tr", {},
        h("td", {}, time(a.at)),
        h("td", {}, a.success ? badge("delivered") : badge("failed")),
        h("td", {}, a.status_code ?? "—"),
        h("td", {}, `${a.latency_ms} ms`),
        h("td", { className: "mono" }, a.event_type),
        h("td", { className: "mono dim" }, a.event_id),
        h("td", { className: "error" }, a.error ?? "")));
    }
    if (!rows.children.length) {
      rows.append(h("tr", {}, h("td", { colSpan: 7, className: "hint" }, "No attempts yet.")));
    }
    cursor = page.next_cursor;
    older.disabled = !cursor;
  }
  older.addEventListener("click", () => more().catch(ctx.showProblem));
  await more();
  return h("section", { className: "card", data: { testid: "attempt-history" } },
    h("h2", {}, `Attempts of ${w.url}, newest first`),
    h("table", { className: "attempts" },
      h("thead", {}, h("tr", {}, ["Time", "Result", "Status", "Latency", "Event type", "Event", "Error"].map((t) => h("th", {}, t)))),
      rows),
    h("p", { className: "pager" }, older));
}

/**
 * One button per row: `label`, optional `confirm` (a second click is needed), `when(endpoint)`
 * to show it, and `run(endpoint, ctx, view)`, which may return a node to show under the table.
 */
const ACTIONS = [
  {
    label: "Disable",
    confirm: "Confirm disable",
    when: (w) => w.enabled,
    run: async (w, ctx) => {
      await ctx.api("PATCH", `/api/webhooks/${encodeURIComponent(w.id)}`, { enabled: false });
      return h("p", { className: "hint" }, `Disabled ${w.url}: its outstanding deliveries are failed; enable it, then recover them.`);
    },
  },
  {
    label: "Enable",
    when: (w) => !w.enabled,
    run: async (w, ctx) => {
      await ctx.api("PATCH", `/api/webhooks/${encodeURIComponent(w.id)}`, { enabled: true });
      return h("p", { className: "hint" }, `Enabled ${w.url}.`);
    },
  },
  {
    label: "Recover 24 h",
    when: (w) => w.enabled,
    run: async (w, ctx) => {
      const since = new Date(Date.now() - 24 * 3600 * 1000).toISOString();
      const { queued, more } = await ctx.api("POST", `/api/webhooks/${encodeURIComponent(w.id)}/recover`, { since });
      const rest = more ? " More remain: recover again." : "";
      return h("p", { className: "hint", data: { testid: "recovered" } }, `Queued ${queued} failed deliveries of ${w.url} again.${rest}`);
    },
  },
  {
    label: "Attempts",
    run: (w, ctx) => attemptHistory(w, ctx),
  },
  {
    label: "Rotate secret",
    confirm: "Confirm rotate",
    run: async (w, ctx) => {
      const { secret } = await ctx.api("POST", `/api/webhooks/${encodeURIComponent(w.id)}/rotate-secret`);
      return secretBox(`New secret of ${w.url}`, secret);
    },
  },
  {
    label: "Delete",
    confirm: "Confirm delete",
    className: "danger",
    run: async (w, ctx) => {
      await ctx.api("DELETE", `/api/webhooks/${encodeURIComponent(w.id)}`);
      return h("p", { className: "hint" }, `Deleted ${w.url}.`);
    },
  },
];

export function render(root, ctx) {
  const url = h("input", { name: "url", type: "url", required: true, placeholder: "https://example.com/hooks/triggers", spellcheck: false, data: { testid: "endpoint-url" } });
  const filter = h("input", { name: "event_type_filter", placeholder: "optional, e.g. user.*", spellcheck: false, data: { testid: "endpoint-filter" } });
  const out = h("div", { className: "out" });
  const rows = h("tbody");

  const form = h("form", {
    className: "filters",
    onSubmit: async (e) => {
      e.preventDefault();
      const body = { url: url.value.trim() };
      if (filter.value.trim()) body.event_type_filter = filter.value.trim();
      try {
        const created = await ctx.api("POST", "/api/webhook/config", body);
        ctx.hideProblem();
        url.value = "";
        filter.value = "";
        replace(out, secretBox(`Endpoint created: ${created.url}`, created.secret));
        await load();
      } catch (err) { ctx.showProblem(err); }
    },
  }, h("label", {}, "URL ", url), h("label", {}, "Event types ", filter), h("button", { type: "submit" }, "Create endpoint"));

  replace(root,
    h("h1", {}, "Endpoints"),
    h("section", { className: "card" }, h("h2", {}, "New endpoint"), form, out),
    h("table", { className: "endpoints" },
      h("thead", {}, h("tr", {}, ["URL", "Event types", "State", "Id", ""].map((t) => h("th", {}, t)))),
      rows),
    h("p", {}, h("button", { type: "button", className: "ghost", onClick: () => load().catch(ctx.showProblem) }, "Refresh")));

  async function load() {
    const { webhooks } = await ctx.api("GET", "/api/webhook/config");
    replace(rows, webhooks.length
      ? webhooks.map((w) => h("tr", { data: { id: w.id } },
        h("td", { className: "mono" }, w.url),
        h("td", { className: "mono" }, w.event_type_filter ?? "*"),
        h("td", {}, w.enabled ? badge("enabled") : badge("disabled"),
          w.disabled_reason ? h("div", { className: "hint" }, w.disabled_reason) : null),
        h("td", { className: "mono dim" }, w.id),
        h("td", { className: "buttons" }, ACTIONS.filter((a) => !a.when || a.when(w)).map((a) => {
          const act = async () => {
            try {
              const shown = await a.run(w, ctx);
              ctx.hideProblem();
              replace(out, shown ?? "");
              await load();
            } catch (err) { ctx.showProblem(err); }
          };
          return a.confirm
            ? confirmButton(a.label, a.confirm, act, a.className ?? "")
            : h("button", { type: "button", className: a.className ?? "", onClick: act }, a.label);
        }))))
      : h("tr", {}, h("td", { colSpan: 5, className: "hint" }, "No endpoints yet.")));
  }
  // Loaded on entry and after each action; no polling, which would rebuild a row under a
  // half-confirmed button. The Overview polls the endpoints' health.
  load().catch(ctx.showProblem);
  return () => {};
}
