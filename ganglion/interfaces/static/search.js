// The search box at the top of the sidebar: asks the server (a "search" frame) as the person
// types, lists the hits with their conversation's title and snippet, and opens the one
// clicked at its message. Snippets are stored text: drawn as text nodes, the matches in
// <mark> elements made here, never through innerHTML. Ctrl+K focuses the box, Esc clears it.
import { ui, addNotice } from "./view.js";

const $ = (id) => document.getElementById(id);
const box = $("search");
const list = $("search-results");
const DEBOUNCE_MS = 150;

let send = () => false; // sends a frame; from conversations.js
let openHit = () => {}; // opens a hit's conversation; from conversations.js
let timer = 0;
let target = null; // { thread, id }: the message to show once its conversation is drawn
let asked = ""; // the query whose results are awaited (older answers are dropped)

function ask() {
  const query = box.value.trim();
  asked = query;
  if (!query) {
    list.replaceChildren();
    list.hidden = true;
    return;
  }
  send({ type: "search", query });
}

function clear() {
  box.value = "";
  clearTimeout(timer);
  ask();
}

function snippet(pieces) {
  const p = document.createElement("span");
  p.className = "hit-snippet";
  for (const [text, matched] of pieces) {
    if (matched) {
      const mark = document.createElement("mark");
      mark.textContent = text;
      p.append(mark);
    } else {
      p.append(document.createTextNode(text));
    }
  }
  return p;
}

function hitRow(hit) {
  const li = document.createElement("li");
  li.className = "hit";
  const b = document.createElement("button");
  b.type = "button";
  b.className = "hit-open";
  const title = document.createElement("span");
  title.className = "hit-title";
  title.textContent = hit.room ? `${hit.title} (Matrix)` : hit.title || "New conversation";
  b.append(title, snippet(hit.snippet));
  b.addEventListener("click", () => {
    target = { thread: hit.thread_id, id: hit.id };
    if ($("sidebar").classList.contains("open")) $("close-sidebar").click(); // the drawer
    openHit(hit);
  });
  li.append(b);
  return li;
}

// The server's answer to a search frame (an older query's answer is dropped).
export function showResults(f) {
  if (f.query !== asked) return;
  const rows = f.results.map(hitRow);
  if (rows.length === 0) {
    const li = document.createElement("li");
    li.className = "hit-none";
    li.textContent = "No messages found.";
    rows.push(li);
  }
  list.replaceChildren(...rows);
  list.hidden = false;
}

// After a conversation or room is drawn: the searched message, if it is this one's, is
// scrolled into view and highlighted for a moment.
export function revealTarget(threadId) {
  if (!target || target.thread !== threadId) return false;
  const el = ui.log.querySelector(`[data-id="${CSS.escape(String(target.id))}"]`);
  target = null;
  if (!el) {
    addNotice("The message found is older than the messages shown here.");
    return false;
  }
  el.scrollIntoView({ block: "center" });
  el.classList.add("found");
  el.addEventListener("animationend", () => el.classList.remove("found"), { once: true });
  return true;
}

// api: { send(frame), open(hit) }
export function initSearch(api) {
  send = api.send;
  openHit = api.open;
  box.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(ask, DEBOUNCE_MS);
  });
  box.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !e.isComposing) {
      e.stopPropagation(); // Esc here clears the search; it does not stop the answer
      e.preventDefault();
      clear();
    } else if (e.key === "Enter") {
      e.preventDefault();
      clearTimeout(timer);
      ask();
    }
  });
  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey && !e.shiftKey && !e.altKey && e.code === "KeyK") {
      e.preventDefault(); // the browser's own search bar otherwise
      const sidebar = $("sidebar");
      const toggle = $("toggle-sidebar");
      if (toggle.offsetParent !== null && !sidebar.classList.contains("open")) toggle.click();
      box.focus();
      box.select();
    }
  });
}
