// Forge dashboard: plain ES module, no framework, no build step, nothing from other origins.
// Untrusted text (anything from the API) only ever reaches the page through textContent.

const API = "/api/v1";
const OWNER_KEY = "forge.owner";
const SESSIONS_POLL_MS = 2500;
const DETAIL_POLL_MS = 3000;
const STATUS_POLL_MS = 5000;
const SVG_NS = "http://www.w3.org/2000/svg";

const view = document.getElementById("view");
const ownerInput = document.getElementById("owner-input");
const ownerField = document.getElementById("owner-field");
const signedInAs = document.getElementById("signed-in-as");
const signOutButton = document.getElementById("sign-out");

// What GET /dashboard/session said: {auth_enabled, signed_in, owner_id, admin}.
let dashboard = { auth_enabled: false, signed_in: false, owner_id: null, admin: true };
let disposeView = () => {};

// ---- small helpers ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** An element: `h("td", {class: "num", testid: "x", onclick: fn}, "text", child)`. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "testid") el.dataset.testid = value;
    else if (key === "class") el.className = value;
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "testid") el.setAttribute("data-testid", value);
    else el.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

function setView(...children) {
  view.replaceChildren(...children.flat().filter(Boolean));
}

function owner() {
  return (localStorage.getItem(OWNER_KEY) ?? "me").trim();
}

/** The `user_id` to send: none when signed in with an owner's key (the key names the owner). */
function ownerScope() {
  if (dashboard.signed_in && dashboard.owner_id && !dashboard.admin) return null;
  return owner() || null;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== null && value !== undefined && value !== "") search.set(key, String(value));
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}

/** fetch, same-origin with its cookie; JSON in and out; errors as ApiError. A 401 signs out. */
async function api(path, { method = "GET", body, params = {}, scoped = true } = {}) {
  const all = scoped ? { user_id: ownerScope(), ...params } : params;
  const init = { method, credentials: "same-origin", headers: { accept: "application/json" } };
  if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(`${path}${query(all)}`, init);
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    const code = data && data.error ? data.error : `http_${response.status}`;
    const message = data && data.message ? data.message : response.statusText || code;
    if (response.status === 401 && path !== `${API}/dashboard/session`) {
      dashboard.signed_in = false;
      if (location.hash !== "#/signin") location.hash = "#/signin";
    }
    throw new ApiError(response.status, code, message);
  }
  return data;
}

function formatNumber(value) {
  return Number(value || 0).toLocaleString("en-US");
}

function formatCost(value) {
  return `$${Number(value || 0).toFixed(4)}`;
}

