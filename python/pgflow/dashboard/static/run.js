// A run: its DAG coloured by step status, live (server-sent events), its input and output, and
// each step's tasks with attempts, durations, errors, outputs and, for a failed attempt, the
// handler's traceback (when the database keeps attempts).

import { get, getSession, post } from "./api.js";
import { drawDag, updateDag } from "./dag.js";
import { badge, duration, h, scheduleOf, toast, when } from "./dom.js";
import { valueView } from "./value.js";

const FINAL = new Set(["completed", "failed", "cancelled"]);

export async function runPage(main, runId, page) {
  const session = await getSession();
  const base = `/api/runs/${encodeURIComponent(runId)}`;
  let run = await get(base);
  const opened = new Set();  // <details> kept open across refreshes, by key
  const dagBox = h("div", { class: "dag", id: "dag" });
  const head = h("div", { id: "run-head" });
  const values = h("div", { class: "grid2" });
  const stepsBox = h("div", { id: "steps" });
  const liveNote = h("span", { class: "muted", id: "live" });
  let svg = null;

  function render() {
    head.replaceChildren(header(run, session, base, liveNote));
    svg = drawDag(run.steps, {
      onSelect: (slug) => document.getElementById(`step-${slug}`)?.scrollIntoView({ behavior: "smooth" }),
    });
    dagBox.replaceChildren(svg);
    values.replaceChildren(
      h("div", { class: "panel", id: "run-input" }, h("h3", {}, "Input"), valueView(run.input, `${base}/input`, { label: "input" })),
      h("div", { class: "panel", id: "run-output" }, h("h3", {}, "Output"), valueView(run.output, `${base}/output`, { label: "output" })),
    );
    stepsBox.replaceChildren(...run.steps.map((st) => stepView(st, run, base, opened)));
  }

  main.replaceChildren(head, h("h2", {}, "DAG"), dagBox, values, h("h2", {}, "Steps"), stepsBox);
  render();

  if (FINAL.has(run.status)) {
    liveNote.textContent = "finished";
    return;
  }
  // Live: the stream sends the run's state when it changes; the DAG is recoloured at once and
  // the rest of the page is fetched again (at most every 300 ms).
  const source = new EventSource(`${base}/events`);
  page.onLeave(() => source.close());
  let pending = null;
  const refresh = () => {
    if (pending) return;
    pending = setTimeout(async () => {
      pending = null;
      try { run = await get(base); render(); } catch (error) { toast(error.message, true); }
    }, 300);
  };
  source.addEventListener("state", (event) => {
    const state = JSON.parse(event.data);
    liveNote.textContent = `live (${state.live === "notify" ? "database events" : "polling"})`;
    if (svg) updateDag(svg, state.steps);
    refresh();
  });
  source.addEventListener("end", () => { source.close(); liveNote.textContent = "finished"; refresh(); });
  source.addEventListener("gone", () => { source.close(); liveNote.textContent = "the run is gone (pruned?)"; });
  source.onerror = () => { liveNote.textContent = "live: reconnecting…"; };
}

function header(run, session, base, liveNote) {
  const finished = run.completed_at || run.failed_at || run.cancelled_at;
  const actions = [];
  if (session.actions && run.status === "started") {
    const cancel = h("button", { class: "danger", id: "cancel-run" }, "cancel run");
    cancel.onclick = async () => {
      if (!confirm(`Cancel run ${run.run_id}?`)) return;
      cancel.disabled = true;
      try {
        const result = await post(`${base}/cancel`, {});
        toast(result.cancelled ? "run cancelled" : `the run had already finished (${result.status})`);
      } catch (error) { toast(error.message, true); cancel.disabled = false; }
    };
    actions.push(cancel);
  }
  return h("div", {},
    h("h1", {}, "Run ", h("span", { class: "mono" }, run.run_id), " ", badge(run.status), " ", ...actions),
    h("dl", { class: "kv" },
      h("dt", {}, "flow"), h("dd", {}, h("a", { href: `#/flows/${encodeURIComponent(run.flow_slug)}` }, run.flow_slug)),
      run.schedule ? [h("dt", {}, "schedule"), h("dd", { id: "run-schedule" }, scheduleOf(run))] : null,
      h("dt", {}, "started"), h("dd", {}, when(run.started_at)),
      h("dt", {}, "duration"), h("dd", {}, finished ? duration(run.started_at, finished) : `running for ${duration(run.started_at, run.now)}`),
      h("dt", {}, "steps left"), h("dd", {}, String(run.remaining_steps)),
      run.error_message ? [h("dt", {}, "error"), h("dd", { class: "error", id: "run-error" }, run.error_message)] : null,
      h("dt", {}, "updates"), h("dd", {}, liveNote),
    ));
}

