// The workflow page: follows /events?workflow_id=… and keeps every part of the page current;
// Cancel, Retry, the review editor's Approve / Reject and Fork post to the JSON API (with the
// API token from this tab, if one is needed).
import { element, follow, formatSeconds, setBadge, webUrl } from "./dom.js";

const body = document.body;
const workflowId = body.dataset.workflowId;
const timeline = document.getElementById("timeline");
const tasks = document.getElementById("tasks");
const media = document.getElementById("media");
const status = document.getElementById("action-status");
const tokenField = document.getElementById("token");
const TOKEN_KEY = "cpoa-api-token";
const CONFIRM_CANCEL =
  "Cancel this workflow? Its unfinished agent work is abandoned; this cannot be undone.";

/** An ISO time shown short, as the server renders it (views.short_time). */
function timeCell(iso) {
  const cell = element("td");
  if (typeof iso === "string" && iso) {
    cell.append(element("time", { datetime: iso }, iso.slice(0, 23).replace("T", " ")));
  } else {
    cell.textContent = "–";
  }
  return cell;
}

function text(value) {
  return value === null || value === undefined ? "" : String(value);
}

/** Appends one transition, once (a replay after a reconnect may repeat it). */
function onTransition(event) {
  const eventId = Number(event.event_id);
  if (!Number.isSafeInteger(eventId) || event.workflow_id !== workflowId) return;
  if (timeline.querySelector(`tr[data-event-id="${eventId}"]`)) return;
  const previous = timeline.lastElementChild;
  let after = "";
  if (previous && previous.dataset.at && typeof event.at === "string") {
    after = formatSeconds((Date.parse(event.at) - Date.parse(previous.dataset.at)) / 1000);
  }
  const notes = [event.reason, ...(Array.isArray(event.warnings) ? event.warnings : [])]
    .filter((note) => typeof note === "string" && note).join("\n");
  const row = element("tr", { "data-event-id": eventId, "data-at": text(event.at) });
  row.append(element("td", {}, eventId), timeCell(event.at),
    element("td", {}, `${event.from || "●"} → ${text(event.to)}`),
    element("td", {}, event.trigger), element("td", {}, after),
    element("td", { class: "error" }, notes));
  timeline.append(row);
}

function taskRow(task) {
  const row = element("tr", { "data-task-id": text(task.task_id), "data-status": text(task.status) });
  const duration = formatSeconds(task.duration_s)
    + (task.running ? " (running)" : task.abandoned ? " (abandoned)" : "");
  const agentTask = element("td", {});
  agentTask.append(element("code", {}, task.agent_task_id));
  const progress = element("td");
  if (typeof task.progress === "number" && Number.isFinite(task.progress)) {
    progress.append(element("progress", { max: 1, value: task.progress, "data-testid": "task-progress" }));
  } else {
    progress.textContent = "–";
  }
  row.append(element("td", {}, task.step), element("td", {}, task.item_key),
    element("td", {}, task.attempt), element("td", {}, task.agent),
    element("td", {}, task.status), progress, agentTask, timeCell(task.started_at),
    element("td", {}, duration), element("td", {}, task.retries),
    element("td", { class: "error" }, task.error));
  return row;
}

function renderMedia(found) {
  const parts = [];
  const cover = webUrl(found.image_url);
  if (cover) parts.push(element("img", { src: cover, alt: "Cover art", "data-testid": "cover" }));
  const audio = webUrl(found.audio_url);
  if (audio) {
    const player = element("div", { class: "player" });
    const current = media.querySelector("audio");
    // Keep a playing element: replacing it would stop the episode at every update.
    const audioElement = current && current.getAttribute("src") === audio ? current
      : element("audio", { controls: true, preload: "metadata", src: audio, "data-testid": "audio" });
    player.append(element("p", { "data-testid": "episode-title" }, found.title), audioElement,
      element("a", { href: audio, download: true, rel: "noopener", "data-testid": "download" }, "Download"));
    parts.push(player);
  }
  const snippets = Array.isArray(found.snippets) ? found.snippets : [];
  if (snippets.length) {
    const list = element("ul", { class: "snippets", "data-testid": "snippets" });
    for (const snippet of snippets) {
      const item = element("li");
      item.append(element("strong", {}, snippet.title), ` ${text(snippet.summary)}`);
      list.append(item);
    }
    parts.push(list);
  }
  media.replaceChildren(...parts);
  media.hidden = parts.length === 0;
}