function formatBytes(value) {
  let n = Number(value || 0);
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

function formatDuration(seconds) {
  let s = Math.round(Number(seconds || 0));
  if (s < 60) return `${s}s`;
  const d = Math.floor(s / 86400);
  s -= d * 86400;
  const hrs = Math.floor(s / 3600);
  s -= hrs * 3600;
  const m = Math.floor(s / 60);
  s -= m * 60;
  if (d) return `${d}d ${hrs}h`;
  if (hrs) return `${hrs}h ${m}m`;
  return `${m}m ${s}s`;
}

function formatTime(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleString();
}

function badge(status, testid) {
  return h("span", { class: `badge ${status}`, testid }, status);
}

function errorBanner(error) {
  const text = error instanceof ApiError ? `${error.code}: ${error.message}` : String(error);
  return h("div", { class: "banner", role: "alert", testid: "error-banner" }, text);
}

function stringify(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

/** Calls `fn` now and every `ms` until the returned stop function is called. */
function every(ms, fn) {
  let stopped = false;
  let timer = null;
  const tick = async () => {
    try {
      await fn();
    } catch (error) {
      console.warn(error);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  tick();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

// ---- routing ---------------------------------------------------------------------------------

async function loadDashboardSession() {
  try {
    dashboard = await api(`${API}/dashboard/session`, { scoped: false });
  } catch (error) {
    // A server without the dashboard session route: auth is off as far as the UI knows.
    if (!(error instanceof ApiError) || error.status !== 404) throw error;
    dashboard = { auth_enabled: false, signed_in: false, owner_id: null, admin: true };
  }
  renderHeader();
}

function renderHeader() {
  const keyOwner = dashboard.signed_in && dashboard.owner_id && !dashboard.admin;
  ownerField.hidden = Boolean(keyOwner) || (dashboard.auth_enabled && !dashboard.signed_in);
  ownerInput.value = owner();
  signedInAs.hidden = !dashboard.signed_in;
  signedInAs.textContent = dashboard.signed_in
    ? `Signed in as ${dashboard.admin ? "admin" : dashboard.owner_id}`
    : "";
  signOutButton.hidden = !(dashboard.auth_enabled && dashboard.signed_in);
}

function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const parts = hash.split("/").filter(Boolean).map(decodeURIComponent);
  disposeView();
  disposeView = () => {};
  for (const link of document.querySelectorAll("nav a")) {
    link.classList.toggle("active", link.dataset.route === (parts[0] || "sessions"));
  }
  if (dashboard.auth_enabled && !dashboard.signed_in && parts[0] !== "signin") {
    location.hash = "#/signin";
    return;
  }
  const [page, id] = parts;
  let dispose;
  if (page === "signin") dispose = signInView();
  else if (page === "new") dispose = newSessionView();
  else if (page === "status") dispose = statusView();
  else if (page === "analytics") dispose = analyticsView();
  else if (page === "sessions" && id) dispose = sessionView(id);
  else dispose = sessionsView();
  disposeView = dispose || (() => {});
}

// ---- sign in -----------------------------------------------------------------------------------

function signInView() {
  if (!dashboard.auth_enabled || dashboard.signed_in) {
    location.hash = "#/sessions";
    return null;
  }
  const key = h("input", {
    id: "signin-key",
    type: "password",
    testid: "signin-key",
    autocomplete: "current-password",
    required: true,
  });
  const message = h("p", { class: "error-text", role: "alert", testid: "signin-error" });
  message.hidden = true;
  const submit = h("button", { type: "submit", class: "primary", testid: "signin-submit" }, "Sign in");
  const form = h(
    "form",
    { class: "panel form signin", testid: "signin-form" },
    h("h1", {}, "Sign in to Forge"),
    h("label", { for: "signin-key" }, "API key", key),
    message,
    submit,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    message.hidden = true;
    try {
      await api(`${API}/dashboard/session`, {
        method: "POST",
        body: { key: key.value },
        scoped: false,
      });
      await loadDashboardSession();
      location.hash = "#/sessions";
    } catch (error) {
      message.textContent = error instanceof ApiError ? error.message : String(error);
      message.hidden = false;
      key.select();
    } finally {
      submit.disabled = false;
    }
  });
  setView(form);
  key.focus();
  return null;
}

async function signOut() {
  try {
    await api(`${API}/dashboard/session`, { method: "DELETE", scoped: false });
  } catch (error) {
    console.warn(error);
  }
  await loadDashboardSession();
  location.hash = "#/signin";
  route();
}

// ---- sessions list -------------------------------------------------------------------------------

const SESSION_STATUSES = ["provisioning", "queued", "running", "idle", "stopped", "failed", "completed"];

async function loadProfiles() {
  try {
    const data = await api(`${API}/profiles`, { scoped: false });
    return data.profiles || [];
  } catch (error) {
    console.warn(error);
    return [];
  }
}

function dayStart(value) {
  // A date input's day, from 00:00 UTC.
  return value ? `${value}T00:00:00Z` : null;
}

function nextDay(value) {
  if (!value) return null;
  const date = new Date(`${value}T00:00:00Z`);
  date.setUTCDate(date.getUTCDate() + 1);
  return date.toISOString().replace(/\.\d+Z$/, "Z");
}

function sessionsView() {
  const profile = h("select", { id: "filter-profile", testid: "filter-profile" }, h("option", { value: "" }, "All"));
  const status = h(
    "select",
    { id: "filter-status", testid: "filter-status" },
    h("option", { value: "" }, "All"),
    SESSION_STATUSES.map((s) => h("option", { value: s }, s)),
  );
  const after = h("input", { id: "filter-after", type: "date", testid: "filter-after" });
  const before = h("input", { id: "filter-before", type: "date", testid: "filter-before" });
  const search = h("input", {
    id: "filter-search",
    type: "search",
    testid: "filter-search",
    placeholder: "id, repo, branch…",
  });
  const total = h("span", { class: "muted", testid: "sessions-total" });
  const body = h("tbody", { testid: "sessions-body" });
  const problem = h("div");
  let latest = [];

  const filters = h(
    "form",
    { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
    h("label", { for: "filter-profile" }, "Profile", profile),
    h("label", { for: "filter-status" }, "Status", status),
    h("label", { for: "filter-after" }, "Created from", after),
    h("label", { for: "filter-before" }, "Created to", before),
    h("label", { for: "filter-search", class: "grow" }, "Search", search),
  );

  function renderRows() {
    const needle = search.value.trim().toLowerCase();
    const rows = latest.filter((s) => {
      if (!needle) return true;
      const hay = [s.id, s.profile, s.executor, s.repo, s.branch, s.status, s.error]
        .filter(Boolean)
        .join(" ")
        .toLowerCase();
      return hay.includes(needle);
    });
    body.replaceChildren(
      ...rows.map((s) =>
        h(
          "tr",
          { testid: "session-row", "data-session-id": s.id },
          h("td", {}, h("a", { href: `#/sessions/${encodeURIComponent(s.id)}`, class: "mono" }, s.id)),
          h("td", {}, s.profile),
          h("td", {}, badge(s.status, "session-status")),
          h("td", { class: "mono" }, s.repo ? `${s.repo}${s.branch ? ` @ ${s.branch}` : ""}` : "—"),
          h("td", { class: "num" }, String(s.runs), s.queued_runs ? ` (+${s.queued_runs})` : ""),
          h("td", { class: "num" }, formatNumber(s.usage.input_tokens + s.usage.output_tokens)),
          h("td", { class: "num" }, formatCost(s.usage.cost_usd)),
          h("td", {}, formatTime(s.created_at)),
        ),
      ),
    );
    if (!rows.length) {
      body.append(h("tr", {}, h("td", { colspan: 8, class: "muted", testid: "sessions-empty" }, "No sessions.")));
    }
  }

  async function refresh() {
    try {
      const page = await api(`${API}/sessions`, {
        params: {
          profile: profile.value,
          status: status.value,
          created_after: dayStart(after.value),
          created_before: nextDay(before.value),
          limit: 200,
        },
      });
      latest = page.sessions;
      total.textContent = `${page.total} session${page.total === 1 ? "" : "s"}`;
      problem.replaceChildren();
      renderRows();
    } catch (error) {
      problem.replaceChildren(errorBanner(error));
    }
  }

  let stop = every(SESSIONS_POLL_MS, refresh);
  for (const control of [profile, status, after, before]) {
    control.addEventListener("change", () => {
      stop();
      stop = every(SESSIONS_POLL_MS, refresh);
    });
  }
  search.addEventListener("input", renderRows);
  loadProfiles().then((profiles) => {
    for (const p of profiles) profile.append(h("option", { value: p.name }, p.name));
  });

  setView(
    h("div", { class: "row" }, h("h1", { class: "grow" }, "Sessions"), total,
      h("a", { href: "#/new", testid: "new-session-link" }, "New session")),
    filters,
    problem,
    h(
      "div",
      { class: "panel" },
      h(
        "table",
        { testid: "sessions-table" },
        h(
          "thead",
          {},
          h("tr", {}, ["Session", "Profile", "Status", "Repository", "Messages", "Tokens", "Cost", "Created"].map(
            (name, i) => h("th", { class: i >= 4 && i <= 6 ? "num" : "", scope: "col" }, name),
          )),
        ),
        body,
      ),
    ),
  );
  return () => stop();
}

// ---- new session -------------------------------------------------------------------------------

function newSessionView() {
  const profile = h("select", { id: "new-profile", testid: "new-profile", required: true });
  const repo = h("input", { id: "new-repo", testid: "new-repo", placeholder: "/path/to/a/git/repository" });
  const baseRef = h("input", { id: "new-base-ref", testid: "new-base-ref", placeholder: "HEAD" });
  const message = h("textarea", { id: "new-message", testid: "new-message", placeholder: "First message (optional)" });
  const problem = h("div");
  const submit = h("button", { type: "submit", class: "primary", testid: "new-submit" }, "Create session");
  const form = h(
    "form",
    { class: "panel form", testid: "new-form" },
    h("label", { for: "new-profile" }, "Profile", profile),
    h("label", { for: "new-repo" }, "Repository (optional)", repo),
    h("label", { for: "new-base-ref" }, "Base ref (optional)", baseRef),
    h("label", { for: "new-message" }, "Message", message),
    problem,
    h("div", {}, submit),
  );
  loadProfiles().then((profiles) => {
    for (const p of profiles) {
      const label = p.description ? `${p.name} — ${p.description}` : `${p.name} (${p.executor})`;
      profile.append(h("option", { value: p.name }, label));
    }
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    problem.replaceChildren();
    try {
      const body = { profile: profile.value };
      const who = ownerScope();
      if (who) body.owner_id = who;
      if (repo.value.trim()) body.repo = repo.value.trim();
      if (baseRef.value.trim()) body.base_ref = baseRef.value.trim();
      const agent = await api(`${API}/agents`, { method: "POST", body, scoped: false });
      const text = message.value.trim();
      if (text) {
        // Sent while the agent is provisioning, the message waits in its queue.
        await api(`${API}/agents/${encodeURIComponent(agent.id)}/messages`, {
          method: "POST",
          body: { content: text },
        });
      }
      location.hash = `#/sessions/${encodeURIComponent(agent.id)}`;
    } catch (error) {
      problem.replaceChildren(errorBanner(error));
      submit.disabled = false;
    }
  });
  setView(h("h1", {}, "New session"), form);
  return null;
}

// ---- one session ---------------------------------------------------------------------------------

const DECISION_LABELS = { once: "Allowed once", always: "Always allowed", reject: "Rejected" };

function sessionView(id) {
  const base = `${API}/sessions/${encodeURIComponent(id)}`;
  const agentBase = `${API}/agents/${encodeURIComponent(id)}`;
  let disposed = false;
  let socket = null;
  let reconnectTimer = null;
  let lastSeq = 0;
  let session = null;
  const prompts = new Map(); // request_id -> the message, for the "You" lines
  const shownRequests = new Set();
  const toolCalls = new Map(); // request_id + tool_call_id -> its element
  const permissionBoxes = new Map(); // permission_id -> render(state)
  const permissionStates = new Map(); // permission_id -> {status, decision}

  const title = h("h1", { class: "grow mono", testid: "session-id" }, id);
  const statusBadge = h("span", { testid: "session-status-badge" });
  const notice = h("div");
  const transcript = h("div", { class: "transcript", testid: "transcript", "aria-live": "polite" });
  const connection = h("span", { class: "muted", testid: "stream-state" }, "connecting…");
  const messageBox = h("textarea", {
    id: "message-input",
    testid: "message-input",
    placeholder: "Send a message…",
  });
  const sendButton = h("button", { type: "submit", class: "primary", testid: "send-message" }, "Send");
  const composer = h(
    "form",
    { class: "composer", testid: "composer" },
    h("label", { for: "message-input", class: "grow" }, h("span", { hidden: true }, "Message"), messageBox),
    sendButton,
  );
  const interruptButton = h("button", { type: "button", testid: "interrupt" }, "Interrupt");
  const stopButton = h("button", { type: "button", class: "danger", testid: "stop" }, "Stop");
  const resumeButton = h("button", { type: "button", testid: "resume" }, "Resume");
  const meta = h("dl", { class: "meta", testid: "session-meta" });
  const usage = h("dl", { class: "meta", testid: "session-usage" });

  const panes = {
    transcript: h("div", { testid: "pane-transcript" }, transcript, composer),
    diff: h("div", { testid: "pane-diff" }),
    files: h("div", { testid: "pane-files" }),
  };
  const tabButtons = {};
  const tabs = h(
    "div",
    { class: "tabs", role: "tablist" },
    ["transcript", "diff", "files"].map((name) => {
      const button = h(
        "button",
        { type: "button", role: "tab", testid: `tab-${name}`, "aria-selected": "false" },
        name[0].toUpperCase() + name.slice(1),
      );
      button.addEventListener("click", () => showTab(name));
      tabButtons[name] = button;
      return button;
    }),
  );

  function showTab(name) {
    for (const [key, pane] of Object.entries(panes)) {
      pane.hidden = key !== name;
      tabButtons[key].setAttribute("aria-selected", String(key === name));
    }
    if (name === "diff") loadDiff(panes.diff, base);
    if (name === "files") loadFiles(panes.files, base);
  }

  function say(error) {
    notice.replaceChildren(error ? errorBanner(error) : "");
  }

  // -- metadata and usage
  function renderSession() {
    if (!session) return;
    statusBadge.replaceChildren(badge(session.status, "session-status"));
    const rows = [
      ["Profile", session.profile],
      ["Executor", session.executor],
      ["Owner", session.owner_id],
      ["Repository", session.repo || "—"],
      ["Base", session.base_ref || "—"],
      ["Branch", session.branch || "—"],
      ["Workspace", session.workspace_path || "—"],
      ["Executor session", session.executor_session_id || "—"],
      ["Messages", `${session.runs}${session.queued_runs ? ` (${session.queued_runs} waiting)` : ""}`],
      ["Created", formatTime(session.created_at)],
      ["Updated", formatTime(session.updated_at)],
    ];
    if (session.error) rows.push(["Error", session.error]);
    meta.replaceChildren(...rows.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    const u = session.usage;
    usage.replaceChildren(
      ...[
        ["Input tokens", formatNumber(u.input_tokens), "usage-input"],
        ["Output tokens", formatNumber(u.output_tokens), "usage-output"],
        ["Cache read", formatNumber(u.cache_read_tokens), "usage-cache-read"],
        ["Cache write", formatNumber(u.cache_write_tokens), "usage-cache-write"],
        ["Cost", formatCost(u.cost_usd), "usage-cost"],
      ].flatMap(([k, v, t]) => [h("dt", {}, k), h("dd", { testid: t }, v)]),
    );
    const live = !["stopped", "failed", "completed"].includes(session.status);
    stopButton.disabled = !live || session.status === "provisioning";
    interruptButton.disabled = session.status !== "running";
    resumeButton.disabled = session.status === "completed";
    sendButton.disabled = session.status === "completed";
  }

  async function refreshSession() {
    session = await api(base);
    renderSession();
  }

  async function refreshPermissions() {
    const data = await api(`${agentBase}/permissions`);
    for (const p of data.permissions) {
      permissionStates.set(p.permission_id, { status: p.status, decision: p.decision });
      const render = permissionBoxes.get(p.permission_id);
      if (render) render();
    }
  }

  async function refreshPrompts() {
    const data = await api(`${base}/transcript`);
    for (const line of data.entries) {
      if (line.kind === "user_message" || line.kind === "setup") {
        prompts.set(line.request_id, line.kind === "setup" ? null : line.entry.text);
      }
    }
  }

  // -- the transcript
  function scrollToEnd() {
    const nearEnd = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 120;
    if (nearEnd) transcript.scrollTop = transcript.scrollHeight;
  }

  function showRequest(requestId) {
    if (!requestId || shownRequests.has(requestId)) return;
    shownRequests.add(requestId);
    if (!prompts.has(requestId)) return;
    const text = prompts.get(requestId);
    transcript.append(
      text === null
        ? h("div", { class: "entry system", testid: "entry", "data-kind": "setup" }, "Setup")
        : h("div", { class: "entry user_message", testid: "entry", "data-kind": "user_message" }, h("pre", {}, text)),
    );
  }

  function toolSummary(entry) {
    return entry.detail || entry.command || entry.path || "";
  }

  function renderToolCall(entry, el) {
    const status = entry.status || "";
    const details = el.querySelector("details") || h("details", {});
    const wasOpen = details.open;
    const summary = h(
      "summary",
      { testid: "tool-summary" },
      h("span", { class: "tool-name", testid: "tool-name" }, entry.tool || "tool"),
      h("span", { class: "tool-detail mono", title: toolSummary(entry) }, toolSummary(entry)),
      h("span", { class: `status-${status}`, testid: "tool-status" }, status),
    );
    const bodyParts = [];
    if (entry.input !== undefined) {
      bodyParts.push(h("div", { class: "muted" }, "Input"), h("pre", { testid: "tool-input" }, stringify(entry.input)));
    }
    if (entry.output !== undefined) {
      bodyParts.push(h("div", { class: "muted" }, "Output"), h("pre", { testid: "tool-output" }, stringify(entry.output)));
    }
    if (entry.error) {
      bodyParts.push(h("div", { class: "muted" }, "Error"), h("pre", { class: "error-text", testid: "tool-error" }, entry.error));
    }
    if (!bodyParts.length) bodyParts.push(h("div", { class: "muted" }, "No input or output."));
    details.replaceChildren(summary, h("div", { class: "tool-body", testid: "tool-body" }, bodyParts));
    details.open = wasOpen;
    el.dataset.status = status;
    el.className = `entry tool_call ${status === "failed" || status === "denied" ? "error" : ""}`;
    if (!details.parentNode) el.append(details);
  }

  function renderPermission(entry, el) {
    const pid = entry.permission_id;
    const buttons = ["once", "always", "reject"].map((decision) => {
      const label = { once: "Allow once", always: "Always allow", reject: "Reject" }[decision];
      return h("button", {
        type: "button",
        testid: `permission-${decision}`,
        class: decision === "reject" ? "danger" : decision === "once" ? "primary" : "",
        onclick: async () => {
          for (const b of buttons) b.disabled = true;
          try {
            const answer = await api(`${agentBase}/permissions/${encodeURIComponent(pid)}`, {
              method: "POST",
              body: { decision },
            });
            permissionStates.set(pid, { status: answer.status, decision: answer.decision });
          } catch (error) {
            say(error);
            refreshPermissions().catch(() => {});
          }
          render();
        },
      }, label);
    });
    const state = h("span", { class: "muted", testid: "permission-state" });
    const actions = h("div", { class: "row" }, buttons, state);
    function render() {
      const known = permissionStates.get(pid);
      const pending = !known || known.status === "pending";
      for (const b of buttons) b.hidden = !pending;
      el.dataset.state = known ? known.status : "pending";
      state.textContent = !known
        ? ""
        : known.status === "answered"
          ? DECISION_LABELS[known.decision] || "Answered"
          : known.status === "expired"
            ? "Expired"
            : "Waiting for your answer";
    }
    permissionBoxes.set(pid, render);
    el.replaceChildren(
      h("div", {}, h("strong", {}, "Permission: "), h("span", { class: "mono" }, entry.tool || "tool"), " ",
        h("span", { class: "mono" }, entry.detail || "")),
      entry.input !== undefined ? h("pre", { class: "muted" }, stringify(entry.input)) : null,
      actions,
    );
    render();
  }

  function renderEntry(envelope, entry) {
    const kind = entry.kind || "event";
    const attrs = { testid: "entry", "data-kind": kind, "data-seq": envelope.seq };
    switch (kind) {
      case "tool_call": {
        // Ids are the executor's, unique within one run.
        const callKey = entry.tool_call_id ? `${envelope.request_id} ${entry.tool_call_id}` : null;
        const existing = callKey ? toolCalls.get(callKey) : null;
        if (existing) {
          // The same call again (running → success): its latest state, where it was.
          renderToolCall(entry, existing);
          return null;
        }
        const el = h("div", { ...attrs, class: "entry tool_call", testid: "tool-call" });
        el.dataset.kind = "tool_call";
        renderToolCall(entry, el);
        if (callKey) toolCalls.set(callKey, el);
        return el;
      }
      case "permission_request": {
        const el = h("div", { ...attrs, class: "entry permission_request", testid: "permission-request" });
        el.dataset.permissionId = entry.permission_id;
        renderPermission(entry, el);
        refreshPermissions().catch(() => {});
        return el;
      }
      case "assistant_message":
        return h("div", { ...attrs, class: "entry assistant_message" }, h("pre", {}, entry.text || ""));
      case "user_message":
        return h("div", { ...attrs, class: "entry user_message" }, h("pre", {}, entry.text || ""));
      case "thinking":
        return h("div", { ...attrs, class: "entry thinking" }, h("pre", {}, entry.text || ""));
      case "error":
        return h("div", { ...attrs, class: "entry error", role: "alert" },
          entry.code ? `${entry.code}: ` : "", entry.message || entry.text || "error");
      case "todo":
        return h("div", { ...attrs, class: "entry todo" }, h("ul", {},
          (entry.items || []).map((item) => h("li", {}, `[${item.status || ""}] ${item.content || ""}`))));
      case "usage":
        return h("div", { ...attrs, class: "entry usage" },
          `tokens: ${formatNumber(entry.input_tokens)} in, ${formatNumber(entry.output_tokens)} out` +
          (entry.cost_usd ? `, ${formatCost(entry.cost_usd)}` : ""));
      case "system":
        return h("div", { ...attrs, class: "entry system mono" }, entry.text || "");
      default:
        return h("div", { ...attrs, class: "entry system mono" }, entry.text || JSON.stringify(entry));
    }
  }

  function renderEnvelope(envelope) {
    if (envelope.request_id && !shownRequests.has(envelope.request_id)) showRequest(envelope.request_id);
    const type = envelope.event_type;
    const attrs = { testid: "entry", "data-seq": envelope.seq };
    if (type === "agent.event") {
      return envelope.entry ? renderEntry(envelope, envelope.entry) : null;
    }
    if (type === "agent.status") {
      return h("div", { ...attrs, class: "entry status", "data-kind": "status" }, `— ${envelope.status || "status"}`);
    }
    if (type === "agent.error") {
      const error = envelope.error || {};
      return h("div", { ...attrs, class: "entry agent-error", "data-kind": "agent-error", role: "alert" },
        `${error.code || "error"}: ${error.message || ""}`);
    }
    if (type === "agent.complete") {
      const outcome = envelope.outcome || "";
      return h("div", { ...attrs, class: "entry run-end", "data-kind": "run-end", "data-outcome": outcome },
        `Run ended: `, badge(outcome, "run-outcome"), envelope.message ? ` ${envelope.message}` : "");
    }
    return null;
  }

  async function onEnvelope(envelope) {
    if (typeof envelope.seq !== "number" || envelope.seq <= lastSeq) return;
    lastSeq = envelope.seq;
    if (envelope.request_id && !prompts.has(envelope.request_id) && !shownRequests.has(envelope.request_id)) {
      // A message sent from elsewhere: its text is in the transcript.
      await refreshPrompts().catch(() => {});
    }
    const el = renderEnvelope(envelope);
    if (el) {
      transcript.append(el);
      scrollToEnd();
    }
    if (envelope.event_type !== "agent.event") refreshSession().catch(() => {});
  }

  // Frames are handled one at a time, in order, even when one waits for the transcript.
  let queue = Promise.resolve();
  function connect() {
    if (disposed) return;
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const url = `${scheme}://${location.host}${agentBase}/stream${query({ after: lastSeq, user_id: ownerScope() })}`;
    socket = new WebSocket(url);
    socket.addEventListener("open", () => {
      connection.textContent = "live";
      connection.dataset.state = "live";
    });
    socket.addEventListener("message", (message) => {
      let envelope;
      try {
        envelope = JSON.parse(message.data);
      } catch {
        return;
      }
      queue = queue.then(() => onEnvelope(envelope)).catch((error) => console.warn(error));
    });
    socket.addEventListener("close", async () => {
      if (disposed) return;
      connection.textContent = "reconnecting…";
      connection.dataset.state = "reconnecting";
      // The close may be a refusal (signed out, the session gone) or a deleted session's end:
      // the session read tells.
      try {
        await refreshSession();
      } catch (error) {
        say(error);
        if (error instanceof ApiError && [401, 403, 404].includes(error.status)) {
          connection.textContent = "disconnected";
          return;
        }
      }
      if (disposed) return;
      if (session && session.status === "completed") {
        connection.textContent = "ended";
        connection.dataset.state = "ended";
        return;
      }
      // Resume after the last seq shown: nothing twice, nothing lost.
      reconnectTimer = setTimeout(connect, 1500);
    });
  }

  // -- actions
  // A message (or a resume's): sent, remembered for the transcript, and the box emptied.
  async function sendText(url, body, text) {
    const accepted = await api(url, { method: "POST", body });
    prompts.set(accepted.request_id, text);
    messageBox.value = "";
    say(null);
    refreshSession().catch(() => {});
  }
  composer.addEventListener("submit", async (event) => {
    event.preventDefault();
    const text = messageBox.value.trim();
    if (!text) return;
    sendButton.disabled = true;
    try {
      await sendText(`${agentBase}/messages`, { content: text }, text);
    } catch (error) {
      say(error);
    } finally {
      sendButton.disabled = false;
    }
  });
  messageBox.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) composer.requestSubmit();
  });
  interruptButton.addEventListener("click", async () => {
    try {
      await api(`${agentBase}/interrupt`, { method: "POST", body: {} });
      say(null);
    } catch (error) {
      say(error);
    }
  });
  stopButton.addEventListener("click", async () => {
    stopButton.disabled = true;
    try {
      session = await api(`${base}/stop`, { method: "POST" });
      renderSession();
      say(null);
    } catch (error) {
      say(error);
    }
  });
  resumeButton.addEventListener("click", async () => {
    const text = messageBox.value.trim();
    if (!text) {
      say(new Error("Write the message to resume with in the box below."));
      messageBox.focus();
      return;
    }
    try {
      await sendText(`${base}/resume`, { prompt: text }, text);
    } catch (error) {
      say(error);
    }
  });

  setView(
    h("div", { class: "row" }, h("a", { href: "#/sessions" }, "← Sessions")),
    h("div", { class: "row" }, title, statusBadge, interruptButton, stopButton, resumeButton),
    notice,
    h(
      "div",
      { class: "detail" },
      h("section", { class: "panel", "aria-label": "Session" }, h("div", { class: "row" }, tabs, h("span", { class: "grow" }), connection),
        panes.transcript, panes.diff, panes.files),
      h(
        "aside",
        {},
        h("section", { class: "panel", "aria-label": "Usage" }, h("h2", {}, "Usage"), usage),
        h("section", { class: "panel", "aria-label": "Metadata" }, h("h2", {}, "Metadata"), meta),
      ),
    ),
  );
  showTab("transcript");

  (async () => {
    try {
      await refreshSession();
      await refreshPrompts();
      await refreshPermissions();
    } catch (error) {
      say(error);
      if (error instanceof ApiError && error.status === 404) return;
    }
    connect();
  })();
  const stopPolling = every(DETAIL_POLL_MS, async () => {
    if (session) {
      await refreshSession();
      if (permissionBoxes.size) await refreshPermissions();
    }
  });

  return () => {
    disposed = true;
    stopPolling();
    clearTimeout(reconnectTimer);
    if (socket) socket.close();
  };
}

// -- diff
async function loadDiff(pane, base) {
  pane.replaceChildren(h("p", { class: "muted" }, "Loading the diff…"));
  let diff;
  try {
    diff = await api(`${base}/diff`);
  } catch (error) {
    pane.replaceChildren(errorBanner(error));
    return;
  }
  const patches = splitPatch(diff.diff || "");
  const summary = h(
    "p",
    { testid: "diff-summary" },
    `${diff.files.length} file${diff.files.length === 1 ? "" : "s"} changed, `,
    h("span", { class: "add-count" }, `+${diff.additions}`),
    " ",
    h("span", { class: "del-count" }, `−${diff.deletions}`),
    h("span", { class: "muted" }, ` against ${String(diff.base_commit).slice(0, 10)}`,
      diff.includes_uncommitted ? " (uncommitted changes included)" : ""),
  );
  const rows = diff.files.map((file) =>
    h(
      "tr",
      { testid: "diff-file", "data-path": file.path },
      h("td", { class: "mono" }, h("a", { href: "#", onclick: (e) => {
        e.preventDefault();
        const target = pane.querySelector(`[data-patch-path="${CSS.escape(file.path)}"]`);
        if (target) {
          target.open = true;
          target.scrollIntoView({ block: "start" });
        }
      } }, file.old_path ? `${file.old_path} → ${file.path}` : file.path)),
      h("td", {}, file.status),
      h("td", { class: "num add", testid: "diff-additions" }, file.binary ? "bin" : `+${file.additions}`),
      h("td", { class: "num del", testid: "diff-deletions" }, file.binary ? "" : `−${file.deletions}`),
    ),
  );
  const table = h("table", { class: "diff-files", testid: "diff-files" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "File"), h("th", { scope: "col" }, "Change"),
      h("th", { class: "num", scope: "col" }, "Added"), h("th", { class: "num", scope: "col" }, "Removed"))),
    h("tbody", {}, rows));
  const sections = patches.map(({ path, lines }) =>
    h("details", { open: true, "data-patch-path": path, testid: "diff-patch" },
      h("summary", { class: "mono" }, path),
      h("div", { class: "patch mono" }, lines.map((line) => h("span", { class: lineClass(line) }, line || " ")))),
  );
  pane.replaceChildren(
    summary,
    diff.files.length ? table : h("p", { class: "muted", testid: "diff-empty" }, "No changes."),
    diff.truncated ? h("p", { class: "error-text" }, "The diff is too large and was cut.") : null,
    ...sections,
  );
}

