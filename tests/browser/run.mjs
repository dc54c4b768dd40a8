// The browser suite: the dashboard (/ui) and the API docs (/docs) in a real headless chromium
// against the release example server. Steps run in order and share one page; a failing step
// saves a screenshot to artifacts/<step>.png and the rest are skipped. Exit status 1 on failure.
//
//   cargo build --release --example server && npm ci && npm test

import { createHmac } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import assert from "node:assert/strict";
import { startServer, startReceiver, startBrowser, call, until, ARTIFACTS } from "./harness.mjs";

mkdirSync(ARTIFACTS, { recursive: true });
const started = Date.now();
const server = await startServer();
const receiver = await startReceiver();
const browser = await startBrowser();
const origin = server.base;
const page = await browser.context.newPage();

// Everything the page does is watched: console errors (CSP violations are reported there),
// uncaught exceptions, and any request that would leave the server's origin (aborted).
const consoleErrors = [];
const pageErrors = [];
const foreign = [];
page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
page.on("pageerror", (e) => pageErrors.push(String(e)));
await browser.context.route("**/*", (route) => {
  const url = route.request().url();
  if (url.startsWith(`${origin}/`) || url.startsWith("data:")) return route.continue();
  foreign.push(url);
  return route.abort();
});

async function generate(name, tier = "enterprise") {
  const r = await call(origin, "POST", "/api/keys/generate", null, { organization_name: name, tier });
  assert.equal(r.status, 201, JSON.stringify(r.json));
  return r.json.api_key;
}
const key = await generate("acme");
const ingest = async (k, event) => {
  const r = await call(origin, "POST", "/api/events", k, event);
  assert.equal(r.status, 202, JSON.stringify(r.json));
  return r.json.id;
};
const text = (sel) => page.locator(sel).innerText();
/** Longer than dom.js's CONFIRM_AFTER_MS: a confirming click that counts. */
const CONFIRM_WAIT_MS = 600;
const problemShown = async () => {
  await page.locator("#problem").waitFor({ state: "visible" });
  return { title: await text("#problem-title"), detail: await text("#problem-detail"), retry: await text("#problem-retry") };
};

const steps = [];
const step = (name, fn) => steps.push({ name, fn });
const shared = {};

step("sign in with an API key kept in sessionStorage only", async () => {
  await page.goto(`${origin}/ui`);
  await page.locator("#api-key").fill("trg_not-a-key");
  await page.locator("#sign-in-form button[type=submit]").click();
  const wrong = (await call(origin, "GET", "/api/keys", "trg_not-a-key")).json;
  const shown = await problemShown();
  assert.deepEqual([shown.title, shown.detail], [wrong.title, wrong.detail]);
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await page.locator("#api-key").fill(key);
  await page.locator("#sign-in-form button[type=submit]").click();
  await until("the organization in the header", async () => (await text("#org")).includes("acme"));
  assert.equal(await page.evaluate(() => sessionStorage.getItem("triggers.apiKey")), key);
  assert.equal(await page.evaluate(() => localStorage.length), 0);
  assert.equal(await page.evaluate(() => document.cookie), "");
  assert.ok(!page.url().includes(key), "the key is in the URL");
  // A reload keeps the session (same tab).
  await page.reload();
  await until("still signed in after reload", async () => (await text("#org")).includes("acme"));
});

step("ingested events appear in the Events view", async () => {
  shared.events = [];
  for (let i = 0; i < 3; i++) {
    shared.events.push(await ingest(key, { type: "user.created", payload: { n: i, email: `u${i}@example.com` }, dedup_id: `user-${i}` }));
  }
  await page.locator("#nav a[data-view=events]").click();
  for (const id of shared.events) await page.locator(`tr[data-id="${id}"]`).waitFor();
  assert.equal(await page.locator(`tr[data-id="${shared.events[1]}"] td`).nth(3).innerText(), "user-1");
});

