// The pieces the browser suite runs against: the release example server on 127.0.0.1 with a
// temporary SQLite database, a webhook receiver on 127.0.0.1, and Debian's chromium.

import { spawn } from "node:child_process";
import { createServer } from "node:http";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(here, "../..");
export const ARTIFACTS = join(here, "artifacts");

/** Starts the example server on a free loopback port; resolves to { base, stop }. */
export async function startServer(extraEnv = {}) {
  const bin = process.env.TRIGGERS_SERVER_BIN || join(ROOT, "target/release/examples/server");
  if (!existsSync(bin)) {
    throw new Error(`${bin} is missing: run \`cargo build --release --example server\` first`);
  }
  const dir = mkdtempSync(join(tmpdir(), "triggers-ui-"));
  const child = spawn(bin, [], {
    env: {
      PATH: process.env.PATH,
      TRIGGERS_LISTEN: "127.0.0.1:0",
      DATABASE_URL: `sqlite://${join(dir, "triggers.db")}`,
      TRIGGERS_WEBHOOK_ALLOW: "127.0.0.0/8",
      RUST_LOG: "warn",
      ...extraEnv,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let log = "";
  child.stderr.on("data", (d) => { log += d; });
  const base = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`server did not start in 20 s:\n${log}`)), 20000);
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/listening on (http:\/\/127\.0\.0\.1:\d+)/);
      if (m) { clearTimeout(timer); ok(m[1]); }
    });
    child.on("exit", (code) => { clearTimeout(timer); fail(new Error(`server exited with ${code}:\n${log}`)); });
  });
  const stop = async () => {
    if (child.exitCode === null) {
      const exited = new Promise((ok) => child.on("exit", ok));
      child.kill("SIGTERM");
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };
  return { base, stop, log: () => log };
}

/** A webhook receiver on 127.0.0.1 that records every request and answers 200. */
export async function startReceiver() {
  const received = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      received.push({ url: req.url, headers: req.headers, body: Buffer.concat(chunks).toString("utf8") });
      res.writeHead(200, { "content-type": "text/plain" });
      res.end("ok");
    });
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  const { port } = server.address();
  return { url: `http://127.0.0.1:${port}/hooks/triggers`, received, stop: () => new Promise((ok) => server.close(ok)) };
}

/** Debian's chromium, headless, with a fresh profile. */
export async function startBrowser() {
  const profile = mkdtempSync(join(tmpdir(), "triggers-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run",
    ],
    viewport: { width: 1280, height: 860 },
  });
  const stop = async () => {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  };
  return { context, stop };
}

/** A JSON API call from Node (not through the page). */
export async function call(base, method, path, key, body) {
  const headers = {};
  if (key) headers["x-api-key"] = key;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  return { status: res.status, headers: res.headers, json: text ? JSON.parse(text) : null };
}

/** Polls `fn` until it returns a truthy value; fails after `ms` with `what`. */
export async function until(what, fn, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((ok) => setTimeout(ok, 100));
  }
}