function splitPatch(text) {
  const files = [];
  let current = null;
  for (const line of text.split("\n")) {
    if (line.startsWith("diff --git ")) {
      const match = / b\/(.*)$/.exec(line);
      current = { path: match ? match[1] : line, lines: [] };
      files.push(current);
    }
    if (current) current.lines.push(line);
  }
  return files;
}

function lineClass(line) {
  if (line.startsWith("+++") || line.startsWith("---") || line.startsWith("diff --git")) return "l-file";
  if (line.startsWith("+")) return "l-add";
  if (line.startsWith("-")) return "l-del";
  if (line.startsWith("@@")) return "l-hunk";
  return "";
}

// -- files
async function loadFiles(pane, base) {
  const viewer = h("pre", { testid: "file-viewer", "aria-label": "File content" });
  const viewerTitle = h("div", { class: "mono muted", testid: "file-viewer-path" }, "Choose a file.");
  const tree = h("div", { class: "tree", testid: "file-tree" });
  pane.replaceChildren(h("div", { class: "files" }, tree, h("div", { class: "viewer" }, viewerTitle, viewer)));

  async function openFile(path, button) {
    for (const b of tree.querySelectorAll("button.selected")) b.classList.remove("selected");
    button.classList.add("selected");
    viewerTitle.textContent = path;
    viewer.textContent = "Loading…";
    try {
      const file = await api(`${base}/files`, { params: { path } });
      if (file.type === "symlink") viewer.textContent = `symlink → ${file.target}`;
      else if (file.binary) viewer.textContent = `(binary file, ${formatBytes(file.size)})`;
      else viewer.textContent = file.content + (file.truncated ? "\n… (cut at 1 MB)" : "");
    } catch (error) {
      viewer.textContent = error.message;
    }
  }

  async function listInto(container, path) {
    let listing;
    try {
      listing = await api(`${base}/files`, { params: { path } });
    } catch (error) {
      container.replaceChildren(errorBanner(error));
      return;
    }
    const entries = [...(listing.entries || [])].sort(
      (a, b) => (a.type === "dir" ? 0 : 1) - (b.type === "dir" ? 0 : 1) || a.name.localeCompare(b.name),
    );
    const list = h("ul", {});
    for (const entry of entries) {
      const full = path ? `${path}/${entry.name}` : entry.name;
      const item = h("li", {});
      const button = h(
        "button",
        { type: "button", testid: "file-entry", "data-path": full, "data-type": entry.type },
        entry.type === "dir" ? `📁 ${entry.name}` : entry.name,
      );
      if (entry.type === "dir") {
        const children = h("div", {});
        let open = false;
        button.setAttribute("aria-expanded", "false");
        button.addEventListener("click", async () => {
          open = !open;
          button.setAttribute("aria-expanded", String(open));
          if (open) await listInto(children, full);
          else children.replaceChildren();
        });
        item.append(button, children);
      } else {
        button.addEventListener("click", () => openFile(full, button));
        item.append(button);
      }
      list.append(item);
    }
    if (!entries.length) list.append(h("li", { class: "muted" }, "(empty)"));
    container.replaceChildren(list);
  }

  await listInto(tree, "");
}

