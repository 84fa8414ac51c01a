// What a tab keeps in the browser: the token (localStorage), its conversation (the address,
// and sessionStorage) and its outbox of unacknowledged messages (sessionStorage).
import { CONVERSATION_RE, conversationHref } from "./sidebar.js";

export const TOKEN_KEY = "ganglion.token";
const THREAD_KEY = "ganglion.thread";
const OUTBOX_KEY = "ganglion.outbox";
const THREAD_RE = /^web_[0-9a-f]{16,64}$/;

export function randomHex(bytes) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

export function newThread() {
  const tid = "web_" + randomHex(16);
  sessionStorage.setItem(THREAD_KEY, tid);
  return tid;
}

// The address names the conversation (#/c/<thread>: bookmarkable, opens in a new tab);
// without one, this tab's last conversation, or a new one.
export function loadThread() {
  const m = CONVERSATION_RE.exec(location.hash);
  if (m) {
    sessionStorage.setItem(THREAD_KEY, m[1]);
    return m[1];
  }
  const tid = sessionStorage.getItem(THREAD_KEY);
  return tid && THREAD_RE.test(tid) ? tid : newThread();
}

export function showInAddress(threadId) {
  sessionStorage.setItem(THREAD_KEY, threadId);
  // The settings view's address stays (it names the view; the thread is this tab's).
  if (location.hash !== conversationHref(threadId) && location.hash !== "#/settings") {
    history.replaceState(null, "", location.pathname + location.search + conversationHref(threadId));
  }
}

export function loadOutbox() {
  try {
    const list = JSON.parse(sessionStorage.getItem(OUTBOX_KEY) || "[]");
    return Array.isArray(list) ? list : [];
  } catch {
    return [];
  }
}

export function saveOutbox(list) {
  sessionStorage.setItem(OUTBOX_KEY, JSON.stringify(list));
}

export function takeTokenFromFragment() {
  const m = /^#token=(.+)$/.exec(location.hash);
  if (!m) return;
  let value = m[1];
  try {
    value = decodeURIComponent(value);
  } catch {
    // keep it as it is
  }
  localStorage.setItem(TOKEN_KEY, value);
  // The fragment never reaches a server; remove it from the address bar and history too.
  history.replaceState(null, "", location.pathname + location.search);
}
