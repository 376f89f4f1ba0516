// The reference UI: plain JS against the public API only (no build step, no CDN).
// The live reply is read with fetch + a ReadableStream parser, not EventSource, because
// EventSource cannot send the Last-Event-ID resume point we choose, nor our error handling.
"use strict";

const PAGE = 50;                         // messages per page
const SESSIONS_PAGE = 20;
// `before=` a sequence number above every real one gives the newest page (keyset paging).
const NEWEST = String(Number.MAX_SAFE_INTEGER);

const $ = (id) => document.getElementById(id);

const state = {
  user: null,          // user_id of the signed-in user (from the server)
  me: null,            // their profile
  sessions: [],        // SessionSummary[] as listed, newest first
  nextCursor: null,
  current: null,       // session_id or null for a new chat
  oldestSeq: null,     // keyset anchor for "load older"
  loadedCount: 0,
  total: 0,
  streaming: null,     // AbortController of the open reply stream
};

// ---- API --------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, detail) {
    super(detail || code || `HTTP ${status}`);
    this.status = status;
    this.code = code;
  }
}

function headers(extra, method) {
  const h = { Accept: "application/json", ...extra };
  const csrf = csrfToken();
  if (csrf && method && method !== "GET") h["X-CSRF-Token"] = csrf;
  return h;
}

