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

function when(seconds) {
  const d = new Date(seconds * 1000);
  const today = new Date();
  if (d.toDateString() === today.toDateString()) {
    return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  return d.toLocaleDateString([], { month: "short", day: "numeric" });
}

function actionButton(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "link";
  b.textContent = label;
  b.addEventListener("click", onClick);
  return b;
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
  time.dateTime = new Date(item.last_active * 1000).toISOString();
  time.textContent = when(item.last_active);
  a.append(title, time);
  a.addEventListener("click", () => {
    closeDrawer();
    handlers.open(item.thread_id);
  });
  const actions = document.createElement("div");
  actions.className = "conv-actions";
  actions.append(
    actionButton("Rename", () => handlers.rename(item.thread_id, items.get(item.thread_id)?.title || "")),
    actionButton(item.archived ? "Unarchive" : "Archive",
      () => handlers.archive(item.thread_id, !item.archived)),
    actionButton("Delete", () => handlers.remove(item.thread_id)),
  );
  li.append(a, actions);
  if (item.thread_id === current) li.setAttribute("aria-current", "true");
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
    const b = actionButton(r.thread_id, () => {
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
  if (li) li.setAttribute("aria-current", "true");
}
