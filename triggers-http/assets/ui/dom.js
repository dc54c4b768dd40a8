// Building DOM without HTML strings. Everything the API returns (payloads, types, dedup ids,
// error texts) is attacker-controlled, so it only ever becomes text nodes or property values;
// this module never turns a string into markup.

/**
 * Creates an element. `props` sets properties (className, type, value, disabled, href…),
 * `dataset` entries via `data`, and `on<Event>` listeners; children are nodes or text.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (v === undefined || v === null) continue;
    if (k === "data") Object.assign(el.dataset, v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2).toLowerCase(), v);
    else el[k] = v;
  }
  append(el, children);
  return el;
}

/** Appends children (nodes, text, arrays of them; null and false are skipped). */
export function append(el, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

/** Replaces the children of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  return append(el, children);
}

/** A local date and time for an RFC 3339 timestamp ("—" when absent). */
export function time(ts) {
  if (!ts) return "—";
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? String(ts) : d.toLocaleString();
}

/** A small status badge. */
export function badge(status) {
  return h("span", { className: `badge ${String(status).replace(/[^a-z_]/g, "")}` }, status);
}

/** How long after arming a confirming click is ignored (a double click is 500 ms at most). */
export const CONFIRM_AFTER_MS = 500;

/**
 * A button that asks once more before running `action`: the first click arms it (for 4 s),
 * a second click at least CONFIRM_AFTER_MS later runs it.
 */
export function confirmButton(label, confirmLabel, action, className = "") {
  const b = h("button", { type: "button", className });
  let armed = false;
  let armedAt = 0;
  let timer;
  b.textContent = label;
  b.addEventListener("click", async () => {
    if (!armed) {
      armed = true;
      armedAt = performance.now();
      b.textContent = confirmLabel;
      b.classList.add("armed");
      timer = setTimeout(() => {
        armed = false;
        b.textContent = label;
        b.classList.remove("armed");
      }, 4000);
      return;
    }
    // The second click of a double click (or a click lured onto the same spot) is not a
    // confirmation: one comes at least CONFIRM_AFTER_MS after arming.
    if (performance.now() - armedAt < CONFIRM_AFTER_MS) return;
    clearTimeout(timer);
    armed = false;
    b.textContent = label;
    b.classList.remove("armed");
    await action();
  });
  return b;
}

/** A read-only secret with a copy button, shown once. */
export function secretBox(heading, secret) {
  const input = h("input", { type: "text", readOnly: true, value: secret, className: "secret" });
  const copied = h("span", { className: "hint" });
  const copy = h("button", {
    type: "button",
    onClick: async () => {
      try {
        await navigator.clipboard.writeText(secret);
        copied.textContent = "Copied.";
      } catch {
        input.select();
        copied.textContent = "Select and copy it (Ctrl+C).";
      }
    },
  }, "Copy");
  return h("div", { className: "secret-box", data: { testid: "secret" } },
    h("strong", {}, heading),
    h("p", {}, "Shown only now: store it where your receiver can read it."),
    h("div", { className: "row" }, input, copy, copied));
}
