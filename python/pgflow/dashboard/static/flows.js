// Flows: each with its options, queue depth, runs per status and schedules; one flow with its
// DAG, its steps' options and conditions, and its schedules.

import { get } from "./api.js";
import { drawDag } from "./dag.js";
import { badge, h, when } from "./dom.js";

const STATUSES = ["started", "completed", "failed", "cancelled"];

function runsLink(flow, status, n) {
  const qs = new URLSearchParams({ flow, ...(status ? { status } : {}) });
  return h("a", { href: `#/runs?${qs}`, dataset: { status } }, n.toLocaleString());
}

function queue(flow) {
  if (!flow.queue_readable) return h("span", { class: "muted", title: "this role may not read pgmq's queues" }, "n/a");
  return flow.queue ? `${flow.queue.messages.toLocaleString()}` : "0";
}

const NO_SCHEDULES = "this role may not read pgflow.schedules";

// the flows list: each schedule's name, marked when it fires nothing
function scheduleNames(flow) {
  if (flow.schedules === null) return h("span", { class: "muted", title: NO_SCHEDULES }, "n/a");
  if (!flow.schedules.length) return "–";
  return flow.schedules.map((s, i) => [i ? ", " : "",
    h("span", { dataset: { schedule: s.name, state: s.state }, title: `${s.cron} (${s.timezone}), next tick ${when(s.next_tick_at)}` },
      s.name, s.state === "active" ? "" : h("span", { class: "muted" }, ` (${s.state})`))]);
}

// a tick in the browser's time, with the schedule's own time zone's reading as its tooltip
function tick(iso, s) {
  if (!iso) return "–";
  let there = null;
  try {
    there = `${new Date(iso).toLocaleString(undefined, { hour12: false, timeZone: s.timezone })} in ${s.timezone}`;
  } catch { /* a time zone this browser does not know */ }
  return h("span", { title: there }, when(iso));
}

function lastRun(s) {
  if (!s.last_run_id) return "–";
  const link = h("a", { class: "mono", href: `#/runs/${s.last_run_id}` }, s.last_run_id.slice(0, 8));
  // a run that pruning deleted: the schedule still knows its id and tick
  return s.last_run_status ? [link, " ", badge(s.last_run_status)] : [link, h("span", { class: "muted" }, " (pruned)")];
}

function schedulesTable(flow) {
  if (flow.schedules === null) return h("p", { class: "muted", id: "schedules" }, `n/a: ${NO_SCHEDULES}`);
  if (!flow.schedules.length) {
    return h("p", { class: "muted", id: "schedules" }, "None: declare them on the Flow, or `pgflow schedules add`.");
  }
  return h("table", { id: "schedules" },
    h("thead", {}, h("tr", {}, ["schedule", "cron", "time zone", "origin", "state", "catch-up", "next tick", "last tick", "last run"].map((t) => h("th", {}, t)))),
    h("tbody", {}, flow.schedules.map((s) => h("tr", { dataset: { schedule: s.name, state: s.state } },
      h("td", {}, s.name),
      h("td", { class: "mono" }, s.cron),
      h("td", {}, s.timezone),
      h("td", {}, s.origin === "code" ? "code" : "run time"),
      h("td", {}, badge(s.state)),
      h("td", { class: "num" }, String(s.catch_up)),
      h("td", { class: "next-tick" }, s.state === "active" ? (s.next_tick_at ? tick(s.next_tick_at, s) : "none within 50 years") : "–"),
      h("td", { class: "last-tick" }, tick(s.last_tick_at, s)),
      h("td", { class: "last-run" }, lastRun(s)),
    ))));
}

export async function flowsPage(main) {
  const { flows } = await get("/api/flows");
  main.replaceChildren(
    h("h1", {}, "Flows"),
    flows.length ? h("table", { id: "flows" },
      h("thead", {}, h("tr", {},
        ["flow", "steps", "max attempts", "base delay", "timeout", "queue", ...STATUSES, "schedules", "created"].map((t) => h("th", {}, t)))),
      h("tbody", {}, flows.map((f) => h("tr", { dataset: { flow: f.flow_slug } },
        h("td", {}, h("a", { href: `#/flows/${encodeURIComponent(f.flow_slug)}` }, f.flow_slug)),
        h("td", { class: "num" }, String(f.step_count)),
        h("td", { class: "num" }, String(f.max_attempts)),
        h("td", { class: "num" }, `${f.base_delay} s`),
        h("td", { class: "num" }, `${f.timeout} s`),
        h("td", { class: "num queue" }, queue(f)),
        STATUSES.map((st) => h("td", { class: "num" }, runsLink(f.flow_slug, st, f.runs[st]))),
        h("td", { class: "schedules" }, scheduleNames(f)),
        h("td", {}, when(f.created_at)),
      )))) : h("p", { class: "muted" }, "No flows yet: a worker defines its flows when it starts."),
  );
}

export async function flowPage(main, slug) {
  const flow = await get(`/api/flows/${encodeURIComponent(slug)}`);
  main.replaceChildren(
    h("h1", {}, "Flow ", flow.flow_slug),
    h("dl", { class: "kv panel" },
      h("dt", {}, "options"), h("dd", {}, `max attempts ${flow.max_attempts}, base delay ${flow.base_delay} s, timeout ${flow.timeout} s`),
      flow.serializer ? [h("dt", {}, "serializer"), h("dd", {}, flow.serializer)] : null,
      h("dt", {}, "queue"), h("dd", {}, queue(flow), " messages"),
      h("dt", {}, "runs"), h("dd", {}, STATUSES.map((st) => [runsLink(flow.flow_slug, st, flow.runs[st]), ` ${st}  `])),
    ),
    h("h2", {}, "Schedules"),
    schedulesTable(flow),
    h("h2", {}, "DAG"),
    h("div", { class: "dag", id: "dag" }, drawDag(flow.steps)),
    h("h2", {}, "Steps"),
    h("table", { id: "steps" },
      h("thead", {}, h("tr", {}, ["step", "type", "after", "attempts", "base delay", "timeout", "start delay", "condition", "when exhausted"].map((t) => h("th", {}, t)))),
      h("tbody", {}, flow.steps.map((st) => h("tr", { dataset: { step: st.step_slug } },
        h("td", {}, st.step_slug), h("td", {}, st.step_type),
        h("td", {}, st.dependencies.join(", ") || "–"),
        h("td", { class: "num" }, String(st.max_attempts)), h("td", { class: "num" }, `${st.base_delay} s`),
        h("td", { class: "num" }, `${st.timeout} s`), h("td", { class: "num" }, `${st.start_delay} s`),
        h("td", { class: "mono" }, condition(st)),
        h("td", {}, st.when_exhausted),
      )))),
  );
}

function condition(st) {
  const parts = [];
  if (st.required_input_pattern) parts.push(`if ${JSON.stringify(st.required_input_pattern)}`);
  if (st.forbidden_input_pattern) parts.push(`if not ${JSON.stringify(st.forbidden_input_pattern)}`);
  return parts.length ? `${parts.join(" and ")} (else ${st.when_unmet})` : "–";
}
