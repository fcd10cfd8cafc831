// The runs page: newest first, filtered by flow and status, searched by run id prefix, a page
// at a time (keyset: "next" resumes after the last run shown), each with the schedule that
// started it, if one did; and, with actions on, a form that starts a run.

import { get, getSession, post } from "./api.js";
import { badge, duration, h, scheduleOf, toast, when } from "./dom.js";

export async function runsPage(main, params) {
  const [session, { flows }] = await Promise.all([getSession(), get("/api/flows")]);
  const state = {
    flow: params.get("flow") || "", status: params.get("status") || "", q: params.get("q") || "",
  };
  const cursors = [null];  // the cursor of each page shown so far (the first has none)
  const flowSelect = h("select", { name: "flow", "aria-label": "flow" },
    h("option", { value: "" }, "all flows"),
    flows.map((f) => h("option", { value: f.flow_slug, selected: f.flow_slug === state.flow }, f.flow_slug)));
  const statusSelect = h("select", { name: "status", "aria-label": "status" },
    ["", "started", "completed", "failed", "cancelled"].map((st) =>
      h("option", { value: st, selected: st === state.status }, st || "any status")));
  const search = h("input", {
    name: "q", placeholder: "run id prefix", value: state.q, size: 24, "aria-label": "run id prefix",
  });
  const body = h("tbody");
  const info = h("span", { class: "muted" });
  const prev = h("button", { disabled: true }, "← newer");
  const next = h("button", { disabled: true }, "older →");

  async function load(index) {
    const page = await get("/api/runs", { ...state, after: cursors[index], limit: 50 });
    body.replaceChildren(...page.runs.map(row));
    if (!page.runs.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "muted" }, "no runs")));
    cursors.length = index + 1;
    if (page.next) cursors.push(page.next);
    prev.disabled = index === 0;
    next.disabled = !page.next;
    prev.onclick = () => load(index - 1);
    next.onclick = () => load(index + 1);
    info.textContent = `page ${index + 1}${state.q ? " (by run id)" : ""}`;
  }

  function apply() {
    state.flow = flowSelect.value; state.status = statusSelect.value; state.q = search.value.trim();
    const qs = new URLSearchParams(Object.entries(state).filter(([, v]) => v)).toString();
    history.replaceState(null, "", `#/runs${qs ? `?${qs}` : ""}`);
    cursors.length = 1;
    load(0).catch((e) => toast(e.message, true));
  }
  flowSelect.onchange = apply; statusSelect.onchange = apply;
  search.onkeydown = (e) => { if (e.key === "Enter") apply(); };

  main.replaceChildren(
    h("h1", {}, "Runs"),
    session.actions ? startForm(flows, state.flow) : null,
    h("div", { class: "filters" }, flowSelect, statusSelect, search,
      h("button", { onclick: apply }, "search"), info),
    h("table", { id: "runs" },
      h("thead", {}, h("tr", {}, ["run", "flow", "status", "started", "duration", "schedule", "error"].map((t) => h("th", {}, t)))),
      body),
    h("div", { class: "pager" }, prev, next),
  );
  await load(0);
}

function row(run) {
  return h("tr", { dataset: { run: run.run_id } },
    h("td", {}, h("a", { class: "mono", href: `#/runs/${run.run_id}` }, run.run_id)),
    h("td", {}, h("a", { href: `#/flows/${encodeURIComponent(run.flow_slug)}` }, run.flow_slug)),
    h("td", {}, badge(run.status)),
    h("td", {}, when(run.started_at)),
    h("td", { class: "num" }, run.status === "started" ? "running" : duration(run.started_at, run.finished_at)),
    h("td", { class: "schedule" }, scheduleOf(run)),
    h("td", { class: "error" }, run.error_message || ""),
  );
}

function startForm(flows, selected) {
  const flow = h("select", { name: "start-flow", "aria-label": "flow to start" },
    flows.map((f) => h("option", { value: f.flow_slug, selected: f.flow_slug === selected }, f.flow_slug)));
  const input = h("textarea", { name: "start-input", "aria-label": "run input (JSON)", spellcheck: "false" }, "{}");
  const button = h("button", { class: "primary", id: "start-run" }, "start run");
  const problem = h("div", { class: "error", id: "start-error" });
  button.onclick = async () => {
    button.disabled = true; problem.textContent = "";
    try {
      const { run_id } = await post("/api/runs", { flow: flow.value, input: input.value });
      location.hash = `#/runs/${run_id}`;
    } catch (error) {
      problem.textContent = error.message;
    } finally {
      button.disabled = false;
    }
  };
  return h("details", { class: "panel", id: "start" },
    h("summary", {}, "Start a run"),
    h("div", { class: "filters" }, flow, button),
    input, problem);
}