function setField(name, value, isTime = false) {
  const cell = document.querySelector(`[data-field="${name}"]`);
  if (!cell) return;
  if (isTime) {
    cell.replaceChildren(...timeCell(value).childNodes);
  } else {
    cell.textContent = value === null || value === undefined || value === "" ? "–" : String(value);
  }
}

/** Applies the workflow's current data (sent after each batch of transitions). */
function onSnapshot(view) {
  if (view.workflow_id !== workflowId || typeof view.state !== "string") return;
  setBadge(document.querySelector("[data-testid=state]"), view.state);
  const reviewForm = document.getElementById("review");
  if (view.state === "awaiting_review"
      && (!reviewForm || Number(reviewForm.dataset.revision) !== view.script_revision)) {
    window.location.reload();  // a (new) script awaits review: the server renders its editor
    return;
  }
  if (reviewForm) reviewForm.hidden = view.state !== "awaiting_review";
  body.dataset.state = view.state;
  const progress = document.querySelector("[data-testid=progress]");
  if (typeof view.progress === "number") progress.value = view.progress;
  const step = document.querySelector("[data-testid=step-progress]");
  const known = typeof view.step_progress === "number" && Number.isFinite(view.step_progress);
  step.hidden = !known;
  if (known) step.value = view.step_progress;
  document.querySelector("[data-testid=step-percent]").textContent =
    known ? `${Math.round(view.step_progress * 100)}%` : "–";
  for (const name of ["failed_from_state", "retry_count", "recovery_attempts", "lease_owner"]) {
    setField(name, view[name]);
  }
  for (const name of ["started_at", "updated_at", "ended_at", "next_run_at"]) {
    setField(name, view[name], true);
  }
  const error = document.querySelector("[data-testid=error]");
  error.textContent = text(view.error);
  error.hidden = !view.error;
  const warnings = Array.isArray(view.warnings) ? view.warnings : [];
  document.querySelector("[data-testid=warnings]").replaceChildren(
    ...warnings.map((warning) => element("li", {}, warning)));
  tasks.replaceChildren(...(Array.isArray(view.tasks) ? view.tasks : []).map(taskRow));
  if (view.media && typeof view.media === "object") renderMedia(view.media);
  document.getElementById("cancel").disabled = !view.can_cancel;
  document.getElementById("retry").disabled = !view.can_retry;
  const counts = view.state_counts && typeof view.state_counts === "object" ? view.state_counts : {};
  for (const box of document.querySelectorAll("svg.statechart g.state")) {
    box.classList.toggle("current", box.dataset.state === view.state);
    const count = box.querySelector("text.count");
    const n = counts[box.dataset.state];
    if (count) count.textContent = `${Number.isInteger(n) ? n : 0} now`;
  }
}

/** POSTs cancel, retry, review or fork (with a JSON body) to the JSON API and says how it
 * went; returns the answer's JSON when it succeeded. */