step("type filter and cursor paging", async () => {
  for (let i = 0; i < 55; i++) await ingest(key, { type: "bulk.item", payload: { i } });
  await page.locator("[data-testid=type-filter]").fill("bulk.*");
  await page.locator("form.filters button[type=submit]").click();
  await until("a full first page of bulk events", async () => (await page.locator("tbody tr[data-id]").count()) === 50);
  const firstPage = await page.locator("tbody tr[data-id]").evaluateAll((rows) => rows.map((r) => r.dataset.id));
  await page.locator(".pager button", { hasText: "Older" }).click();
  await until("the second page", async () => (await page.locator("tbody tr[data-id]").count()) === 5);
  const second = await page.locator("tbody tr[data-id]").evaluateAll((rows) => rows.map((r) => r.dataset.id));
  assert.ok(second.every((id) => !firstPage.includes(id)), "pages overlap");
  assert.ok(await page.locator(".pager button", { hasText: "Older" }).isDisabled());
  await page.locator(".pager button", { hasText: "Newer" }).click();
  await until("back on page 1", async () => (await page.locator("tbody tr[data-id]").count()) === 50);
  const types = await page.locator("tbody tr[data-id] td:nth-child(2)").allInnerTexts();
  assert.ok(types.every((t) => t === "bulk.item"), `filter leaked ${types}`);
  await page.locator("[data-testid=type-filter]").fill("");
  await page.locator("form.filters button[type=submit]").click();
});

step("an event's detail: payload, dedup id; Ack takes it out of the pending filter", async () => {
  const id = shared.events[0];
  await page.locator(`tr[data-id="${id}"]`).click();
  await until("the payload", async () => (await text("[data-testid=payload]")).includes("u0@example.com"));
  assert.deepEqual(JSON.parse(await text("[data-testid=payload]")), { n: 0, email: "u0@example.com" });
  assert.ok((await text(".facts")).includes("user-0"));
  await page.locator("[data-testid=ack]").click();
  await until("the ack note", async () => (await text("[data-testid=action-note]")).includes("delivered"));
  await until("the delivered badge", async () => (await text(".detail-head")).includes("delivered"));
  assert.equal((await call(origin, "GET", `/api/events/${id}`, key)).json.status, "delivered");
  await page.locator("a[href='#/events']").first().click();
  await page.locator("[data-testid=status-filter]").selectOption("pending");
  await page.locator(`tr[data-id="${shared.events[1]}"]`).waitFor();
  assert.equal(await page.locator(`tr[data-id="${id}"]`).count(), 0, "acked event still pending");
  await page.locator("[data-testid=status-filter]").selectOption("delivered");
  await page.locator(`tr[data-id="${id}"]`).waitFor();
  await page.locator("[data-testid=status-filter]").selectOption("pending");
});

step("create an endpoint: the secret is shown once with a copy button", async () => {
  await browser.context.grantPermissions(["clipboard-read", "clipboard-write"], { origin });
  await page.locator("#nav a[data-view=endpoints]").click();
  await page.locator("[data-testid=endpoint-url]").fill(receiver.url);
  await page.locator("[data-testid=endpoint-filter]").fill("order.*");
  await page.locator("form.filters button[type=submit]").click();
  const secret = await page.locator("[data-testid=secret] input").inputValue();
  assert.match(secret, /^whsec_[A-Za-z0-9+/=]+$/);
  await page.locator("[data-testid=secret] button", { hasText: "Copy" }).click();
  assert.equal(await page.evaluate(() => navigator.clipboard.readText()), secret);
  const list = (await call(origin, "GET", "/api/webhook/config", key)).json.webhooks;
  assert.equal(list.length, 1);
  assert.equal(list[0].url, receiver.url);
  await page.locator(`tr[data-id="${list[0].id}"]`).waitFor();
  await page.screenshot({ path: join(ARTIFACTS, "endpoints.png") });
  shared.secret = secret;
  shared.endpoint = list[0].id;
});

step("a delivery arrives at the receiver, signed with that secret, and shows as an attempt", async () => {
  const id = await ingest(key, { type: "order.paid", payload: { order: 7 } });
  shared.order = id;
  const req = await until("the webhook request", () => receiver.received.find((r) => r.headers["webhook-id"] === id));
  const raw = Buffer.from(shared.secret.slice("whsec_".length), "base64");
  const expected = createHmac("sha256", raw).update(`${id}.${req.headers["webhook-timestamp"]}.${req.body}`).digest("base64");
  assert.ok(req.headers["webhook-signature"].split(" ").includes(`v1,${expected}`), "bad signature");
  await page.locator("#nav a[data-view=events]").click();
  await page.locator("[data-testid=status-filter]").selectOption("delivered");
  await page.locator(`tr[data-id="${id}"]`).click();
  await until("one attempt with 200", async () => {
    const rows = await page.locator("table.attempts tbody tr").allInnerTexts();
    return rows.length === 1 && rows[0].includes("200") && rows[0].includes(receiver.url);
  });
});