async function api(method, path, body, extra) {
  let response;
  try {
    response = await fetch(path, {
      method,
      headers: headers({ ...(body === undefined ? {} : { "Content-Type": "application/json" }),
                         ...extra }, method),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new ApiError(0, "network", "The server cannot be reached. Is it running?");
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!response.ok) {
    throw new ApiError(response.status, data && data.error,
                       (data && data.detail) || `${method} ${path} failed (HTTP ${response.status})`);
  }
  return data;
}

// ---- errors -----------------------------------------------------------------------------

function showError(err) {
  const message = err instanceof ApiError && err.code && err.code !== "network"
    ? `${err.message} (${err.code})` : String(err.message || err);
  $("error-text").textContent = message;
  $("error").hidden = false;
}

function clearError() { $("error").hidden = true; $("error-text").textContent = ""; }

// Runs an action from a click; any failure becomes the message at the top.
function guarded(action) {
  return async (event) => {
    if (event) event.preventDefault();
    try { await action(event); } catch (err) { showError(err); }
  };
}

// ---- account ----------------------------------------------------------------------------
// Who is signed in is the server's session cookie (httpOnly: this script never sees it);
// writes send the chat_csrf cookie's value back as X-CSRF-Token. There is no way to name
// another user: the server takes the caller from the cookie.

function csrfToken() {
  const match = document.cookie.match(/(?:^|;\s*)chat_csrf=([^;]*)/);
  return match ? decodeURIComponent(match[1]) : null;
}

async function showSignedIn(me) {
  stopStreaming();
  state.user = me ? me.user_id : null;
  state.me = me;
  $("auth").hidden = Boolean(me);
  $("app").hidden = !me;
  $("account-bar").hidden = !me;
  $("account").hidden = true;
  $("whoami").textContent = me ? (me.display_name || me.email || "") : "";
  state.current = null;
  resetChat();
  if (me) await loadSessions(true);
}

async function whoAmI() {
  try {
    return await api("GET", "/api/v1/users/me");
  } catch (err) {
    if (err.status === 401) return null;
    throw err;
  }
}

// "Sign in with …" when the server has an OpenID Connect provider.
async function showOidc() {
  const oidc = await api("GET", "/api/v1/auth/oidc");
  if (!oidc.enabled) return;
  $("oidc-link").textContent = `Sign in with ${oidc.name}`;
  $("oidc").hidden = false;
}

async function signIn(event) {
  const form = new FormData(event.target);
  const signedIn = await api("POST", "/api/v1/auth/signin",
                             { email: form.get("email"), password: form.get("password") });
  event.target.reset();
  clearError();
  const me = await whoAmI();
  await showSignedIn(me || { user_id: signedIn.user_id });
}

async function signUp(event) {
  const form = new FormData(event.target);
  const body = { display_name: form.get("display_name") || null, email: form.get("email"),
                 password: form.get("password") };
  await api("POST", "/api/v1/users", body);
  const signedIn = await api("POST", "/api/v1/auth/signin",
                             { email: body.email, password: body.password });
  event.target.reset();
  clearError();
  await showSignedIn({ user_id: signedIn.user_id, email: body.email,
                       display_name: body.display_name });
}

async function signOut() {
  await api("POST", "/api/v1/auth/signout");
  await showSignedIn(null);
}

async function signOutEverywhere() {
  await api("POST", "/api/v1/auth/signout-everywhere");
  await showSignedIn(null);
}

function toggleAccount() {
  const account = $("account");
  account.hidden = !account.hidden;
  if (!account.hidden && state.me) {
    $("account-name").value = state.me.display_name || "";
    $("account-avatar").value = state.me.avatar_url || "";
  }
}

async function saveProfile(event) {
  const form = new FormData(event.target);
  const body = { display_name: form.get("display_name") || null };
  if (form.get("avatar_url")) body.avatar_url = form.get("avatar_url");
  await api("PATCH", "/api/v1/users/me", body);
  state.me = { ...state.me, ...body };
  $("whoami").textContent = state.me.display_name || state.me.email || "";
  clearError();
}

async function changePassword(event) {
  const form = new FormData(event.target);
  await api("POST", "/api/v1/auth/password", {
    current_password: form.get("current_password"), new_password: form.get("new_password") });
  event.target.reset();
  clearError();
}

async function createToken(event) {
  const form = new FormData(event.target);
  const created = await api("POST", "/api/v1/auth/tokens", { name: form.get("name") });
  event.target.reset();
  const item = document.createElement("li");
  item.dataset.testid = "api-token";
  const value = document.createElement("code");
  value.textContent = `${created.name}: ${created.token}`;
  const revoke = document.createElement("button");
  revoke.type = "button";
  revoke.textContent = "Revoke";
  revoke.addEventListener("click", guarded(async () => {
    await api("DELETE", `/api/v1/auth/tokens/${created.token_id}`);
    item.remove();
  }));
  item.append(value, " ", revoke);
  $("tokens").append(item);
}

async function deleteAccount() {
  if (!window.confirm("Delete your account and every chat in it? This cannot be undone.")) return;
  await api("DELETE", "/api/v1/users/me");
  await showSignedIn(null);
}

// ---- sessions ---------------------------------------------------------------------------

async function loadSessions(fresh, minPosition) {
  const params = new URLSearchParams({ limit: String(SESSIONS_PAGE) });
  if (!fresh && state.nextCursor) params.set("before", state.nextCursor);
  if (minPosition) params.set("min_position", String(minPosition));
  const page = await api("GET", `/api/v1/sessions?${params}`);
  state.sessions = fresh ? page.sessions : state.sessions.concat(page.sessions);
  state.nextCursor = page.next_cursor;
  renderSessions();
}

function renderSessions() {
  const list = $("sessions");
  list.replaceChildren();
  for (const s of state.sessions) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.sessionId = s.session_id;
    button.dataset.testid = "session";
    button.setAttribute("aria-current", String(s.session_id === state.current));
    const title = document.createElement("span");
    title.className = "title";
    title.textContent = s.title || "Untitled";
    const preview = document.createElement("span");
    preview.className = "preview";
    preview.textContent = s.preview || "";
    const count = document.createElement("span");
    count.className = "count";
    count.textContent = `${s.message_count} message${s.message_count === 1 ? "" : "s"}`;
    button.append(title, preview, count);
    button.addEventListener("click", guarded(() => openSession(s.session_id)));
    item.append(button);
    list.append(item);
  }
  $("more-sessions").hidden = !state.nextCursor;
  list.dataset.loaded = "true"; // lets a test (or a user script) see the list is current
}

function currentSummary() {
  return state.sessions.find((s) => s.session_id === state.current) || null;
}

function resetChat() {
  $("messages").replaceChildren();
  $("chat-title").textContent = "New chat";
  $("rename").disabled = true;
  $("delete").disabled = true;
  $("older").hidden = true;
  state.oldestSeq = null;
  state.loadedCount = 0;
  state.total = 0;
}

async function openSession(sessionId) {
  stopStreaming();
  clearError();
  state.current = sessionId;
  renderSessions();
  resetChat();
  const summary = currentSummary();
  $("chat-title").textContent = (summary && summary.title) || "Untitled";
  $("rename").disabled = false;
  $("delete").disabled = false;
  const page = await api("GET", `/api/v1/sessions/${sessionId}/messages?limit=${PAGE}&before=${NEWEST}`);
  showPage(page, false);
  scrollToEnd();
}

async function loadOlder() {
  const page = await api(
    "GET", `/api/v1/sessions/${state.current}/messages?limit=${PAGE}&before=${state.oldestSeq}`);
  const list = $("messages");
  const before = list.scrollHeight;
  showPage(page, true);
  list.scrollTop += list.scrollHeight - before; // keep what the reader was looking at in place
}

function showPage(page, prepend) {
  const nodes = page.messages.map((m) => messageNode(m.role, m.content));
  if (prepend) $("messages").prepend(...nodes);
  else $("messages").append(...nodes);
  if (page.messages.length) state.oldestSeq = page.messages[0].seq;
  state.loadedCount += page.messages.length;
  state.total = page.total;
  $("older").hidden = state.loadedCount >= state.total || page.messages.length === 0;
}

function messageNode(role, content) {
  const item = document.createElement("li");
  item.className = role;
  item.dataset.role = role;
  item.dataset.testid = "message";
  item.textContent = content;
  return item;
}

function scrollToEnd() { const list = $("messages"); list.scrollTop = list.scrollHeight; }

async function rename() {
  const summary = currentSummary();
  const title = prompt("New title", (summary && summary.title) || "");
  if (title === null || !title.trim()) return;
  await api("PUT", `/api/v1/sessions/${state.current}/title`, { title: title.trim() });
  $("chat-title").textContent = title.trim();
  if (summary) summary.title = title.trim();
  renderSessions();
}

async function remove() {
  const summary = currentSummary();
  const name = (summary && summary.title) || "this chat";
  if (!confirm(`Delete "${name}" and all its messages? This cannot be undone.`)) return;
  stopStreaming();
  await api("DELETE", `/api/v1/sessions/${state.current}`);
  state.sessions = state.sessions.filter((s) => s.session_id !== state.current);
  state.current = null;
  resetChat();
  renderSessions();
}

function newChat() {
  stopStreaming();
  clearError();
  state.current = null;
  resetChat();
  renderSessions();
  $("text").focus();
}

// ---- chat and the live reply ------------------------------------------------------------

async function send() {
  const textarea = $("text");
  const text = textarea.value.trim();
  if (!text || state.streaming) return;
  clearError();
  $("messages").append(messageNode("user", text));
  const reply = messageNode("assistant", "");
  reply.classList.add("streaming");
  $("messages").append(reply);
  scrollToEnd();
  textarea.value = "";
  let accepted;
  try {
    accepted = await api("POST", "/api/v1/chat",
                         { text, session_id: state.current || null });
  } catch (err) {
    reply.remove();
    textarea.value = text; // nothing was stored: give the text back
    throw err;
  }
  const isNew = !state.current;
  state.current = accepted.session_id;
  $("rename").disabled = false;
  $("delete").disabled = false;
  if (isNew) $("chat-title").textContent = "Untitled";
  // min_position: the read model includes our write before the stream checks the session.
  const streamUrl = accepted.stream_url || `/api/v1/sessions/${accepted.session_id}/stream`;
  const expected = state.total + 2; // the session's count once both messages are in
  let stored = null;
  try {
    stored = await followReply(streamUrl, accepted, reply);
  } finally {
    reply.classList.remove("streaming");
    await refreshSidebar(accepted.session_id, expected, stored, accepted.position)
      .catch(showError);
  }
  if (stored) state.total = expected;
}

// The reply is stored before the read model has it: list again (briefly) until the
// session's count includes it, so the sidebar's preview and count are the new ones.
async function refreshSidebar(sessionId, expected, stored, position) {
  const minPosition = (stored && stored.position) || position;
  for (let attempt = 0; attempt < 10; attempt += 1) {
    await loadSessions(true, minPosition);
    const summary = state.sessions.find((s) => s.session_id === sessionId);
    if (!stored || (summary && summary.message_count >= expected)) return;
    await new Promise((resolve) => setTimeout(resolve, 300));
  }
}

function withParam(url, name, value) {
  return url + (url.includes("?") ? "&" : "?") + `${name}=${encodeURIComponent(value)}`;
}

// Follows the reply to our message: deltas as they are written, then the stored message
// (returned; null when the stream was stopped by us).
// A stream opened before our reply started may first replay the previous reply of the
// session; its `message` names another reply_to, so we drop it and resume after it.
async function followReply(streamUrl, accepted, bubble) {
  const controller = new AbortController();
  state.streaming = controller;
  $("stop").hidden = false;
  $("send").disabled = true;
  let lastEventId = null;
  let text = "";
  let stored = null;
  try {
    for (let attempt = 0; attempt < 5; attempt += 1) {
      const url = withParam(streamUrl, "min_position", accepted.position);
      const extra = { Accept: "text/event-stream" };
      if (lastEventId) extra["Last-Event-ID"] = lastEventId;
      const response = await fetch(url, { headers: headers(extra), signal: controller.signal });
      if (!response.ok) {
        const data = await response.json().catch(() => null);
        throw new ApiError(response.status, data && data.error,
                           (data && data.detail) || `the reply stream failed (HTTP ${response.status})`);
      }
      let finished = false;
      let foreign = false;
      for await (const event of sseEvents(response.body)) {
        if (event.id) lastEventId = event.id;
        const data = event.data ? JSON.parse(event.data) : {};
        if (event.event === "delta") {
          text += data.text || "";
          bubble.textContent = text;
          scrollToEnd();
        } else if (event.event === "message") {
          if (data.reply_to && data.reply_to !== accepted.message_id) {
            foreign = true;
          } else {
            if (typeof data.content === "string") bubble.textContent = data.content;
            stored = data;
          }
        } else if (event.event === "error") {
          bubble.classList.add("failed");
          bubble.textContent = text || "(no reply)";
          throw new ApiError(0, data.error, data.detail || "the assistant could not answer");
        } else if (event.event === "done") {
          finished = !foreign;
          break;
        }
      }
      if (finished) return stored;
      if (foreign) { text = ""; bubble.textContent = ""; continue; }
      if (!lastEventId) break; // closed before anything came: nothing to resume from
    }
    return stored;
  } catch (err) {
    if (err.name === "AbortError") return null; // we stopped it ourselves
    throw err;
  } finally {
    if (state.streaming === controller) state.streaming = null;
    $("stop").hidden = true;
    $("send").disabled = false;
  }
}

// Parses a text/event-stream body into {event, data, id} (the WHATWG rules we need:
// fields per line, events end at a blank line, ':' lines are comments such as heartbeats).
async function* sseEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let event = { event: "message", data: [], id: null };
  try {
    while (true) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let newline;
      while ((newline = buffer.search(/\r\n|\r|\n/)) >= 0) {
        // A chunk may end between the \r and \n of one line break: wait for the next one
        // rather than read a blank line that would end the event early.
        if (buffer[newline] === "\r" && newline === buffer.length - 1) break;
        const line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + (buffer.startsWith("\r\n", newline) ? 2 : 1));
        if (line === "") {
          if (event.data.length) yield { event: event.event, data: event.data.join("\n"), id: event.id };
          event = { event: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event.event = value;
        else if (field === "data") event.data.push(value);
        else if (field === "id") event.id = value;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function stopStreaming() {
  if (state.streaming) state.streaming.abort();
  state.streaming = null;
}

async function stopReply() {
  if (!state.current) return;
  // The service stores what was written so far; the stream then ends with `done`.
  await api("POST", `/api/v1/sessions/${state.current}/stop`);
}

// ---- wiring -----------------------------------------------------------------------------

function start() {
  $("error-close").addEventListener("click", clearError);
  $("signin-form").addEventListener("submit", guarded(signIn));
  $("signup-form").addEventListener("submit", guarded(signUp));
  $("sign-out").addEventListener("click", guarded(signOut));
  $("sign-out-everywhere").addEventListener("click", guarded(signOutEverywhere));
  $("account-toggle").addEventListener("click", toggleAccount);
  $("profile-form").addEventListener("submit", guarded(saveProfile));
  $("password-form").addEventListener("submit", guarded(changePassword));
  $("token-form").addEventListener("submit", guarded(createToken));
  $("delete-account").addEventListener("click", guarded(deleteAccount));
  $("new-chat").addEventListener("click", newChat);
  $("more-sessions").addEventListener("click", guarded(() => loadSessions(false)));
  $("older").addEventListener("click", guarded(loadOlder));
  $("rename").addEventListener("click", guarded(rename));
  $("delete").addEventListener("click", guarded(remove));
  $("composer").addEventListener("submit", guarded(send));
  $("stop").addEventListener("click", guarded(stopReply));
  $("text").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey) { e.preventDefault(); $("composer").requestSubmit(); }
  });
  guarded(async () => showSignedIn(await whoAmI()))();
  guarded(showOidc)();
}

start();
