// Ganglion's chat page: one WebSocket per tab, a sessionStorage outbox, server-rendered HTML only.
// The connection and the outbox live here; view.js draws what they decide.
import {
  ui, setStatus, scrollDown, addMessage, userBubble, addUser, setNote, markFailed, addNotice,
  appendDelta, resetStream, dropStream, clearView, showLogin, hideLogin, actions, setTurn,
  batch, markCancelled, noteUnsent, showOffline,
} from "./view.js";
import { initControls } from "./controls.js";
import { StoreRetry } from "./retry.js";
import { CONVERSATION_RE, touched, setCurrent } from "./sidebar.js";
import {
  TOKEN_KEY, randomHex, newThread, loadThread, showInAddress, loadOutbox, saveOutbox,
  takeTokenFromFragment,
} from "./local.js";
import { initRedo, redoFrame } from "./edit.js";
import { initConversations, conversationFrame, roomShown, leaveRoom, roomAfterReady, revealTarget } from "./conversations.js";
import { initAttach, outboxFrame, acked, forSend, sent } from "./attach.js";
import { initRecord } from "./record.js";

const BUSY = new Set(["thinking", "summarising", "streaming", "tool", "approval"]);
// What the status line says for a turn state (any other busy state reads "thinking").
const STATUS_TEXT = {
  idle: "ready", streaming: "streaming", summarising: "summarising earlier messages",
  approval: "waiting for your approval",
};
const CLOSE_UNAUTHORIZED = 4401;
const CLOSE_BAD_THREAD = 4400;
const CLOSE_THROTTLED = 4429; // too many failed logins from this address: wait, then retry
const BACKOFF_FIRST = 250;
const BACKOFF_MAX = 5000;

let token = null;
let threadId = null;
let ws = null;
let generation = 0; // events of an older socket are ignored
let ready = false;
let backoff = BACKOFF_FIRST;
let reconnectTimer = null;
let retryAfter = 1; // seconds to wait, as the server's last "throttled" refusal said
let maxBytes = 64000;
let turnState = "idle";
let failure = null; // what went wrong last (shown as the error state until the next send)
const store = new StoreRetry(loadOutbox, sendEntry, () => ready);

// -- conversations ------------------------------------------------------------------------

// Another conversation, in this tab: the socket is opened again on it.
function openThread(tid) {
  threadId = tid;
  showInAddress(tid);
  leaveRoom();
  clearView();
  forgetFailures();
  turnState = "idle";
  if (token) reconnectNow();
}

// -- state --------------------------------------------------------------------------------

// Connected: the turn's state, or "error" while something failed (a turn, a refused or
// unstored message) and nothing newer happened. Not connected: set by connect/onclose.
function refreshStatus() {
  if (!ready) return;
  if (store.waiting() || (failure && !BUSY.has(turnState))) setStatus("error");
  else if (turnState in STATUS_TEXT) setStatus(STATUS_TEXT[turnState], turnState === "idle" ? "ready" : turnState);
  else setStatus("thinking");
  ui.status.title = store.waiting() ? "A message is not stored yet; retrying" : failure || "";
}

function fail(text) {
  failure = text;
  refreshStatus();
}

function setTurnState(state) {
  turnState = state;
  if (state === "thinking") failure = null; // a new turn began
  ui.stop.disabled = !(ready && BUSY.has(state));
  ui.cancelQueued.disabled = ui.stop.disabled;
  ui.log.setAttribute("aria-busy", state === "streaming" ? "true" : "false");
  setTurn(state);
  refreshStatus();
}

// -- connection ---------------------------------------------------------------------------

function sendFrame(frame) {
  if (!frame || !ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(frame));
  return true;
}

function sendEntry(e) { return sendFrame(outboxFrame(e)); } // once its files are uploaded

