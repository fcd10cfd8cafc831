// A JSON value (or a traceback) as the server sent it: whole, or cut short with a button that
// fetches all of it.

import { getText } from "./api.js";
import { h } from "./dom.js";

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return text; }
}

// value: {text, size, truncated} or null; fullPath: where the whole value is; json: pretty-print
export function valueView(value, fullPath, { json = true, label = "value" } = {}) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, "none");
  const pre = h("pre", { class: "mono" }, value.truncated || !json ? value.text : pretty(value.text));
  const box = h("div", { class: "value" }, pre);
  if (value.truncated) {
    const note = h("div", { class: "note" },
      `${label}: first ${value.text.length.toLocaleString()} of ${value.size.toLocaleString()} characters `);
    const more = h("button", {
      class: "show-all",
      onclick: async () => {
        more.disabled = true;
        try {
          const text = await getText(fullPath);
          pre.textContent = json ? pretty(text) : text;
          note.textContent = `${label}: all ${value.size.toLocaleString()} characters`;
        } catch (error) {
          note.textContent = `could not load it: ${error.message}`;
          more.disabled = false;
        }
      },
    }, "show all");
    note.append(more);
    box.prepend(note);
  }
  return box;
}