step("Replay: a new attempt appears and a second request arrives", async () => {
  await page.locator("[data-testid=replay]").click();
  await until("the replay note", async () => (await text("[data-testid=action-note]")).includes("Replay queued"));
  await until("two attempts", async () => (await page.locator("table.attempts tbody tr").count()) === 2, 20000);
  assert.equal(receiver.received.filter((r) => r.headers["webhook-id"] === shared.order).length, 2);
  await page.screenshot({ path: join(ARTIFACTS, "event.png"), fullPage: true });
});

step("Overview: counts match the API, the chart draws, endpoint health is listed", async () => {
  await page.locator("#nav a[data-view=overview]").click();
  const stats = (await call(origin, "GET", "/api/queue/stats", key)).json;
  for (const k of ["pending", "in_flight", "delivered", "failed"]) {
    await until(`count ${k}=${stats[k]}`, async () => (await text(`[data-testid=count-${k}]`)) === String(stats[k]));
  }
  assert.equal(stats.pending, 2 + 55);
  assert.equal(stats.delivered, 2);
  // Events ingested while the view is open show up as a rate.
  for (let i = 0; i < 20; i++) await ingest(key, { type: "chart.tick", payload: { i } });
  await until("an ingest rate above zero", async () => /now: [1-9]/.test(await text("[data-testid=rates]")), 10000);
  await page.locator(".chart polyline.ingested").waitFor();
  assert.ok((await text("section.card table")).includes(receiver.url));
  assert.ok((await text("section.card table")).includes("enabled"));
  // Both attempts (the delivery and its replay) succeeded.
  await until("the recent success rate", async () => (await text("[data-testid=success-rate]")) === "100 % of last 2");
  await page.screenshot({ path: join(ARTIFACTS, "dashboard.png") });
});

step("API errors show the problem's title and detail", async () => {
  await page.locator("#nav a[data-view=endpoints]").click();
  await page.locator("[data-testid=endpoint-url]").fill("ftp://127.0.0.1/x");
  await page.locator("form.filters button[type=submit]").click();
  const api = (await call(origin, "POST", "/api/webhook/config", key, { url: "ftp://127.0.0.1/x" })).json;
  const shown = await problemShown();
  assert.equal(shown.title, api.title);
  assert.equal(shown.detail, api.detail);
  await page.locator("#problem-close").click();
});

step("429 shows when to retry", async () => {
  // The dashboard's own calls are reads, which the rate limiter does not charge; this
  // answers one of them as the server answers an exhausted limit, to check the rendering.
  await page.route("**/api/queue/stats", (route) => route.fulfill({
    status: 429,
    headers: { "content-type": "application/problem+json", "retry-after": "7" },
    body: JSON.stringify({ type: "urn:triggers:problem:rate_limited", title: "Rate limited", status: 429, detail: "the organization's limit of 10 events per minute is used up", code: "rate_limited" }),
  }), { times: 1 });
  await page.locator("#nav a[data-view=overview]").click();
  const shown = await problemShown();
  assert.equal(shown.title, "Rate limited");
  assert.match(shown.retry, /Retry in [67] s/);
  await page.locator("#problem-close").click();
});

step("Endpoints: disable, enable and recover through PATCH and recover", async () => {
  await page.locator("#nav a[data-view=endpoints]").click();
  const row = page.locator(`tr[data-id="${shared.endpoint}"]`);
  // A double click arms the button but does not confirm.
  await row.locator("button", { hasText: "Disable" }).dblclick();
  await row.locator("button", { hasText: "Confirm disable" }).waitFor();
  await page.waitForTimeout(CONFIRM_WAIT_MS);
  assert.equal((await call(origin, "GET", `/api/webhooks/${shared.endpoint}`, key)).json.enabled, true, "a double click disabled");
  await row.locator("button", { hasText: "Confirm disable" }).click();
  await until("the row to say disabled", async () => (await row.innerText()).includes("disabled"));
  const hook = (await call(origin, "GET", `/api/webhooks/${shared.endpoint}`, key)).json;
  assert.equal(hook.enabled, false);
  await row.locator("button", { hasText: "Enable" }).click();
  await until("the row to say enabled", async () => (await row.locator("button", { hasText: "Recover 24 h" }).count()) === 1);
  assert.equal((await call(origin, "GET", `/api/webhooks/${shared.endpoint}`, key)).json.enabled, true);
  await row.locator("button", { hasText: "Recover 24 h" }).click();
  await until("the recover answer", async () => (await page.locator("[data-testid=recovered]").count()) === 1);
  assert.match(await page.locator("[data-testid=recovered]").innerText(), /^Queued \d+ failed deliveries/);
});

