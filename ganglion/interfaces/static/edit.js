// Regenerate the last answer and edit-and-resend the last question: their buttons on the last
// exchange (only while no turn runs), the inline editor, and the messages the server says
// were replaced (kept, collapsed, expandable). app.js hands over the socket and the frames.
import { addNotice } from "./view.js";
import { randomHex } from "./local.js";

const log = document.getElementById("log");
const status = document.getElementById("status");
const LABEL = { regenerated: "Replaced", edited: "Edited" };
const TITLE = {
  regenerated: "An earlier answer, replaced by the one below: show it",
  edited: "The earlier version of an edited message: show it",
};

let api = { send: (_frame) => false, thread: () => null };
let pending = null; // { frame, thread }: sent, not acknowledged yet (resent after a reconnect)

// The last message the page shows that the server sent (its history id): what the person
// sees as the end of the conversation. The server refuses a redo if it has a newer one.
function lastShownId() {
  const shown = log.querySelectorAll(".msg[data-id]:not([data-replaced])");
  return shown.length ? Number(shown[shown.length - 1].dataset.id) : 0;
}

function live(el) {
  return !el.dataset.replaced && !el.dataset.status?.match(/^(cancelled|failed|sending|retrying)$/);
}

// The last question and, after it, the last answer: the exchange the buttons act on.
function lastExchange() {
  const all = [...log.querySelectorAll(".msg")];
  let q = all.length - 1;
  while (q >= 0 && !(all[q].dataset.role === "user" && live(all[q]))) q -= 1;
  if (q < 0) return {};
  const after = all.slice(q + 1);
  // A later question still on its way (not one cancelled or refused for good), or /new.
  const later = (el) => el.classList.contains("divider")
    || (el.dataset.role === "user" && !["cancelled", "failed"].includes(el.dataset.status));
  if (after.some(later)) return {};
  const shown = after.filter((el) => el.dataset.id && live(el) && !el.classList.contains("approval"));
  // The answer, or what its turn said instead (a failure: Regenerate then tries again).
  const answer = shown.filter((el) => el.dataset.role === "assistant").pop()
    || shown.filter((el) => el.dataset.role === "system").pop();
  return { question: all[q], answer };
}

function idle() {
  const turn = log.dataset.turn || "idle";
  return turn === "idle" && ["ready", "error"].includes(status.dataset.state) && !pending;
}

// Its words are drawn by CSS from its label, as Copy's are: a message's text stays what
// was said.
function button(label, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "redo secondary";
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

function footerOf(el) {
  let meta = el.querySelector(":scope > .meta");
  if (!meta) {
    meta = document.createElement("div");
    meta.className = "meta";
    el.append(meta);
  }
  return meta;
}

// The buttons go where they act, and only while they can: no turn running, connected.
function refresh() {
  for (const el of log.querySelectorAll(".msg[data-replaced]:not(.collapsible)")) collapse(el);
  const { question, answer } = idle() ? lastExchange() : {};
  for (const b of log.querySelectorAll("button.redo")) {
    const owner = b.closest(".msg");
    if (owner !== question && owner !== answer) b.remove();
  }
  if (question && !question.querySelector("button.redo") && !question.querySelector(".edit-form")) {
    footerOf(question).append(button("Edit", () => openEditor(question)));
  }
  if (answer && !answer.querySelector("button.redo")) {
    footerOf(answer).append(button("Regenerate", regenerate));
  }
}

function send(frame, el = null) {
  pending = { frame, thread: api.thread(), el };
  if (!api.send(frame)) pending = null;
  refresh();
}

function regenerate() {
  send({ type: "regenerate", id: randomHex(16), after: lastShownId() });
}

// The question's text in place, editable; Save sends it as an edit, Cancel (or Esc) leaves
// it as it was.
function openEditor(el, text = null) {
  const body = el.querySelector(".body");
  const form = document.createElement("form");
  form.className = "edit-form";
  const box = document.createElement("textarea");
  box.setAttribute("aria-label", "Edit message");
  box.value = text ?? body.textContent;
  box.rows = Math.min(8, box.value.split("\n").length + 1);
  const save = document.createElement("button");
  save.textContent = "Save";
  const cancel = document.createElement("button");
  cancel.type = "button";
  cancel.className = "secondary";
  cancel.textContent = "Cancel";
  cancel.addEventListener("click", () => close());
  form.append(box, save, cancel);
  const close = () => {
    form.remove();
    body.hidden = false;
    refresh();
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!box.value.trim()) return;
    const text = box.value;
    close();
    send({ type: "edit", id: randomHex(16), after: lastShownId(), text }, el);
  });
  box.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      e.stopPropagation(); // not the page's Stop
      close();
    } else if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      form.requestSubmit();
    }
  });
  for (const b of el.querySelectorAll("button.redo")) b.remove();
  body.hidden = true;
  body.after(form);
  box.focus();
}

// A replaced message stays in its place, collapsed to one line that expands it.
function collapse(el) {
  el.classList.add("collapsible");
  const how = el.dataset.replaced;
  const toggle = document.createElement("button");
  toggle.type = "button";
  toggle.className = "replaced-toggle secondary";
  toggle.setAttribute("aria-label", LABEL[how] || "Replaced"); // drawn by CSS, as above
  toggle.title = TITLE[how] || TITLE.regenerated;
  toggle.setAttribute("aria-expanded", "false");
  toggle.addEventListener("click", () => {
    const open = el.classList.toggle("expanded");
    toggle.setAttribute("aria-expanded", String(open));
  });
  for (const b of el.querySelectorAll("button.redo")) b.remove();
  el.querySelector(".edit-form")?.remove();
  el.prepend(toggle);
}

function markReplaced(el, how) {
  if (el && !el.dataset.replaced) el.dataset.replaced = how;
}

// Frames for this module: true when handled here (app.js then does nothing more with it).
export function redoFrame(f) {
  if (f.type === "replaced") {
    for (const id of f.ids) markReplaced(log.querySelector(`.msg[data-id="${id}"]`), f.how);
    for (const cid of f.client_ids) {
      markReplaced(log.querySelector(`.msg[data-client-id="${CSS.escape(cid)}"]`), f.how);
    }
    refresh();
    return true;
  }
  if (f.type === "ready" && pending) {
    // Sent again with the same id once connected: the server runs an id once.
    const again = pending;
    if (again.thread !== f.thread_id) pending = null;
    else queueMicrotask(() => api.send(again.frame));
    return false;
  }
  if (!pending || f.id !== pending.frame.id || (f.type !== "ack" && f.type !== "error")) return false;
  const { frame, el } = pending;
  pending = null;
  if (f.type === "error") {
    addNotice(f.message);
    // A refused edit's words are not lost: the editor opens again with them.
    if (el && el.isConnected && !el.dataset.replaced && !el.querySelector(".edit-form")) {
      openEditor(el, frame.text);
    }
  }
  refresh();
  return true;
}

// send(frame): false when not connected; thread(): the conversation shown.
export function initRedo(actions) {
  api = actions;
  // The log's children come and go, its turn state and the connection change: the
  // buttons follow (a bubble's own content is left out: the stream writes there).
  const observer = new MutationObserver(refresh);
  observer.observe(log, { childList: true, attributes: true, attributeFilter: ["data-turn"] });
  observer.observe(status, { attributes: true, attributeFilter: ["data-state"] });
}
