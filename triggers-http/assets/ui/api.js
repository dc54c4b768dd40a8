// The API client: the key lives in sessionStorage (this tab only) and is sent as X-API-Key;
// never in a URL, never in a cookie.

const STORAGE = "triggers.apiKey";

export const session = {
  get key() { return sessionStorage.getItem(STORAGE); },
  set key(k) {
    if (k) sessionStorage.setItem(STORAGE, k);
    else sessionStorage.removeItem(STORAGE);
  },
};

/** An API error: the problem document's title and detail, and for 429 when to retry. */
export class ApiError extends Error {
  constructor(status, problem, retryAfter) {
    super(problem?.detail || problem?.title || `HTTP ${status}`);
    this.status = status;
    this.title = problem?.title || `HTTP ${status}`;
    this.detail = problem?.detail || "";
    this.code = problem?.code || "";
    /** Seconds to wait (Retry-After, else X-RateLimit-Reset), or null. */
    this.retryAfter = retryAfter;
  }
}

/** Calls the API; resolves to the JSON body (null for 204), rejects with ApiError. */
export async function api(method, path, body) {
  const headers = { "X-API-Key": session.key || "" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let res;
  try {
    res = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer",
    });
  } catch (e) {
    throw new ApiError(0, { title: "Server unreachable", detail: String(e.message || e) }, null);
  }
  if (res.status === 204) return null;
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!res.ok) {
    const retry = res.headers.get("retry-after") ?? res.headers.get("x-ratelimit-reset");
    const seconds = retry !== null && /^\d+$/.test(retry) ? Number(retry) : null;
    throw new ApiError(res.status, data || { title: res.statusText, detail: text.slice(0, 300) }, seconds);
  }
  return data;
}

/** A query string from the entries of `params` that are set. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== "") q.set(k, v);
  const s = q.toString();
  return s ? `?${s}` : "";
}
