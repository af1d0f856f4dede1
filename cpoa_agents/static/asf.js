// The ASF live page: follows /events and keeps one card per workflow up to date.
//
// Everything in an event comes from agents and is untrusted. It is only ever written with
// textContent, or with setAttribute after webUrl() has checked the scheme; nothing is parsed
// as HTML. The page's Content-Security-Policy forbids inline script as a second line of defence.
"use strict";

(() => {
  const list = document.getElementById("workflows");
  const empty = document.getElementById("empty");
  const connection = document.getElementById("connection");
  const cards = new Map();

  /** Returns the URL if it is an absolute http(s) URL, else null. */
  function webUrl(value) {
    if (typeof value !== "string") return null;
    let url;
    try {
      url = new URL(value);
    } catch {
      return null;
    }
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  }

  /** Creates an element with attributes and optional text (never markup). */
  function element(tag, attributes = {}, text = "") {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, value);
    if (text) node.textContent = text;
    return node;
  }

  /** Returns the card of a workflow, creating it (at the top) on its first event. */
  function card(workflowId) {
    if (cards.has(workflowId)) return cards.get(workflowId);
    const root = element("article", { class: "workflow", "data-workflow-id": workflowId });
    const parts = {
      root,
      state: element("span", { class: "state", "data-testid": "state" }, "waiting"),
      progress: element("progress", { max: "1", value: "0", "data-testid": "progress" }),
      percent: element("span", { "data-testid": "percent" }, "0 %"),
      message: element("p", { class: "message", "data-testid": "message" }),
      warnings: element("ul", { class: "warnings", "data-testid": "warnings" }),
      history: element("ol", { class: "history", "data-testid": "history" }),
      media: element("div", { class: "media", "data-testid": "media" }),
      seen: new Set(),
    };
    const bar = element("div", { class: "bar" });
    bar.append(parts.progress, parts.percent);
    root.append(element("h2", {}, workflowId), parts.state, bar, parts.message, parts.warnings,
      parts.media, parts.history);
    list.prepend(root);
    cards.set(workflowId, parts);
    empty.hidden = true;
    return parts;
  }

  function setProgress(parts, value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return;
    const clamped = Math.min(1, Math.max(0, value));
    parts.progress.value = clamped;
    parts.percent.textContent = `${Math.round(clamped * 100)} %`;
  }

  function setWarnings(parts, warnings) {
    if (!Array.isArray(warnings)) return;
    parts.warnings.replaceChildren(
      ...warnings.filter((w) => typeof w === "string").map((w) => element("li", {}, w)));
  }

  function setCover(parts, value) {
    const url = webUrl(value);
    if (!url) return;
    let cover = parts.media.querySelector("img");
    if (!cover) {
      cover = element("img", { alt: "Cover art", "data-testid": "cover" });
      parts.media.prepend(cover);
    }
    if (cover.getAttribute("src") !== url) cover.setAttribute("src", url);
  }

  function setAudio(parts, value) {
    const url = webUrl(value);
    if (!url) return;
    let audio = parts.media.querySelector("audio");
    if (!audio) {
      audio = element("audio", { controls: "", preload: "metadata", "data-testid": "audio" });
      const link = element("a", { "data-testid": "download", download: "", rel: "noopener" },
        "Download");
      parts.media.append(audio, link);
    }
    if (audio.getAttribute("src") !== url) {
      audio.setAttribute("src", url);
      parts.media.querySelector("a").setAttribute("href", url);
    }
    parts.root.classList.add("done");
  }

  /** Applies a generation_status or task_error event. */
  function applyStatus(payload) {
    const data = payload.data && typeof payload.data === "object" ? payload.data : {};
    const parts = card(payload.workflow_id);
    const state = typeof data.state === "string" ? data.state : null;
    if (state) {
      parts.state.textContent = state;
      parts.root.setAttribute("data-state", state);
    }
    if (typeof data.message === "string") parts.message.textContent = data.message;
    setProgress(parts, data.progress);
    setWarnings(parts, data.warnings);
    setCover(parts, data.image_url);
    parts.root.classList.toggle("failed", payload.event === "task_error");
    if (data.is_terminal === true && typeof data.final_status === "string") {
      parts.root.setAttribute("data-final-status", data.final_status);
    }
    if (typeof data.final_status === "string" && data.final_status.startsWith("completed")) {
      setAudio(parts, data.audio_url);
    }
    // A replay after a reconnect repeats events; the history lists each one once.
    if (typeof payload.event_id === "string" && !parts.seen.has(payload.event_id)) {
      parts.seen.add(payload.event_id);
      const text = [state, data.message].filter((t) => typeof t === "string").join(": ");
      parts.history.append(element("li", {}, text));
    }
  }

  /** Applies a new_audio event: the episode is ready to play. */
  function applyAudio(payload) {
    const parts = card(payload.workflow_id);
    setCover(parts, payload.image_url);
    setAudio(parts, payload.audio_url);
  }

  function listener(apply) {
    return (event) => {
      let payload;
      try {
        payload = JSON.parse(event.data);
      } catch {
        return;
      }
      if (payload && typeof payload.workflow_id === "string") apply(payload);
    };
  }

  const source = new EventSource("/events");
  source.addEventListener("open", () => { connection.textContent = "live"; });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself (sending Last-Event-ID) unless it gave up.
    connection.textContent = source.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
  });
  source.addEventListener("generation_status", listener(applyStatus));
  source.addEventListener("task_error", listener(applyStatus));
  source.addEventListener("new_audio", listener(applyAudio));
})();
