// The workflow list: follows /events and keeps each row's state and the counts current.
import { element, follow, setBadge } from "./dom.js";

const body = document.body;
const rows = document.getElementById("rows");
const empty = document.querySelector("[data-testid=empty]");
const stateFilter = body.dataset.stateFilter || "";
const kindFilter = body.dataset.kindFilter || "";
const byId = new Map();
if (rows) for (const row of rows.rows) byId.set(row.dataset.workflowId, row);

function clock(iso) {
  return typeof iso === "string" ? iso.replace("T", " ").slice(0, 19) : "";
}

/** A row for a workflow that started after the page was rendered. */
function newRow(event) {
  const row = element("tr", { "data-workflow-id": event.workflow_id, "data-state": event.to });
  const link = element("a", { href: `/workflows/${encodeURIComponent(event.workflow_id)}`,
    "data-testid": "workflow-link" }, event.label || event.workflow_id);
  const badge = element("span", { "data-testid": "row-state" });
  setBadge(badge, event.to);
  const cells = [element("time", { datetime: event.at }, clock(event.at)),
    document.createTextNode(event.kind || ""), link, badge,
    element("time", { datetime: event.at }, clock(event.at)), null];
  for (const [index, content] of cells.entries()) {
    const cell = element("td", index === 4 ? { "data-cell": "updated" }
      : index === 5 ? { class: "error", "data-cell": "error" } : {});
    if (content) cell.append(content);
    row.append(cell);
  }
  return row;
}

function onTransition(event) {
  if (typeof event.workflow_id !== "string" || typeof event.to !== "string") return;
  let row = byId.get(event.workflow_id);
  if (!row) {
    const wanted = event.from === null && (!kindFilter || event.kind === kindFilter)
      && (!stateFilter || event.to === stateFilter);
    if (!wanted || !rows) return;
    row = newRow(event);
    byId.set(event.workflow_id, row);
    rows.prepend(row);
    if (empty) empty.hidden = true;
    return;
  }
  row.dataset.state = event.to;
  row.classList.toggle("elsewhere", Boolean(stateFilter) && event.to !== stateFilter);
  setBadge(row.querySelector("[data-testid=row-state]"), event.to);
  const updated = row.querySelector("[data-cell=updated] time");
  if (updated) updated.textContent = clock(event.at);
  const error = row.querySelector("[data-cell=error]");
  // As the store does: a failure sets the error, cancel keeps it, any other move clears it.
  if (error && event.trigger !== "cancel") error.textContent = event.to === "failed" ? event.reason || "" : "";
}

function onCounts(data) {
  const counts = data.counts && typeof data.counts === "object" ? data.counts : {};
  let total = 0;
  for (const span of document.querySelectorAll("[data-count-state]")) {
    const n = Number.isInteger(counts[span.dataset.countState]) ? counts[span.dataset.countState] : 0;
    span.textContent = String(n);
    total += n;
  }
  const all = document.querySelector("[data-testid=count-all] .n");
  if (all) all.textContent = String(total);
}

const url = new URL("/events", window.location.href);
if (kindFilter) url.searchParams.set("kind", kindFilter);
if (body.dataset.lastEventId) url.searchParams.set("last_event_id", body.dataset.lastEventId);
if (body.dataset.page === "list") follow(url, { transition: onTransition, counts: onCounts });
