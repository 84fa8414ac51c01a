// What the chat page shows: the transcript, the answer streaming in, the status, the login.
// Only this module touches the page's elements; app.js decides what to show and when.
import { copyButton, decorateCode } from "./code.js";
import { forgetMedia, showAttachments } from "./media.js";

const $ = (id) => document.getElementById(id);
export const ui = {
  app: document.querySelector(".app"),
  status: $("status"),
  login: $("login"),
  loginForm: $("login-form"),
  loginMessage: $("login-message"),
  tokenInput: $("token-input"),
  log: $("log"),
  composer: $("composer"),
  message: $("message"),
  send: $("send"),
  stop: $("stop"),
  cancelQueued: $("cancel-queued"),
  newChat: $("new-chat"),
  offline: $("offline"),
  jump: $("jump"),
};
const DEFAULT_LOGIN_MESSAGE = ui.loginMessage.textContent;

let seen = new Set(); // message ids already shown
let streamEl = null; // the answer in progress

export function setStatus(text, state = text) {
  ui.status.textContent = text;
  ui.status.dataset.state = state;
}

// The connection was lost (or never made): said plainly, not only by a grey dot.
export function showOffline(lost) {
  ui.offline.hidden = !lost;
}

function nearBottom() {
  const l = ui.log;
  return l.scrollHeight - l.scrollTop - l.clientHeight < 80;
}

export function scrollDown() {
  ui.log.scrollTop = ui.log.scrollHeight;
  ui.jump.hidden = true;
}

// "Jump to latest": shown while the view is scrolled up from the end of the conversation.
function updateJump() {
  ui.jump.hidden = nearBottom();
}
ui.log.addEventListener("scroll", updateJump, { passive: true });
ui.jump.addEventListener("click", () => {
  scrollDown();
  ui.message.focus();
});

let batching = false; // while a whole transcript is drawn: no scrolling (layout) per message

export function batch(draw) {
  batching = true;
  try {
    draw();
  } finally {
    batching = false;
  }
}

function place(el, force) {
  if (batching) {
    ui.log.append(el);
    return;
  }
  const follow = force || nearBottom();
  if (streamEl && el !== streamEl) ui.log.insertBefore(el, streamEl);
  else ui.log.append(el);
  if (follow) scrollDown();
  else updateJump();
}

function bubble(role) {
  const el = document.createElement("article");
  el.className = "msg";
  el.dataset.role = role;
  const body = document.createElement("div");
  body.className = "body";
  return [el, body];
}

const STAMP = new Intl.DateTimeFormat([], { dateStyle: "medium", timeStyle: "short" });

// A message's footer: when it was written (shown on hover or focus) and a Copy button.
function footer(el, at, text) {
  const meta = document.createElement("div");
  meta.className = "meta";
  const time = document.createElement("time");
  const when = at ? new Date(at * 1000) : new Date();
  time.dateTime = when.toISOString();
  time.dataset.label = STAMP.format(when); // drawn by CSS: not part of the message's text
  time.title = time.dataset.label;
  meta.append(time);
  if (text) meta.append(copyButton("Copy message", () => text));
  el.append(meta);
}

export function addMessage(m) {
  if (m.role === "assistant") dropStream();
  if (seen.has(m.id)) return;
  seen.add(m.id);
  const [el, body] = bubble(m.role);
  el.dataset.id = String(m.id);
  body.innerHTML = m.html; // server-rendered, escaped HTML only; never raw text
  for (const a of body.querySelectorAll("a[href]")) {
    a.target = "_blank"; // never navigate the chat away
    a.rel = "noopener noreferrer";
  }
  if (m.approval) {
    // The whole command stays readable (CSS wraps it); the buttons send /approve or /deny.
    el.classList.add("approval");
    for (const old of ui.log.querySelectorAll(".msg.approval.latest")) old.classList.remove("latest");
    el.classList.add("latest");
    el.append(body, approvalChoices(m.approval));
  } else if (m.role === "tool") {
    // The call's line ("shell: ls -l", naming the tool) is the title, said once; the
    // outcome and the output below it. (It was "Tool shell: shell: ls -l", then the line
    // again in the body.) The text is set as text: the server sent it escaped, never Markdown.
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    const [call, ...rest] = (m.text || "").split("\n");
    summary.textContent = call.trim() ? call : m.name || "Tool";
    body.textContent = rest.join("\n").replace(/^\n+/, "");
    details.append(summary, body);
    el.append(details);
  } else {
    el.append(body);
  }
  if (m.role === "assistant" || m.role === "system") decorateCode(body);
  showAttachments(el, m.attachments);
  if (m.role === "assistant" || m.role === "user") footer(el, m.at, m.text);
  if (m.divider) el.classList.add("divider"); // /new: what is above left the model's context
  if (m.replaced) el.dataset.replaced = m.replaced; // regenerated or edited: edit.js collapses it
  if (m.cancelled) {
    el.dataset.status = "cancelled";
    setNote(el, CANCELLED_NOTE);
  }
  place(el, false);
}

