// The dashboard shell: sign-in, the hash router (#/overview, #/events, #/events/<id>,
// #/endpoints), the problem banner, and view lifetimes (each view returns a function that
// stops its polling when the view is left).

import { api, session, ApiError } from "./api.js";
import { h, replace } from "./dom.js";
import * as overview from "./overview.js";
import * as events from "./events.js";
import * as endpoints from "./endpoints.js";

const $ = (id) => document.getElementById(id);
let stopView = () => {};
let retryTimer;

/** Shows an API error as its problem title and detail; for 429, when to retry. */
export function showProblem(err) {
  const e = err instanceof ApiError ? err : new ApiError(0, { title: "Error", detail: String(err?.message || err) }, null);
  $("problem-title").textContent = e.title;
  $("problem-detail").textContent = e.detail;
  clearInterval(retryTimer);
  const retry = $("problem-retry");
  retry.textContent = "";
  if (e.status === 429 && e.retryAfter !== null) {
    let left = e.retryAfter;
    const tick = () => {
      retry.textContent = left > 0 ? `Retry in ${left} s.` : "You can retry now.";
      if (left-- <= 0) clearInterval(retryTimer);
    };
    tick();
    retryTimer = setInterval(tick, 1000);
  }
  $("problem").hidden = false;
  if (e.status === 401) signOut();
}

function hideProblem() {
  clearInterval(retryTimer);
  $("problem").hidden = true;
}

const ctx = {
  api,
  showProblem,
  hideProblem,
  navigate: (hash) => { location.hash = hash; },
};

function signOut() {
  session.key = null;
  events.resetState();
  overview.resetSamples();
  stopView();
  stopView = () => {};
  $("nav").hidden = true;
  $("sign-out").hidden = true;
  $("org").textContent = "";
  $("view").hidden = true;
  replace($("view"));
  $("sign-in").hidden = false;
}

async function signIn(key) {
  session.key = key;
  try {
    const me = await api("GET", "/api/keys");
    $("org").textContent = `${me.organization_name} · ${me.tier} · ${me.rate_limit_per_minute}/min`;
  } catch (e) {
    signOut();
    showProblem(e);
    return false;
  }
  hideProblem();
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("sign-out").hidden = false;
  $("view").hidden = false;
  route();
  return true;
}

function route() {
  if (!session.key) return;
  stopView();
  hideProblem();
  const [, name = "overview", id] = location.hash.split("/");
  for (const a of document.querySelectorAll("#nav a[data-view]")) {
    a.classList.toggle("active", a.dataset.view === name);
  }
  const root = $("view");
  replace(root);
  let stop;
  let eventId = null;
  try { eventId = id ? decodeURIComponent(id) : null; } catch { /* a malformed link: the list */ }
  if (name === "events" && eventId) stop = events.renderDetail(root, ctx, eventId);
  else if (name === "events") stop = events.renderList(root, ctx);
  else if (name === "endpoints") stop = endpoints.render(root, ctx);
  else stop = overview.render(root, ctx);
  stopView = typeof stop === "function" ? stop : () => {};
}

function start() {
  $("problem-close").addEventListener("click", hideProblem);
  $("sign-out").addEventListener("click", () => { hideProblem(); signOut(); });
  $("sign-in-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    if (await signIn(key)) input.value = "";
  });
  window.addEventListener("hashchange", route);
  if (session.key) signIn(session.key);
  else $("sign-in").hidden = false;
}

/**
 * Polls `fn` every `ms` until the returned stop function is called; errors are shown once.
 * A hidden tab (another tab in front, a minimized window) asks nothing until shown again.
 */
export function poll(fn, ms) {
  let stopped = false;
  let timer;
  const run = async () => {
    if (!document.hidden) {
      try { await fn(); } catch (e) { if (!stopped) showProblem(e); }
    }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  return () => { stopped = true; clearTimeout(timer); };
}
ctx.poll = poll;
ctx.h = h;

start();