// ---- system status -------------------------------------------------------------------------------

function card(label, value, testid, sub) {
  return h("div", { class: "card" }, h("div", { class: "label" }, label),
    h("div", { class: "value", testid }, value), sub ? h("div", { class: "sub" }, sub) : null);
}

function statusView() {
  const content = h("div", { testid: "status-content" }, h("p", { class: "muted" }, "Loading…"));
  async function refresh() {
    let s;
    try {
      s = await api(`${API}/status`);
    } catch (error) {
      content.replaceChildren(errorBanner(error));
      return;
    }
    const db = s.database || {};
    const sessions = s.sessions || {};
    const queue = s.queue || {};
    const worktrees = s.worktrees || {};
    content.replaceChildren(
      h("h2", {}, "Server"),
      h("div", { class: "cards" },
        card("Version", s.version, "status-version"),
        card("Uptime", formatDuration(s.uptime_s), "status-uptime"),
        card("Runtime", s.runtime, "status-runtime"),
        card("Database", db.ok ? "ok" : "down", "status-database",
          `${db.backend || ""}${db.latency_ms !== undefined && db.latency_ms !== null ? `, ${Number(db.latency_ms).toFixed(1)} ms` : ""}`),
      ),
      h("h2", {}, "Sessions"),
      h("div", { class: "cards" },
        ["active", "running", "provisioning", "queued", "idle", "stopped", "failed", "total"].map((k) =>
          card(k[0].toUpperCase() + k.slice(1), formatNumber(sessions[k]), `status-sessions-${k}`))),
      h("h2", {}, "Queue"),
      h("div", { class: "cards" },
        card("Queued runs", formatNumber(queue.queued_runs), "status-queue-queued"),
        card("Running runs", formatNumber(queue.running_runs), "status-queue-running"),
        card("Max concurrent", formatNumber(queue.max_concurrent), "status-queue-max")),
      h("h2", {}, "Worktrees"),
      h("div", { class: "cards" },
        card("Worktrees", formatNumber(worktrees.count), "status-worktrees-count"),
        card("Disk use", formatBytes(worktrees.disk_bytes), "status-worktrees-disk")),
    );
    content.dataset.loaded = "true";
  }
  setView(h("h1", {}, "System status"), content);
  return every(STATUS_POLL_MS, refresh);
}

