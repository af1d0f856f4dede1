// Helpers shared by the dashboard pages.
//
// Everything in an event or a snapshot came from the database or an agent and is untrusted:
// it is only written with textContent, or with setAttribute after webUrl() has checked the
// scheme of a URL. Nothing is ever parsed as HTML. The pages' Content-Security-Policy forbids
// inline script as a second line of defence.

/** Creates an element with attributes and optional text (never markup). */
export function element(tag, attributes = {}, text = null) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== null && value !== undefined && value !== false) {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  if (text !== null && text !== undefined) node.textContent = String(text);
  return node;
}

/** Returns the URL if it is an absolute http(s) URL, else null. */
export function webUrl(value) {
  if (typeof value !== "string") return null;
  try {
    const url = new URL(value);
    return url.protocol === "http:" || url.protocol === "https:" ? url.href : null;
  } catch {
    return null;
  }
}

/** The same short duration as the server's views.format_seconds. */
export function formatSeconds(seconds) {
  if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "–";
  if (seconds < 10) return `${seconds.toFixed(2)} s`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const total = Math.round(seconds);
  const minutes = Math.floor(total / 60);
  if (minutes < 60) return `${minutes} min ${String(total % 60).padStart(2, "0")} s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ${String(minutes % 60).padStart(2, "0")} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** Sets a state badge: its text and its state-<name> class. */
export function setBadge(badge, state) {
  if (!badge || typeof state !== "string") return;
  badge.textContent = state;
  badge.className = `badge state-${state}`;
}

/**
 * Follows an event stream: calls handlers[name](data) for each frame with a JSON object, and
 * shows the connection's state in #connection. EventSource reconnects by itself, sending the
 * last frame id as Last-Event-ID, so the server replays what came meanwhile.
 */
export function follow(url, handlers) {
  const connection = document.getElementById("connection");
  const source = new EventSource(url);
  source.addEventListener("open", () => { connection.textContent = "live"; });
  source.addEventListener("error", () => {
    connection.textContent = source.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
  });
  for (const [name, handle] of Object.entries(handlers)) {
    source.addEventListener(name, (event) => {
      let data;
      try {
        data = JSON.parse(event.data);
      } catch {
        return;
      }
      if (data && typeof data === "object") handle(data);
    });
  }
  return source;
}