async function act(action, json = null) {
  const headers = { Accept: "application/json" };
  const token = tokenField.value.trim();
  if (token) headers.Authorization = `Bearer ${token}`;
  if (json !== null) headers["Content-Type"] = "application/json";
  status.textContent = `${action}…`;
  let answer;
  try {
    answer = await fetch(`/v1/workflows/${encodeURIComponent(workflowId)}/${action}`,
      { method: "POST", headers, body: json === null ? undefined : JSON.stringify(json) });
  } catch (error) {
    status.textContent = `${action} failed: ${error}`;
    return;
  }
  let payload = {};
  try {
    payload = await answer.json();
  } catch {
    payload = {};
  }
  if (answer.ok) {
    status.textContent = `${action}: ${text(payload.state || "done")}`;
    return payload;
  } else if (answer.status === 401) {
    status.textContent = "This server needs its API token: enter it above and click again.";
    tokenField.focus();
  } else {
    status.textContent = `${action} refused: ${text(payload.message || answer.statusText)}`;
  }
}

tokenField.value = sessionStorage.getItem(TOKEN_KEY) || "";
tokenField.addEventListener("input", () => sessionStorage.setItem(TOKEN_KEY, tokenField.value));
document.getElementById("cancel").addEventListener("click", () => {
  if (window.confirm(CONFIRM_CANCEL)) {
    act("cancel");
  } else {
    status.textContent = "cancel: not confirmed";
  }
});
document.getElementById("retry").addEventListener("click", () => act("retry"));

/** The revision of the script the editor shows (sent as expected_revision). */
function shownRevision() {
  return Number(document.getElementById("review").dataset.revision);
}

/** The stored script with the reviewer's edits applied by position; null when unchanged.
 * Throws when the stored script is another revision than the one shown: the edits were made
 * on the one shown and must never be laid over a newer script by position. */
async function editedScript() {
  const answer = await fetch(`/v1/workflows/${encodeURIComponent(workflowId)}`,
    { headers: { Accept: "application/json" } });
  const outputs = (await answer.json()).outputs;
  const stored = Number(outputs.script_revision || 1);
  if (stored !== shownRevision()) {
    throw new Error(`the script is now at revision ${stored}, not ${shownRevision()}`);
  }
  const script = outputs.script;
  const original = JSON.stringify(script);
  script.title = document.getElementById("script-title").value;
  for (const field of document.querySelectorAll("#review [data-part]")) {
    const segment = script.segments[Number(field.dataset.segment)];
    if (!segment) continue;
    if (field.dataset.part === "segment_title") {
      segment.segment_title = field.value;
    } else {
      const line = segment.lines[Number(field.dataset.line)];
      if (line) line[field.dataset.part] = field.value;
    }
  }
  return JSON.stringify(script) === original ? null : script;
}

const review = document.getElementById("review");
if (review) {
  const notes = document.getElementById("review-notes");
  document.getElementById("approve").addEventListener("click", async () => {
    let script;
    try {
      script = await editedScript();
    } catch (error) {
      status.textContent = `review refused: ${error.message}; reload the page`;
      return;
    }
    const request = { decision: "approve", expected_revision: shownRevision() };
    if (script !== null) request.script = script;
    if (await act("review", request)) review.remove();  // a later review reloads the page
  });
  document.getElementById("reject").addEventListener("click", async () => {
    const request = { decision: "reject", notes: notes.value,
                      expected_revision: shownRevision() };
    if (await act("review", request)) review.remove();
  });
}

const forkButton = document.getElementById("fork");
if (forkButton) {
  forkButton.addEventListener("click", async () => {
    const voice = document.getElementById("fork-voice").value.trim();
    const params = voice ? { voice_params: { voice_name: voice } } : {};
    const made = await act("fork", { from_state: document.getElementById("fork-from").value,
                                     params });
    if (made && typeof made.workflow_id === "string") {
      const link = document.getElementById("fork-link");
      link.href = `/workflows/${encodeURIComponent(made.workflow_id)}`;
      link.textContent = `fork ${made.workflow_id}`;
      link.hidden = false;
    }
  });
}

const url = new URL("/events", window.location.href);
url.searchParams.set("workflow_id", workflowId);
url.searchParams.set("last_event_id", body.dataset.lastEventId || "0");
follow(url, { transition: onTransition, snapshot: onSnapshot });