step("Endpoints: the attempt history, newest first, as the API has it", async () => {
  await page.locator("#nav a[data-view=endpoints]").click();
  const row = page.locator(`tr[data-id="${shared.endpoint}"]`);
  await row.locator("button", { hasText: "Attempts" }).click();
  const history = page.locator("[data-testid=attempt-history]");
  await history.waitFor();
  const api = (await call(origin, "GET", `/api/webhooks/${shared.endpoint}/attempts`, key)).json.attempts;
  assert.ok(api.length >= 2);
  const rows = await history.locator("tbody tr").allInnerTexts();
  assert.equal(rows.length, api.length);
  rows.forEach((r, i) => {
    assert.ok(r.includes(api[i].event_id), `row ${i}: ${r}`);
    assert.ok(r.includes(api[i].success ? "delivered" : "failed"), `row ${i}: ${r}`);
  });
  assert.ok(rows[rows.length - 1].includes(shared.order) && rows[rows.length - 1].includes("200"));
  assert.ok(await history.locator("button", { hasText: "Older" }).isDisabled());
  await page.screenshot({ path: join(ARTIFACTS, "attempts.png"), fullPage: true });
});

step("Endpoints: rotate the secret (shown once), then delete", async () => {
  await page.locator("#nav a[data-view=endpoints]").click();
  const row = page.locator(`tr[data-id="${shared.endpoint}"]`);
  await row.locator("button", { hasText: "Rotate secret" }).click();
  await page.waitForTimeout(CONFIRM_WAIT_MS);
  await row.locator("button", { hasText: "Confirm rotate" }).click();
  const rotated = await page.locator("[data-testid=secret] input").inputValue();
  assert.match(rotated, /^whsec_/);
  assert.notEqual(rotated, shared.secret);
  await row.locator("button", { hasText: "Delete" }).click();
  await page.waitForTimeout(CONFIRM_WAIT_MS);
  await row.locator("button", { hasText: "Confirm delete" }).click();
  await until("the row to go", async () => (await page.locator(`tr[data-id="${shared.endpoint}"]`).count()) === 0);
  assert.equal((await call(origin, "GET", "/api/webhook/config", key)).json.webhooks.length, 0);
});

step("a malformed event link shows the events list", async () => {
  await page.goto(`${origin}/ui#/events/%E0%A4`);
  await page.locator("table.events").waitFor();
  assert.equal(await page.locator("[data-testid=payload]").count(), 0);
});

step("Overview reads endpoint health two at a time; one failed read hides no other", async () => {
  const other = await generate("many-endpoints");
  const ids = [];
  for (let i = 0; i < 8; i++) {
    const r = await call(origin, "POST", "/api/webhook/config", other, { url: `${receiver.url}?n=${i}`, event_type_filter: "nothing.*" });
    assert.equal(r.status, 201, JSON.stringify(r.json));
    ids.push(r.json.id);
  }
  let inFlight = 0;
  let most = 0;
  let failedOne = false;
  const pattern = "**/api/webhooks/*/attempts?*";
  await page.route(pattern, async (route) => {
    inFlight++;
    most = Math.max(most, inFlight);
    await new Promise((resolve) => setTimeout(resolve, 150));
    inFlight--;
    if (!failedOne && route.request().url().includes(ids[3])) {
      failedOne = true;
      return route.fulfill({ status: 503, headers: { "content-type": "application/problem+json" }, body: JSON.stringify({ title: "Overloaded", status: 503, code: "overloaded" }) });
    }
    return route.continue();
  });
  await page.locator("#sign-out").click();
  await page.locator("#api-key").fill(other);
  await page.locator("#sign-in-form button[type=submit]").click();
  await until("the organization in the header", async () => (await text("#org")).includes("many-endpoints"));
  await page.locator("#nav a[data-view=overview]").click();
  const cells = page.locator("[data-testid=success-rate]");
  await until("every endpoint's health", async () => {
    const all = await cells.allInnerTexts();
    return all.length === 8 && all.every((t) => t !== "—");
  }, 20000);
  const all = await cells.allInnerTexts();
  assert.equal(all.filter((t) => t === "no attempts yet").length, 7, all.join(" | "));
  assert.equal(all.filter((t) => t === "unavailable").length, 1, all.join(" | "));
  assert.ok(most >= 1 && most <= 2, `${most} reads at once`);
  await page.unroute(pattern);
});

