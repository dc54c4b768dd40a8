// Makes the README's screenshot, docs/dashboard.png: the Overview after a minute of traffic
// (steady ingestion, webhook deliveries to a local receiver, some acknowledgements).
//
//   cargo build --release --example server && npm ci && npm run screenshot

import { join } from "node:path";
import { startServer, startReceiver, startBrowser, call, until, ROOT } from "./harness.mjs";

const SECONDS = Number(process.env.SCREENSHOT_SECONDS || 60);
const server = await startServer();
const receiver = await startReceiver();
const browser = await startBrowser();
const base = server.base;
try {
  const gen = await call(base, "POST", "/api/keys/generate", null, { organization_name: "acme", tier: "enterprise" });
  const key = gen.json.api_key;
  await call(base, "POST", "/api/webhook/config", key, { url: receiver.url, event_type_filter: "order.*" });
  await call(base, "POST", "/api/webhook/config", key, { url: receiver.url.replace("/hooks/triggers", "/crm/users"), event_type_filter: "user.*" });
  const page = await browser.context.newPage();
  await page.goto(`${base}/ui`);
  await page.locator("#api-key").fill(key);
  await page.locator("#sign-in-form button[type=submit]").click();
  await until("the overview", async () => (await page.locator("#org").innerText()).includes("acme"));
  const types = ["order.paid", "order.shipped", "user.created", "invoice.sent", "invoice.sent"];
  const end = Date.now() + SECONDS * 1000;
  let n = 0;
  while (Date.now() < end) {
    // A rate that swells and ebbs, so the chart has a shape.
    const t = (end - Date.now()) / 1000;
    const burst = Math.round(6 + 5 * Math.sin(t / 6));
    const events = Array.from({ length: burst }, () => ({ type: types[n++ % types.length], payload: { n } }));
    await call(base, "POST", "/api/events/batch", key, { events });
    if (n % 7 === 0) {
      const inbox = await call(base, "GET", "/api/inbox?type=invoice.*&limit=3", key);
      for (const e of inbox.json.events) await call(base, "POST", `/api/ack/${e.id}`, key);
    }
    await new Promise((ok) => setTimeout(ok, 500));
  }
  // Taken while the traffic still flows (the chart's last point is not a drop to zero).
  const out = join(ROOT, "docs/dashboard.png");
  await page.screenshot({ path: out });
  console.log(`wrote ${out}`);
} finally {
  await browser.stop();
  await receiver.stop();
  await server.stop();
}