// ---- analytics --------------------------------------------------------------------------------------

const RANGES = {
  "24h": { label: "Last 24 hours", seconds: 86400, bucket: "hour" },
  "7d": { label: "Last 7 days", seconds: 7 * 86400, bucket: "day" },
  "30d": { label: "Last 30 days", seconds: 30 * 86400, bucket: "day" },
};

function analyticsView() {
  const range = h("select", { id: "analytics-range", testid: "analytics-range" },
    Object.entries(RANGES).map(([key, r]) => h("option", { value: key }, r.label)));
  const content = h("div", { testid: "analytics-content" }, h("p", { class: "muted" }, "Loading…"));

  async function refresh() {
    const r = RANGES[range.value];
    const until = new Date();
    const since = new Date(until.getTime() - r.seconds * 1000);
    let data;
    try {
      // In the browser's offset: the server makes whole local hours and days of it.
      data = await api(`${API}/analytics`, {
        params: { since: localIso(since), until: localIso(until), bucket: r.bucket },
      });
    } catch (error) {
      content.replaceChildren(errorBanner(error));
      return;
    }
    renderAnalytics(content, data);
  }
  range.addEventListener("change", refresh);
  setView(
    h("div", { class: "row" }, h("h1", { class: "grow" }, "Analytics"),
      h("label", { for: "analytics-range" }, "Range ", range)),
    content,
  );
  refresh();
  return null;
}