function stepView(st, run, base, opened) {
  const stepBase = `${base}/steps/${encodeURIComponent(st.step_slug)}`;
  const counts = Object.entries(st.task_counts).map(([k, n]) => `${n} ${k}`).join(", ");
  const body = h("tbody");
  for (const task of st.tasks) appendTask(body, task, st, stepBase, run, opened);
  const box = h("section", { class: "panel step", id: `step-${st.step_slug}`, dataset: { step: st.step_slug, status: st.status } },
    h("div", { class: "step-head" },
      h("h3", {}, st.step_slug), h("span", { class: "muted" }, `${st.step_type} step`), badge(st.status),
      h("span", { class: "muted" }, counts || "no tasks"),
      st.dependencies.length ? h("span", { class: "muted" }, `after ${st.dependencies.join(", ")}`) : null,
      h("span", { class: "muted right" }, duration(st.started_at, st.completed_at || st.failed_at || st.skipped_at)),
    ),
    st.skip_reason ? h("div", { class: "muted" }, `skipped: ${st.skip_reason.replace(/_/g, " ")}`) : null,
    st.error_message ? h("div", { class: "error" }, st.error_message) : null,
    st.output ? h("details", detailsAttrs(opened, `out-${st.step_slug}`), h("summary", {}, "step output"),
      valueView(st.output, `${stepBase}/output`, { label: "output" })) : null,
    st.tasks.length ? h("table", { class: "tasks" },
      h("thead", {}, h("tr", {}, ["task", "status", "attempts", "started", "duration", "worker", "error / output"].map((t) => h("th", {}, t)))),
      body) : null,
  );
  if (st.tasks_total > st.tasks.length) {
    let after = st.tasks[st.tasks.length - 1].task_index;
    const more = h("button", {}, `more tasks (${st.tasks_total - st.tasks.length} not shown)`);
    const failedOnly = h("button", {}, "failed tasks only");
    more.onclick = async () => {
      const page = await get(`${stepBase}/tasks`, { after, limit: 100 });
      for (const task of page.tasks) appendTask(body, task, st, stepBase, run, opened);
      if (page.next === null) more.remove(); else after = page.next;
    };
    failedOnly.onclick = async () => {
      const page = await get(`${stepBase}/tasks`, { status: "failed", limit: 200 });
      body.replaceChildren();
      for (const task of page.tasks) appendTask(body, task, st, stepBase, run, opened);
      more.remove(); failedOnly.remove();
    };
    box.append(h("div", { class: "pager" }, more, failedOnly));
  }
  return box;
}

function detailsAttrs(opened, key) {
  return {
    open: opened.has(key), dataset: { key },
    ontoggle: (e) => { if (e.target.open) opened.add(key); else opened.delete(key); },
  };
}

function appendTask(body, task, st, stepBase, run, opened) {
  const taskBase = `${stepBase}/tasks/${task.task_index}`;
  const end = task.completed_at || task.failed_at;
  const detail = [];
  if (task.error_message) detail.push(h("div", { class: "error task-error" }, task.error_message));
  if (task.output) {
    detail.push(h("details", detailsAttrs(opened, `tout-${st.step_slug}-${task.task_index}`),
      h("summary", {}, "output"), valueView(task.output, `${taskBase}/output`, { label: "output" })));
  }
  body.append(h("tr", { class: "task", dataset: { task: task.task_index, status: task.status } },
    h("td", { class: "num" }, String(task.task_index)),
    h("td", {}, badge(task.status)),
    h("td", { class: "num" }, String(task.attempts_count)),
    h("td", {}, when(task.started_at)),
    h("td", { class: "num" }, task.started_at ? (end ? duration(task.started_at, end) : "running") : "–"),
    h("td", { class: "mono" }, task.worker || (task.worker_id ? task.worker_id.slice(0, 8) : "–")),
    h("td", {}, detail),
  ));
  // one completed attempt says no more than the task's row
  if (!task.attempts.length || (task.attempts.length === 1 && task.attempts[0].outcome === "completed")) return;
  const rows = task.attempts.map((a) => h("tr", { class: "attempt", dataset: { attempt: a.attempt, outcome: a.outcome } },
    h("td", { class: "num" }, `#${a.attempt}`),
    h("td", {}, badge(a.outcome)),
    h("td", {}, when(a.started_at)),
    h("td", { class: "num" }, duration(a.started_at, a.ended_at)),
    h("td", { class: "mono" }, a.worker_id ? a.worker_id.slice(0, 8) : "–"),
    h("td", {},
      a.error_message ? h("div", { class: "error" }, a.error_message) : null,
      a.traceback ? h("details", { ...detailsAttrs(opened, `tb-${st.step_slug}-${task.task_index}-${a.attempt}`), class: "traceback" },
        h("summary", {}, "traceback"),
        valueView(a.traceback, `${taskBase}/attempts/${a.attempt}/traceback`, { json: false, label: "traceback" })) : null),
  ));
  body.append(h("tr", { class: "attempts" }, h("td"), h("td", { colspan: 6 },
    h("table", {}, h("thead", {}, h("tr", {}, ["attempt", "outcome", "started", "duration", "worker", "error"].map((t) => h("th", {}, t)))),
      h("tbody", {}, rows)))));
}