function connect() {
  clearTimeout(reconnectTimer);
  if (!token) {
    showLogin("");
    return;
  }
  const gen = ++generation;
  ready = false;
  setStatus("connecting");
  noteUnsent();
  ui.stop.disabled = true;
  ui.cancelQueued.disabled = true;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const sock = new WebSocket(`${scheme}//${location.host}/ws`);
  ws = sock;
  sock.onopen = () => {
    if (gen !== generation) return;
    sock.send(JSON.stringify({ type: "hello", token, thread_id: threadId }));
  };
  sock.onmessage = (ev) => {
    if (gen !== generation) return;
    let frame;
    try {
      frame = JSON.parse(ev.data);
    } catch {
      return;
    }
    handle(frame);
  };
  sock.onclose = (ev) => {
    if (gen !== generation) return;
    ws = null;
    ready = false;
    ui.stop.disabled = true;
    if (ev.code === CLOSE_UNAUTHORIZED) {
      token = null;
      localStorage.removeItem(TOKEN_KEY);
      showLogin("That access token was refused. Paste the current one or open the login link.");
      return;
    }
    if (ev.code === CLOSE_THROTTLED) {
      waitThrottled(retryAfter);
      return;
    }
    if (ev.code === CLOSE_BAD_THREAD) {
      threadId = newThread();
      clearView();
    } else {
      showOffline(true);
    }
    setStatus("connecting");
    reconnectTimer = setTimeout(connect, backoff);
    backoff = Math.min(backoff * 2, BACKOFF_MAX);
  };
}

// The server turns away failed logins from this address for a while: say so with a
// countdown (not "connecting", which would look like a dead server), then try again.
function waitThrottled(seconds) {
  let left = Math.max(1, Math.ceil(seconds));
  const tick = () => {
    if (left <= 0) {
      connect();
      return;
    }
    setStatus(`too many failed logins, retry in ${left} s`, "throttled");
    left -= 1;
    reconnectTimer = setTimeout(tick, 1000);
  };
  tick();
}

function reconnectNow() {
  generation++; // the old socket's close event is ignored
  if (ws) ws.close(1000);
  ws = null;
  backoff = BACKOFF_FIRST;
  connect();
}

function handle(f) {
  if (conversationFrame(f)) return; // the list, a room, or what waits while a room is shown
  if (redoFrame(f)) return; // regenerate and edit: their answers, what they replaced
  switch (f.type) {
    case "ready":
      onReady(f);
      break;
    case "ack": {
      acked(f.id); // its kept files are no longer needed
      saveOutbox(loadOutbox().filter((e) => e.id !== f.id));
      const el = userBubble(f.id);
      if (el) {
        el.dataset.status = "sent";
        setNote(el, "");
      }
      store.stored(f.id);
      refreshStatus();
      break;
    }
    case "pending":
      addUser(f.text, f.id, "sent", f.attachments);
      break;
    case "message":
      addMessage(f);
      break;
    case "cancelled":
      for (const id of f.ids) markCancelled(id);
      break;
    case "delta":
      appendDelta(f.text);
      break;
    case "reset":
      resetStream();
      break;
    case "state":
      if (f.state === "idle" || f.state === "error") dropStream();
      if (f.state === "error") fail("The last answer failed; the message above says why.");
      else setTurnState(f.state);
      break;
    case "error":
      if (f.code === "unauthorized" || f.code === "bad_thread_id" || f.code === "throttled") {
        // The socket closes next; its close code says what to do (log in, a new thread, wait).
        if (f.code === "throttled" && f.retry_after > 0) retryAfter = f.retry_after;
      } else if (f.id && f.code === "not_stored") {
        // The server's disk refused it: kept in the outbox and sent again until stored.
        store.refused(f.id);
        markFailed(f.id, "retrying", `${f.message} Not sent yet: trying again by itself.`);
        refreshStatus();
      } else if (f.id) {
        // Refused for good (too large, malformed): resending would not help.
        acked(f.id);
        saveOutbox(loadOutbox().filter((e) => e.id !== f.id));
        store.drop(f.id);
        markFailed(f.id, "failed", f.message);
        fail(f.message);
      } else {
        addNotice(f.message);
        fail(f.message);
      }
      break;
    default:
      break;
  }
}

function forgetFailures() {
  failure = null;
  store.clear({ forget: true });
}

