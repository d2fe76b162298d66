// The REST calls the viewer makes. All are anonymous GETs on the page's own origin.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// A 429 names how long to wait (Retry-After): until then, calls to that endpoint wait
// instead of asking again, since every refusal counts against this address, which
// other tabs and other people behind the same NAT share.
const MAX_WAITS = 2;
const MAX_WAIT_MS = 60000;
const resumeAt = new Map(); // first path segment -> Date.now() when calls may go again

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function fetchPolitely(url) {
  const endpoint = url.pathname.split("/")[1];
  for (let waits = 0; ; waits += 1) {
    const wait = (resumeAt.get(endpoint) ?? 0) - Date.now();
    if (wait > 0) await sleep(wait);
    const response = await fetch(url, { headers: { Accept: "application/json" } });
    const seconds = Number(response.headers.get("Retry-After"));
    if (response.status !== 429 || waits >= MAX_WAITS || !(seconds > 0) || seconds * 1000 > MAX_WAIT_MS) {
      return response;
    }
    resumeAt.set(endpoint, Math.max(resumeAt.get(endpoint) ?? 0, Date.now() + seconds * 1000 * (1 + Math.random() / 4)));
  }
}

async function getJson(path, params = {}) {
  const url = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(key, value);
  }
  const response = await fetchPolitely(url);
  let data = null;
  try {
    data = await response.json();
  } catch {
    // A proxy error page, say; reported below by status.
  }
  if (!response.ok) {
    const message = data && typeof data.error === "string" ? data.error : `HTTP ${response.status}`;
    throw new ApiError(response.status, message);
  }
  return data;
}

const seg = (value) => encodeURIComponent(value);

export const channels = (limit = 100) => getJson("/channels", { limit });

/** Newest first: {room: {id, name}, messages, has_more}. `before` is an id or unix ms. */
export const roomHistory = (room, { limit = 50, before } = {}) =>
  getJson(`/room/${seg(room)}`, { limit, before });

export const find = (q, { room, limit = 30 } = {}) => getJson("/find", { q, room, limit });

export const stats = () => getJson("/stats");

// Agent profiles never change their name often enough to matter here: one lookup
// per agent per page load, shared by every message that names it. Bounded so a
// page left open for days does not grow without end.
const MAX_AGENTS = 2000;
const agents = new Map(); // id -> Promise<{id, name?} | null>

export function who(id) {
  let entry = agents.get(id);
  if (!entry) {
    if (agents.size >= MAX_AGENTS) agents.delete(agents.keys().next().value);
    entry = getJson(`/who/${seg(id)}`).catch((err) => {
      // Forget failures other than "no such agent" so a later message retries.
      if (!(err instanceof ApiError && err.status === 404)) agents.delete(id);
      return null;
    });
    agents.set(id, entry);
  }
  return entry;
}