function localIso(date) {
  const pad = (n) => String(Math.trunc(Math.abs(n))).padStart(2, "0");
  const offset = -date.getTimezoneOffset();
  const sign = offset >= 0 ? "+" : "-";
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}` +
    `T${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}` +
    `${sign}${pad(offset / 60)}:${pad(offset % 60)}`;
}

function renderAnalytics(content, data) {
  const t = data.totals || {};
  const series = data.series || [];
  const hourly = data.bucket === "hour";
  const label = (start) => {
    const d = new Date(start);
    return hourly ? `${String(d.getHours()).padStart(2, "0")}h` : `${d.getMonth() + 1}/${d.getDate()}`;
  };
  const profiles = data.profiles || [];
  content.replaceChildren(
    data.truncated ? h("p", { class: "error-text", testid: "analytics-truncated" },
      "More runs than one answer holds matched: the oldest are left out. Choose a shorter range.") : "",
    h("div", { class: "cards" },
      card("Sessions", formatNumber(t.sessions), "analytics-sessions"),
      card("Runs", formatNumber(t.runs), "analytics-runs", `${formatNumber(t.succeeded)} succeeded, ${formatNumber(t.failed)} failed`),
      card("Error rate", `${(Number(t.error_rate || 0) * 100).toFixed(1)}%`, "analytics-error-rate", `${formatNumber(t.errors)} errors`),
      card("Avg session", formatDuration(t.average_session_seconds), "analytics-avg-session", `avg run ${formatDuration(t.average_run_seconds)}`),
      card("Tokens", formatNumber(Number(t.input_tokens || 0) + Number(t.output_tokens || 0)), "analytics-tokens",
        `${formatNumber(t.input_tokens)} in, ${formatNumber(t.output_tokens)} out`),
      card("Cost", formatCost(t.cost_usd), "analytics-cost"),
    ),
    h("div", { class: "charts" },
      chartPanel("Runs", "chart-runs", barChart(series.map((s) => ({
        label: label(s.start),
        values: [Number(s.succeeded || 0), Number(s.errors || 0)],
      })), ["succeeded", "errors"]), [["Succeeded", "var(--accent)"], ["Errors", "var(--bad)"]]),
      chartPanel("Token use", "chart-tokens", lineChart(series.map((s) => label(s.start)), [
        series.map((s) => Number(s.input_tokens || 0)),
        series.map((s) => Number(s.output_tokens || 0)),
      ]), [["Input", "var(--accent)"], ["Output", "var(--ok)"]]),
      chartPanel("Error rate", "chart-errors", lineChart(series.map((s) => label(s.start)), [
        series.map((s) => Number(s.error_rate || 0) * 100),
      ], "%")),
      chartPanel("Agent utilization by profile", "chart-utilization", horizontalBars(profiles.map((p) => ({
        label: p.profile,
        value: Number(p.utilization || 0) * 100,
        note: `${formatNumber(p.runs)} runs, ${formatDuration(p.busy_seconds)} busy, ${(Number(p.error_rate || 0) * 100).toFixed(0)}% errors`,
      })), "%")),
      chartPanel("Utilization over time", "chart-utilization-time", lineChart(series.map((s) => label(s.start)), [
        series.map((s) => Number(s.utilization || 0) * 100),
      ], "%")),
    ),
  );
  content.dataset.loaded = "true";
}

function chartPanel(title, testid, chart, legend) {
  return h("section", { class: "panel chart", testid, "aria-label": title },
    h("h2", {}, title), chart,
    legend ? h("div", { class: "legend" }, legend.map(([name, color]) =>
      h("span", {}, h("span", { class: "swatch", style: `background:${color}` }), name))) : null);
}

const CHART_W = 460;
const CHART_H = 200;
const PAD = { left: 44, right: 10, top: 10, bottom: 24 };

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function axes(max, unit = "") {
  const group = svg("g", {});
  const innerH = CHART_H - PAD.top - PAD.bottom;
  for (let i = 0; i <= 4; i += 1) {
    const y = PAD.top + innerH - (innerH * i) / 4;
    const value = (max * i) / 4;
    group.append(
      svg("line", { class: "axis", x1: PAD.left, x2: CHART_W - PAD.right, y1: y, y2: y }),
      svg("text", { x: PAD.left - 4, y: y + 3, "text-anchor": "end" }, `${compact(value)}${unit}`),
    );
  }
  return group;
}

function compact(value) {
  if (value >= 1e6) return `${(value / 1e6).toFixed(1)}M`;
  if (value >= 1e3) return `${(value / 1e3).toFixed(1)}k`;
  if (Number.isInteger(value)) return String(value);
  return String(Number(value.toPrecision(value < 1 ? 2 : 3)));
}

function xLabels(labels, xOf) {
  const group = svg("g", {});
  const every = Math.max(1, Math.ceil(labels.length / 8));
  labels.forEach((text, i) => {
    if (i % every === 0) group.append(svg("text", { x: xOf(i), y: CHART_H - 8, "text-anchor": "middle" }, text));
  });
  return group;
}

/** Stacked bars, one per bucket. */
function barChart(buckets, names) {
  const root = svg("svg", { viewBox: `0 0 ${CHART_W} ${CHART_H}`, role: "img", "aria-label": "bar chart" });
  const max = niceMax(Math.max(0, ...buckets.map((b) => b.values.reduce((a, v) => a + v, 0))));
  const innerW = CHART_W - PAD.left - PAD.right;
  const innerH = CHART_H - PAD.top - PAD.bottom;
  const slot = innerW / Math.max(1, buckets.length);
  const width = Math.max(1, slot * 0.7);
  root.append(axes(max));
  buckets.forEach((bucket, i) => {
    let y = PAD.top + innerH;
    bucket.values.forEach((value, k) => {
      if (value <= 0) return;
      const height = (value / max) * innerH;
      y -= height;
      root.append(svg("rect", {
        class: k === 0 ? "bar" : "bar bad",
        x: PAD.left + i * slot + (slot - width) / 2,
        y,
        width,
        height,
        "data-value": value,
      }, svg("title", {}, `${bucket.label}: ${value} ${names[k]}`)));
    });
  });
  root.append(xLabels(buckets.map((b) => b.label), (i) => PAD.left + i * slot + slot / 2));
  return root;
}

/** One line (with a point per bucket) for each series. */
function lineChart(labels, seriesList, unit = "") {
  const root = svg("svg", { viewBox: `0 0 ${CHART_W} ${CHART_H}`, role: "img", "aria-label": "line chart" });
  const max = niceMax(Math.max(0, ...seriesList.flat()));
  const innerW = CHART_W - PAD.left - PAD.right;
  const innerH = CHART_H - PAD.top - PAD.bottom;
  const xOf = (i) => PAD.left + (labels.length <= 1 ? innerW / 2 : (innerW * i) / (labels.length - 1));
  const yOf = (v) => PAD.top + innerH - (v / max) * innerH;
  root.append(axes(max, unit));
  seriesList.forEach((values, k) => {
    const points = values.map((v, i) => `${xOf(i).toFixed(1)},${yOf(v).toFixed(1)}`).join(" ");
    if (values.length > 1) root.append(svg("polyline", { class: `line s${k}`, points }));
    values.forEach((v, i) => root.append(svg("circle", {
      class: `point s${k}`, cx: xOf(i), cy: yOf(v), r: 2.5, "data-value": v,
    }, svg("title", {}, `${labels[i]}: ${compact(v)}${unit}`))));
  });
  root.append(xLabels(labels, xOf));
  return root;
}

/** A bar per item, left to right, e.g. utilization per profile. */
function horizontalBars(items, unit = "") {
  const rowH = 26;
  const height = Math.max(1, items.length) * rowH + 10;
  const root = svg("svg", { viewBox: `0 0 ${CHART_W} ${height}`, role: "img", "aria-label": "bar chart" });
  const max = niceMax(Math.max(0, ...items.map((it) => it.value)));
  const left = 110;
  const innerW = CHART_W - left - 60;
  items.forEach((item, i) => {
    const y = 5 + i * rowH;
    root.append(
      svg("text", { x: left - 6, y: y + 15, "text-anchor": "end" }, item.label),
      svg("rect", { class: "bar", x: left, y: y + 4, height: rowH - 10, width: Math.max(1, (item.value / max) * innerW), "data-value": item.value },
        svg("title", {}, `${item.label}: ${item.value.toFixed(1)}${unit}; ${item.note || ""}`)),
      svg("text", { x: left + Math.max(1, (item.value / max) * innerW) + 4, y: y + 15 }, `${item.value.toFixed(1)}${unit}`),
    );
  });
  if (!items.length) root.append(svg("text", { x: CHART_W / 2, y: 20, "text-anchor": "middle" }, "No runs in this range."));
  return root;
}

// ---- start ------------------------------------------------------------------------------------------

ownerInput.addEventListener("change", () => {
  localStorage.setItem(OWNER_KEY, ownerInput.value.trim());
  route();
});
signOutButton.addEventListener("click", signOut);
window.addEventListener("hashchange", route);

(async () => {
  try {
    await loadDashboardSession();
  } catch (error) {
    setView(errorBanner(error));
    return;
  }
  if (!location.hash) location.hash = "#/sessions";
  route();
})();
