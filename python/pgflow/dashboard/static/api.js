// The dashboard's JSON API. Errors carry the server's message ({"error": ...}).

let session = null;

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function parse(response) {
  const type = response.headers.get("content-type") || "";
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    if (type.includes("json")) {
      try { message = (await response.json()).error || message; } catch { /* keep the status */ }
    }
    throw new ApiError(response.status, message);
  }
  return type.includes("json") ? response.json() : response.text();
}

export async function get(path, params = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") query.set(key, value);
  }
  const qs = query.toString();
  return parse(await fetch(qs ? `${path}?${qs}` : path, { credentials: "same-origin" }));
}

// The raw text of a whole value (JSON or a traceback), not parsed.
export async function getText(path) {
  const response = await fetch(path, { credentials: "same-origin" });
  if (!response.ok) await parse(response);
  return response.text();
}

export async function post(path, body) {
  const current = await getSession();
  return parse(await fetch(path, {
    method: "POST",
    credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": current.csrf_token || "" },
    body: JSON.stringify(body),
  }));
}

export async function getSession() {
  if (session === null) session = await get("/api/session");
  return session;
}