function onReady(f) {
  ready = true;
  showOffline(false);
  backoff = BACKOFF_FIRST;
  threadId = f.thread_id;
  showInAddress(threadId);
  setCurrent(threadId);
  sendFrame({ type: "list" });
  if (roomAfterReady()) return;
  if (f.max_message_bytes) maxBytes = f.max_message_bytes;
  clearView();
  // The outbox is sent again below; what the server still cannot store comes back.
  store.clear();
  const outbox = loadOutbox().filter((e) => e.thread === threadId);
  saveOutbox(outbox);
  batch(() => {
    for (const m of f.transcript) addMessage(m);
    if (f.pending_hidden > 0) {
      addNotice(`${f.pending_hidden} earlier queued messages are not shown here; they are `
        + "answered first, in order (Cancel queued drops them all).");
    }
    for (const p of f.pending) addUser(p.text, p.id, "sent", p.attachments);
    for (const e of outbox) addUser(e.text, e.id, "sending", e.attachments);
  });
  if (f.streaming !== null && f.streaming !== undefined) appendDelta(f.streaming);
  setTurnState(f.state);
  if (!revealTarget(threadId)) scrollDown(); // a search hit's message, or the latest
  // Unacknowledged messages go again with the same id: the server keeps each id once.
  for (const e of outbox) sendEntry(e);
}

// -- input --------------------------------------------------------------------------------

function sendCurrent() {
  const files = forSend(); // null while a refused file is attached
  if (files && sendText(ui.message.value, files)) { ui.message.value = ""; sent(); }
}

// A message to the thread through the outbox (kept until the server acknowledges it).
function sendText(text, files = []) {
  if (!text.trim() && !files.length) return false;
  const size = new TextEncoder().encode(text).length;
  if (size > maxBytes) {
    const fmt = (n) => n.toLocaleString("en-US");
    const why = `Message is ${fmt(size)} bytes; the limit is ${fmt(maxBytes)}. Shorten it and send again.`;
    addNotice(why);
    fail(why);
    return false;
  }
  failure = null; // something new is under way
  refreshStatus();
  const id = randomHex(16);
  const entry = { id, text, thread: threadId, attachments: files };
  saveOutbox([...loadOutbox(), entry]);
  addUser(text, id, "sending", files);
  if (ready) sendEntry(entry);
  else noteUnsent();
  touched(threadId);
  return true;
}

actions.answerApproval = sendText;
initAttach({ sendText, send: (e) => ready && sendEntry(e), failed: (id, why) => { store.drop(id); fail(why); } });
initRecord();

ui.composer.addEventListener("submit", (e) => {
  e.preventDefault();
  sendCurrent();
});

ui.message.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    sendCurrent();
  }
});

ui.stop.addEventListener("click", () => {
  sendFrame({ type: "stop" });
});

ui.cancelQueued.addEventListener("click", () => {
  sendFrame({ type: "cancel" });
});

function startNewChat() {
  saveOutbox([]);
  openThread(newThread());
  ui.message.focus();
}

ui.newChat.addEventListener("click", startNewChat);

// Log out: the token is forgotten in this browser (a reload stays logged out).
function logOut() {
  token = null;
  localStorage.removeItem(TOKEN_KEY);
  generation++; // the socket's close event is ignored
  clearTimeout(reconnectTimer);
  if (ws) ws.close(1000);
  ws = null;
  ready = false;
  forgetFailures();
  clearView();
  showLogin("");
}

initControls({
  stop() {
    if (ui.stop.disabled) return false;
    sendFrame({ type: "stop" });
    return true;
  },
  newChat: startNewChat,
  logOut,
});

window.addEventListener("hashchange", () => {
  const m = CONVERSATION_RE.exec(location.hash);
  if (m && (m[1] !== threadId || roomShown())) openThread(m[1]);
});

initConversations({
  send: sendFrame,
  current: () => threadId,
  open: openThread,
  openNew() {
    saveOutbox([]);
    openThread(newThread());
  },
});

initRedo({ send: sendFrame, thread: () => threadId });

ui.loginForm.addEventListener("submit", (e) => {
  e.preventDefault();
  const value = ui.tokenInput.value.trim();
  if (!value) return;
  token = value;
  localStorage.setItem(TOKEN_KEY, token);
  ui.tokenInput.value = "";
  forgetFailures();
  hideLogin();
  reconnectNow();
});

window.addEventListener("online", () => {
  if (token && !ready) reconnectNow();
});

// -- start --------------------------------------------------------------------------------

takeTokenFromFragment();
token = localStorage.getItem(TOKEN_KEY);
threadId = loadThread();
if (token) {
  hideLogin();
  connect();
  ui.message.focus();
} else {
  showLogin("");
}
