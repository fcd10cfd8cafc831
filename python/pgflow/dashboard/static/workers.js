// Workers: live, presumed dead (no heartbeat for a while, never stopped) and stopped, with the
// flows each serves and its last heartbeat (by the database's clock).

import { get } from "./api.js";
import { age, badge, h, when } from "./dom.js";

export async function workersPage(main) {
  const { workers, truncated } = await get("/api/workers");
  main.replaceChildren(
    h("h1", {}, "Workers"),
    workers.length ? h("table", { id: "workers" },
      h("thead", {}, h("tr", {}, ["worker", "where", "state", "flows", "last heartbeat", "started", "stopped"].map((t) => h("th", {}, t)))),
      h("tbody", {}, workers.map((w) => h("tr", { dataset: { worker: w.worker_id, state: w.state } },
        h("td", { class: "mono", title: w.worker_id }, w.worker_id.slice(0, 8)),
        h("td", { class: "mono" }, w.function_name),
        h("td", {}, badge(w.state), w.deprecated_at ? h("span", { class: "muted" }, " deprecated") : null),
        h("td", {}, w.flows.map((f, i) => [i ? ", " : "", h("a", { href: `#/flows/${encodeURIComponent(f)}` }, f)])),
        h("td", { title: when(w.last_heartbeat_at) }, age(w.heartbeat_age)),
        h("td", {}, when(w.started_at)),
        h("td", {}, when(w.stopped_at)),
      )))) : h("p", { class: "muted" }, "No workers have registered (or all were pruned)."),
    truncated ? h("p", { class: "muted" }, "Only the newest workers are shown.") : null,
  );
}