step("attacker-controlled text is never HTML: payload, dedup id, org name, error detail", async () => {
  const evil = "<img src=x onerror=window.__xss=1>";
  const evilKey = await generate(`acme ${evil}`);
  const id = await ingest(evilKey, {
    type: "xss.test",
    payload: { html: evil, script: "<script>window.__xss=2</script>", [evil]: evil },
    dedup_id: "<img src=y onerror=window.__xss=3>",
  });
  await page.locator("#sign-out").click();
  await page.locator("#api-key").fill(evilKey);
  await page.locator("#sign-in-form button[type=submit]").click();
  await until("the evil org name as text", async () => (await text("#org")).includes(evil));
  await page.locator("#nav a[data-view=events]").click();
  await page.locator(`tr[data-id="${id}"]`).waitFor();
  assert.ok((await page.locator(`tr[data-id="${id}"]`).innerText()).includes("<img src=y onerror=window.__xss=3>"));
  await page.locator(`tr[data-id="${id}"]`).click();
  await until("the payload as text", async () => (await text("[data-testid=payload]")).includes("<script>window.__xss=2</script>"));
  await page.locator("#nav a[data-view=endpoints]").click();
  await page.locator("[data-testid=endpoint-url]").fill(`http://127.0.0.1/${evil}`);
  await page.locator("[data-testid=endpoint-filter]").fill(evil);
  await page.locator("form.filters button[type=submit]").click();
  await problemShown();
  assert.equal(await page.evaluate(() => document.querySelectorAll("img, script:not([src])").length), 0, "markup was injected");
  assert.equal(await page.evaluate(() => window.__xss), undefined, "a script ran");
});

step("/docs renders the OpenAPI document and runs an operation with the API key", async () => {
  const t0 = Date.now();
  const lap = (what) => process.env.DEBUG && console.log(`  ${what}: ${Date.now() - t0} ms`);
  await page.goto(`${origin}/docs`);
  await page.locator(".swagger-ui .opblock").first().waitFor({ timeout: 20000 });
  lap("rendered");
  await page.locator(".swagger-ui button.authorize").first().click();
  const scheme = page.locator(".modal-ux .auth-container", { hasText: "X-API-Key" });
  await scheme.locator("input").first().fill(key);
  await scheme.locator("button.authorize").click();
  await scheme.locator("button", { hasText: "Logout" }).waitFor();
  await page.locator(".modal-ux button.close-modal").first().click();
  lap("authorized");
  const op = page.locator("[id$='-queueStats']").first();
  await op.locator(".opblock-summary").first().click();
  await op.locator("button.try-out__btn").click();
  await op.locator("button.execute").click();
  lap("executed");
  const status = op.locator(".live-responses-table tr.response .response-col_status").first();
  await until("a 200 from the server", async () => (await status.count()) > 0 && (await status.innerText()).trim() === "200", 30000);
  assert.ok((await op.locator(".live-responses-table").innerText()).includes("delivered"));
  await page.screenshot({ path: join(ARTIFACTS, "docs.png") });
});

step("no CSP violation, page error or request to another origin happened", async () => {
  assert.deepEqual(pageErrors, []);
  // Expected console errors: the failed API calls above (chromium logs 401/422/429 answers,
  // and the 503 the health step answers for one endpoint).
  const unexpected = consoleErrors.filter((m) => !/status of (401|422|429|503)/.test(m));
  assert.deepEqual(unexpected, []);
  assert.deepEqual(foreign, []);
});

let failed = 0;
for (const { name, fn } of steps) {
  if (failed) { console.log(`skip - ${name}`); continue; }
  const t0 = Date.now();
  try {
    await fn();
    console.log(`ok - ${name} (${Date.now() - t0} ms)`);
  } catch (e) {
    failed++;
    const shot = join(ARTIFACTS, `${name.replace(/[^A-Za-z0-9]+/g, "-").slice(0, 60)}.png`);
    await page.screenshot({ path: shot, fullPage: true }).catch(() => {});
    console.log(`not ok - ${name}\n${e.stack}\n  screenshot: ${shot}`);
  }
}
await browser.stop();
await receiver.stop();
await server.stop();
if (failed) console.log(`server log:\n${server.log()}`);
console.log(`${failed ? "FAILED" : "passed"}: ${steps.length} steps in ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exit(failed ? 1 : 0);
