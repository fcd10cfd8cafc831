// The flow's DAG as SVG. The server places each step (its `layer`: longest path from a root;
// its `order` within the layer, arranged to reduce crossings); this draws boxes left to right
// and an edge from each dependency. Map steps are drawn as a stack, a step with a condition
// carries an "if" mark whose tooltip says the condition.

import { s } from "./dom.js";

const W = 168, H = 46, GAP_X = 64, GAP_Y = 22, PAD = 14;

function condition(step) {
  const parts = [];
  if (step.required_input_pattern) parts.push(`if ${JSON.stringify(step.required_input_pattern)}`);
  if (step.forbidden_input_pattern) parts.push(`if not ${JSON.stringify(step.forbidden_input_pattern)}`);
  if (!parts.length) return null;
  return `${parts.join(" and ")}; otherwise ${step.when_unmet || "skip"}`;
}

function subtitle(step) {
  if (!step.status) {
    const deps = step.dependencies.length ? `after ${step.dependencies.length}` : "root";
    return `${step.step_type} · ${deps}`;
  }
  const total = step.initial_tasks;
  const done = step.task_counts
    ? ["completed", "failed", "skipped", "cancelled"].reduce((n, k) => n + (step.task_counts[k] || 0), 0)
    : null;
  const tasks = total === null || total === undefined ? "" : ` · ${done ?? "?"}/${total}`;
  return `${step.status}${tasks}`;
}

export function drawDag(steps, { onSelect } = {}) {
  const layers = Math.max(0, ...steps.map((st) => st.layer)) + 1;
  const rows = new Array(layers).fill(0);
  for (const st of steps) rows[st.layer] = Math.max(rows[st.layer], st.order + 1);
  const tallest = Math.max(1, ...rows);
  const pos = new Map();
  for (const st of steps) {
    const offset = (tallest - rows[st.layer]) / 2;
    pos.set(st.step_slug, {
      x: PAD + st.layer * (W + GAP_X),
      y: PAD + (st.order + offset) * (H + GAP_Y),
    });
  }
  const width = PAD * 2 + layers * W + (layers - 1) * GAP_X;
  const height = PAD * 2 + tallest * H + (tallest - 1) * GAP_Y;
  const svg = s("svg", {
    width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `DAG of ${steps.length} steps`,
  });
  svg.append(s("defs", {}, s("marker", {
    id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7,
    orient: "auto-start-reverse",
  }, s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#8a96a3" }))));
  for (const st of steps) {
    const to = pos.get(st.step_slug);
    for (const dep of st.dependencies) {
      const from = pos.get(dep);
      if (!from) continue;
      const x1 = from.x + W, y1 = from.y + H / 2, x2 = to.x - 2, y2 = to.y + H / 2;
      const mid = (x1 + x2) / 2;
      svg.append(s("path", {
        class: "edge", d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
        "marker-end": "url(#arrow)", "data-from": dep, "data-to": st.step_slug,
      }));
    }
  }
  for (const st of steps) {
    const { x, y } = pos.get(st.step_slug);
    const g = s("g", {
      class: `node status-${st.status || "defined"}`, transform: `translate(${x},${y})`,
      "data-step": st.step_slug, "data-status": st.status || "", "data-type": st.step_type,
      tabindex: 0,
    });
    const cond = condition(st);
    g.append(s("title", {}, `${st.step_slug} (${st.step_type} step)${cond ? `\ncondition: ${cond}` : ""}`));
    if (st.step_type === "map") {
      g.append(s("rect", { class: "shadow", x: 6, y: -6, width: W, height: H, rx: 6 }));
      g.append(s("rect", { class: "shadow", x: 3, y: -3, width: W, height: H, rx: 6 }));
    }
    g.append(s("rect", { class: "box", width: W, height: H, rx: 6 }));
    const label = st.step_slug.length > 21 ? `${st.step_slug.slice(0, 20)}…` : st.step_slug;
    g.append(s("text", { x: 10, y: 19 }, (st.step_type === "map" ? "⇶ " : "") + label));
    g.append(s("text", { class: "sub", x: 10, y: 36 }, subtitle(st)));
    if (cond) {
      g.append(s("circle", { class: "cond", cx: W - 12, cy: 12, r: 9 }));
      g.append(s("text", { class: "cond-text", x: W - 18.5, y: 15.5 }, "if"));
    }
    if (onSelect) {
      g.addEventListener("click", () => onSelect(st.step_slug));
      g.addEventListener("keydown", (e) => { if (e.key === "Enter") onSelect(st.step_slug); });
    }
    svg.append(g);
  }
  return svg;
}

// Recolour the drawn DAG from a live state ({steps: [{step_slug, status, ...}]}).
export function updateDag(svg, states) {
  for (const st of states) {
    const g = svg.querySelector(`g.node[data-step="${CSS.escape(st.step_slug)}"]`);
    if (!g) continue;
    g.setAttribute("class", `node status-${st.status}`);
    g.setAttribute("data-status", st.status);
    const sub = g.querySelector("text.sub");
    if (sub) sub.textContent = subtitle({ ...st, dependencies: [] });
  }
}
