// The conversation verbs of the page: the list's frames, rename / archive / delete (counted,
// then confirmed), and a Matrix room shown read-only. app.js owns the socket and the thread.
import { ui, clearView, batch, addNotice, addMessage, setStatus, scrollDown } from "./view.js";
import { initSidebar, showList, upsert, forget, titleOf, setCurrent, conversationHref } from "./sidebar.js";
import { initSearch, showResults, revealTarget } from "./search.js";
import { initSettings, settingsFrame } from "./settings.js";

let app = null; // { send, current, open, openNew } from app.js
let room = null; // the Matrix room shown instead of this tab's conversation, if any

// While a room is shown, what concerns this tab's conversation waits (drawn on return).
const WAITS_FOR_THE_ROOM = new Set(["pending", "message", "delta", "reset", "cancelled"]);

function plural(count, one, many) {
  return `${count} ${count === 1 ? one : many}`;
}

function showRoom(f) {
  clearView();
  batch(() => {
    addNotice(`Matrix room ${f.thread_id}, read-only: answer it in Matrix.`);
    for (const m of f.transcript) addMessage(m);
  });
  ui.log.dataset.readonly = "true";
  setStatus("read-only", "ready");
  if (!revealTarget(f.thread_id)) scrollDown();
}

// A search hit clicked: its conversation opened (or this one's message shown at once).
function openHit(hit) {
  if (hit.room) {
    room = hit.thread_id;
    app.send({ type: "read", thread_id: hit.thread_id });
  } else if (hit.thread_id === app.current() && room === null) {
    revealTarget(hit.thread_id);
  } else if (location.hash === conversationHref(hit.thread_id)) {
    app.open(hit.thread_id); // the address does not change: no hashchange
  } else {
    location.hash = conversationHref(hit.thread_id);
  }
}

export { revealTarget };

export function roomShown() {
  return room !== null;
}

export function leaveRoom() {
  room = null;
  delete ui.log.dataset.readonly;
}

// After the socket is ready: true when a room is shown (asked for again, drawn instead).
export function roomAfterReady() {
  if (room === null) {
    delete ui.log.dataset.readonly;
    return false;
  }
  app.send({ type: "read", thread_id: room });
  return true;
}

// A frame for the list or a room: handled here (true), or for app.js (false).
export function conversationFrame(f) {
  if (settingsFrame(f)) return true;
  if (room !== null && WAITS_FOR_THE_ROOM.has(f.type)) return true;
  switch (f.type) {
    case "conversations":
      showList(f);
      setCurrent(app.current());
      return true;
    case "conversation":
      upsert(f.item);
      setCurrent(app.current());
      return true;
    case "conversation_deleted":
      forget(f.thread_id);
      if (f.thread_id === app.current()) app.openNew();
      return true;
    case "contents": {
      const what = `${plural(f.messages, "message", "messages")}, `
        + `${plural(f.pending, "pending turn", "pending turns")} and `
        + `${plural(f.reminders, "reminder", "reminders")}`;
      if (confirm(`Delete "${titleOf(f.thread_id)}"? This removes ${what}, for good.`)) {
        app.send({ type: "delete", thread_id: f.thread_id });
      }
      return true;
    }
    case "search_results":
      showResults(f);
      return true;
    case "room":
      if (f.thread_id === room) showRoom(f);
      return true;
    default:
      return false;
  }
}

export function initConversations(api) {
  app = api;
  initSearch({ send: app.send, open: openHit });
  initSettings({ send: app.send, current: app.current });
  initSidebar({
    open(tid) {
      if (tid === app.current() && room !== null) app.open(tid); // the address did not change
    },
    rename(tid, title) {
      const wanted = prompt("Rename the conversation", title);
      if (wanted !== null && wanted.trim()) app.send({ type: "rename", thread_id: tid, title: wanted });
    },
    archive(tid, archived) {
      app.send({ type: "archive", thread_id: tid, archived });
    },
    remove(tid) {
      app.send({ type: "contents", thread_id: tid }); // counted first, then confirmed
    },
    room(tid) {
      room = tid;
      app.send({ type: "read", thread_id: tid });
    },
  });
}
