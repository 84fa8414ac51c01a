// The conversation list: the web conversations (newest activity first), the archived ones,
// and the owner's Matrix rooms (read-only). Titles are model or person text: always set as
// textContent, never parsed. app.js owns the socket; this module draws and reports clicks.

const $ = (id) => document.getElementById(id);
const ui = {
  sidebar: $("sidebar"),
  toggle: $("toggle-sidebar"),
  close: $("close-sidebar"),
  list: $("conversation-list"),
  archived: $("archived-list"),
  archivedSection: $("archived-section"),
  rooms: $("room-list"),
  roomsSection: $("rooms-section"),
};

export const CONVERSATION_RE = /^#\/c\/(web_[0-9a-f]{16,64})$/;
const items = new Map(); // thread id -> item from the server
let current = null; // the thread this tab shows
let handlers = { open: () => {}, rename: () => {}, archive: () => {}, remove: () => {}, room: () => {} };
// For tests and benchmarks: how long the last whole list took to draw, in ms.
export const listStats = { drawMs: 0, drawn: 0 };
globalThis.ganglionList = listStats;

export function conversationHref(threadId) {
  return `#/c/${threadId}`;
}

// Formatters made once: made per call, they cost most of a long list's drawing.
const TIME = new Intl.DateTimeFormat([], { hour: "2-digit", minute: "2-digit" });
const DAY = new Intl.DateTimeFormat([], { month: "short", day: "numeric" });

function when(seconds) {
  const d = new Date(seconds * 1000);
  return (d.toDateString() === new Date().toDateString() ? TIME : DAY).format(d);
}

function actionButton(label, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "link";
  b.textContent = label;
  b.dataset.action = action;
  return b;
}

// An item's Rename / Archive / Delete: drawn for the current one, the archived ones, and
// the one the pointer or the focus reaches (a thousand rows of buttons slowed the list).
function addActions(li) {
  if (li.querySelector(".conv-actions")) return;
  const item = items.get(li.dataset.thread);
  if (!item) return;
  const actions = document.createElement("div");
  actions.className = "conv-actions";
  actions.append(
    actionButton("Rename", "rename"),
    actionButton(item.archived ? "Unarchive" : "Archive", "archive"),
    actionButton("Delete", "delete"),
  );
  li.append(actions);
}

function onListClick(e) {
  const li = e.target.closest("li[data-thread]");
  if (!li) return;
  const tid = li.dataset.thread;
  const item = items.get(tid);
  const action = e.target.closest("button[data-action]")?.dataset.action;
  if (action === "rename") handlers.rename(tid, item?.title || "");
  else if (action === "archive") handlers.archive(tid, !item?.archived);
  else if (action === "delete") handlers.remove(tid);
  else if (e.target.closest("a")) {
    closeDrawer();
    handlers.open(tid);
  }
}

function onListReach(e) {
  const li = e.target.closest?.("li[data-thread]");
  if (li) addActions(li);
}

function row(item) {
  const li = document.createElement("li");
  li.className = "conv";
  li.dataset.thread = item.thread_id;
  const a = document.createElement("a");
  a.href = conversationHref(item.thread_id);
  a.className = "conv-open";
  const title = document.createElement("span");
  title.className = "conv-title";
  title.textContent = item.title || "New conversation"; // text, never HTML
  title.title = item.title;
  const time = document.createElement("time");
  time.className = "conv-time";
  time.textContent = when(item.last_active);
  a.append(title, time);
  li.append(a);
  if (item.thread_id === current) li.setAttribute("aria-current", "true");
  if (item.thread_id === current || item.archived) addActions(li);
  return li;
}

function byActivity(a, b) {
  return b.last_active - a.last_active;
}

function draw() {
  const start = performance.now();
  const live = document.createDocumentFragment();
  const archived = document.createDocumentFragment();
  let archivedCount = 0;
  for (const item of [...items.values()].sort(byActivity)) {
    if (item.archived) {
      archived.append(row(item));
      archivedCount += 1;
    } else {
      live.append(row(item));
    }
  }
  ui.list.replaceChildren(live);
  ui.archived.replaceChildren(archived);
  ui.archivedSection.hidden = archivedCount === 0;
  listStats.drawMs = performance.now() - start;
  listStats.drawn += 1;
}

export function initSidebar(h) {
  handlers = h;
  for (const list of [ui.list, ui.archived]) {
    list.addEventListener("click", onListClick);
    list.addEventListener("pointerover", onListReach);
    list.addEventListener("focusin", onListReach);
  }
  ui.toggle.addEventListener("click", () => {
    const open = !ui.sidebar.classList.contains("open");
    ui.sidebar.classList.toggle("open", open);
    ui.toggle.setAttribute("aria-expanded", String(open));
    if (open) ui.sidebar.querySelector("a, button")?.focus();
  });
  ui.close.addEventListener("click", closeDrawer);
}

function closeDrawer() {
  ui.sidebar.classList.remove("open");
  ui.toggle.setAttribute("aria-expanded", "false");
}

// The whole list, as the server sent it (at each connection).
export function showList(frame) {
  items.clear();
  for (const item of frame.items) items.set(item.thread_id, item);
  draw();
  const rooms = document.createDocumentFragment();
  for (const r of frame.rooms) {
    const li = document.createElement("li");
    li.className = "conv";
    const b = actionButton(r.thread_id, "room");
    b.addEventListener("click", () => {
      closeDrawer();
      handlers.room(r.thread_id);
    });
    b.className = "conv-open room";
    li.append(b);
    rooms.append(li);
  }
  ui.rooms.replaceChildren(rooms);
  ui.roomsSection.hidden = frame.rooms.length === 0;
}

export function upsert(item) {
  items.set(item.thread_id, item);
  draw();
}

export function forget(threadId) {
  items.delete(threadId);
  draw();
}

// A message went out in this conversation: it moves to the top (no whole redraw).
export function touched(threadId) {
  const item = items.get(threadId);
  if (!item) return;
  item.last_active = Date.now() / 1000;
  const li = ui.list.querySelector(`li[data-thread="${CSS.escape(threadId)}"]`);
  if (li) {
    li.querySelector("time").textContent = when(item.last_active);
    ui.list.prepend(li);
  }
}

export function titleOf(threadId) {
  return items.get(threadId)?.title || "this conversation";
}

export function setCurrent(threadId) {
  current = threadId;
  for (const li of ui.sidebar.querySelectorAll("li[aria-current]")) li.removeAttribute("aria-current");
  const li = ui.sidebar.querySelector(`li[data-thread="${CSS.escape(threadId)}"]`);
  if (li) {
    li.setAttribute("aria-current", "true");
    addActions(li);
  }
}
