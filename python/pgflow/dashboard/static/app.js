// The dashboard's page: a router over the location's hash (#/runs, #/runs/<id>, #/flows,
// #/flows/<slug>, #/workers), each route a module that fills <main>.

import { getSession } from "./api.js";
import { h } from "./dom.js";
import { flowPage, flowsPage } from "./flows.js";
import { runPage } from "./run.js";
import { runsPage } from "./runs.js";
import { workersPage } from "./workers.js";

const main = document.getElementById("main");
let leaving = [];

function route() {
  for (const leave of leaving) leave();
  leaving = [];
  const page = { onLeave: (fn) => leaving.push(fn) };
  const hash = location.hash.replace(/^#/, "") || "/runs";
  const [path, query = ""] = hash.split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === parts[0]);
  }
  let shown;
  if (parts[0] === "runs" && parts[1]) shown = runPage(main, parts[1], page);
  else if (parts[0] === "flows" && parts[1]) shown = flowPage(main, parts[1]);
  else if (parts[0] === "flows") shown = flowsPage(main);
  else if (parts[0] === "workers") shown = workersPage(main);
  else shown = runsPage(main, params);
  shown.catch((error) => {
    main.replaceChildren(h("h1", {}, "Something went wrong"), h("p", { class: "error", id: "page-error" }, error.message));
  });
}

window.addEventListener("hashchange", route);
getSession().then((session) => {
  document.getElementById("session").textContent =
    `${session.database} · pgflow ${session.version}${session.actions ? " · actions on" : ""}`;
}).catch(() => {});
route();
