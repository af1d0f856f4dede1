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
      step: element("div", { class: "bar step", "data-testid": "step", hidden: "" }),
      stepProgress: element("progress", { max: "1", value: "0", "data-testid": "step-progress" }),
      stepLabel: element("span", { "data-testid": "step-label" }),
      live: null,
      seen: new Set(),
    };
    const bar = element("div", { class: "bar" });
    bar.append(parts.progress, parts.percent);
    parts.step.append(parts.stepLabel, parts.stepProgress);
    root.append(element("h2", {}, workflowId), parts.state, bar, parts.step, parts.message,
      parts.warnings, parts.media, parts.history);
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
    // The episode's own player (the live one, if any, is another element).
    let audio = parts.media.querySelector('audio[data-testid="audio"]');
    if (!audio) {
      audio = element("audio", { controls: "", preload: "metadata", "data-testid": "audio" });
      const link = element("a", { "data-testid": "download", download: "", rel: "noopener" },
        "Download");
      parts.media.append(audio, link);
    }
    if (audio.getAttribute("src") !== url) {
      audio.setAttribute("src", url);
      parts.media.querySelector('a[data-testid="download"]').setAttribute("href", url);
    }
    parts.root.classList.add("done");
  }

  /**
   * The "listen while it is made" player: one <audio> that plays the finished parts (VFA's
   * turns) in order, each URL once, moving to the next when one ends and waiting at the end
   * for the next to arrive. Created on the first playable part.
   */
  function livePlayer(parts) {
    if (parts.live) return parts.live;
    const audio = element("audio", { controls: "", preload: "auto", "data-testid": "live-audio" });
    const caption = element("span", { class: "live-caption", "data-testid": "live-caption" });
    const box = element("div", { class: "live", "data-testid": "live" });
    box.append(element("span", {}, "Listen while it is made:"), audio, caption);
    parts.media.append(box);
    const live = { audio, caption, urls: [], known: new Set(), at: -1, waiting: false };
    live.show = () => {
      caption.textContent = `part ${live.at + 1} of ${live.urls.length} ready`;
      audio.setAttribute("data-part", String(live.at));
    };
    live.go = (index, play) => {
      live.at = index;
      live.waiting = false;
      audio.setAttribute("src", live.urls[index]);
      live.show();
      if (play) audio.play().catch(() => {});
    };
    audio.addEventListener("ended", () => {
      if (live.at + 1 < live.urls.length) live.go(live.at + 1, true);
      else live.waiting = true;  // the next part starts as soon as it is reported
    });
    parts.live = live;
    return live;
  }

  /** Adds the playable parts of a partial list (http(s) audio_url only), in their order. */
  function addParts(parts, partial) {
    if (!Array.isArray(partial)) return;
    const urls = partial.filter((item) => item && typeof item === "object")
      .map((item) => webUrl(item.audio_url)).filter((url) => url);
    if (!urls.length) return;
    const live = livePlayer(parts);
    for (const url of urls) {
      if (live.known.has(url)) continue;  // a replay, or a part already listed
      live.known.add(url);
      live.urls.push(url);
    }
    if (live.at < 0) live.go(0, false);
    else if (live.waiting && live.at + 1 < live.urls.length) live.go(live.at + 1, true);
    else live.show();
  }

  /** Applies a generation_progress event: the step's own bar and its finished parts. */
  function applyProgress(payload) {
    const data = payload.data && typeof payload.data === "object" ? payload.data : {};
    const parts = card(payload.workflow_id);
    if (typeof data.message === "string") parts.message.textContent = data.message;
    setProgress(parts, data.workflow_progress);
    const value = data.progress;
    if (typeof value === "number" && Number.isFinite(value)) {
      const clamped = Math.min(1, Math.max(0, value));
      parts.stepProgress.value = clamped;
      const agent = typeof data.agent === "string" ? `${data.agent} ` : "";
      parts.stepLabel.textContent = `${agent}${Math.round(clamped * 100)} %`;
      parts.step.hidden = false;
    }
    addParts(parts, data.partial);
  }

  /** Applies a generation_status or task_error event. */
  function applyStatus(payload) {
    const data = payload.data && typeof payload.data === "object" ? payload.data : {};
    const parts = card(payload.workflow_id);
    const state = typeof data.state === "string" ? data.state : null;
    if (state && state !== parts.root.getAttribute("data-state")) {
      parts.step.hidden = true;  // a new step: its own progress starts afresh
    }
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
  source.addEventListener("generation_progress", listener(applyProgress));
})();