const CANCELLED_NOTE = "Cancelled: it will not be answered.";

export function markCancelled(clientId) {
  markFailed(clientId, "cancelled", CANCELLED_NOTE);
}

// What the page does with a click on Approve or Deny (app.js sends the command).
export const actions = { answerApproval: (_command) => {} };

function approvalChoices(id) {
  const choices = document.createElement("div");
  choices.className = "choices";
  for (const [label, command] of [["Approve", "/approve"], ["Deny", "/deny"]]) {
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.className = command === "/deny" ? "secondary" : "";
    button.addEventListener("click", () => actions.answerApproval(`${command} ${id}`));
    choices.append(button);
  }
  return choices;
}

// The turn's state on the log, for what shows only in some states (the approval buttons).
export function setTurn(state) {
  ui.log.dataset.turn = state;
}

export function userBubble(clientId) {
  return ui.log.querySelector(`.msg[data-client-id="${CSS.escape(clientId)}"]`);
}

export function addUser(text, clientId, status, attachments) {
  if (userBubble(clientId)) return;
  const [el, body] = bubble("user");
  el.dataset.clientId = clientId;
  el.dataset.status = status;
  body.textContent = text;
  el.append(body);
  showAttachments(el, attachments);
  footer(el, 0, text);
  place(el, true);
}

const UNSENT_NOTE = "Not sent yet: it goes by itself once connected.";

// Not connected: every message still waiting for the server says so.
export function noteUnsent() {
  for (const el of ui.log.querySelectorAll('.msg[data-status="sending"]')) setNote(el, UNSENT_NOTE);
}

export function setNote(el, message) {
  let note = el.querySelector(".note");
  if (!message) {
    if (note) note.remove();
    return;
  }
  if (!note) {
    note = document.createElement("p");
    note.className = "note";
    el.append(note);
  }
  note.textContent = message;
}

export function markFailed(clientId, status, message) {
  const el = userBubble(clientId);
  if (!el) return;
  el.dataset.status = status;
  setNote(el, message);
}

// A notice of this page (not from the server): a message of the transcript like the others.
export function addNotice(text) {
  const [el, body] = bubble("system");
  el.classList.add("notice");
  body.textContent = text;
  el.append(body);
  place(el, true);
}

// Streaming costs time linear in the answer: deltas are buffered and written at most
// STREAM_FLUSH_MS apart, as one text node, with one look at the scroll position. Written one
// by one, each delta forced a layout of the whole growing answer (a 60 kB answer kept the
// page busy for minutes). The final message replaces it, rendered once by the server.
const STREAM_FLUSH_MS = 150;
let streamBuffer = [];
let streamTimer = null;
// For tests and benchmarks: deltas received and writes to the page while streaming.
export const stats = { deltas: 0, flushes: 0 };
globalThis.ganglionStats = stats;

function flushStream() {
  clearTimeout(streamTimer);
  streamTimer = null;
  if (!streamEl || streamBuffer.length === 0) return;
  const follow = nearBottom();
  streamEl.firstChild.append(document.createTextNode(streamBuffer.join("")));
  streamBuffer = [];
  stats.flushes += 1;
  if (follow) scrollDown();
}

export function appendDelta(text) {
  if (!streamEl) {
    const [el, body] = bubble("assistant");
    el.classList.add("streaming");
    el.append(body);
    streamEl = el;
    place(el, true);
  }
  stats.deltas += 1;
  streamBuffer.push(text); // plain text while streaming
  if (streamTimer === null) streamTimer = setTimeout(flushStream, STREAM_FLUSH_MS);
}

function dropBuffer() {
  clearTimeout(streamTimer);
  streamTimer = null;
  streamBuffer = [];
}

// "reset": the model's partial answer is void; what comes next starts it again.
export function resetStream() {
  dropBuffer();
  if (streamEl) streamEl.firstChild.replaceChildren();
}

export function dropStream() {
  dropBuffer();
  if (streamEl) streamEl.remove();
  streamEl = null;
}

export function clearView() {
  dropBuffer();
  ui.log.replaceChildren();
  forgetMedia();
  ui.jump.hidden = true;
  seen = new Set();
  streamEl = null;
}

export function showLogin(message) {
  ui.app.classList.add("logged-out");
  ui.login.hidden = false;
  ui.loginMessage.textContent = message || DEFAULT_LOGIN_MESSAGE;
  showOffline(false);
  setStatus(message ? "error" : "logged out");
  ui.stop.disabled = true;
  ui.tokenInput.focus();
}

export function hideLogin() {
  ui.app.classList.remove("logged-out");
  ui.login.hidden = true;
}
