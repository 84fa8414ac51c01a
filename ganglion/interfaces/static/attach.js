// The composer's files: the Attach button, paste and drag-and-drop. Each file is uploaded at
// once over HTTP with the token (POST /upload; its progress on its chip) and a message sends
// the ids. A message whose files are still uploading waits in the outbox; its files are
// kept in IndexedDB, so that after a reload they are uploaded again and the message goes
// once (its client id makes a resend harmless).
import { TOKEN_KEY, loadOutbox, randomHex, saveOutbox } from "./local.js";
import { keep, kept, sweep, unkeep } from "./keep.js";
import { formatBytes, showAttachments } from "./media.js";
import { markFailed, userBubble } from "./view.js";

const MAX_FILES = 10; // per message, as the server allows
const RETRY_FIRST = 1000; // ms before an upload cut off (no answer, 5xx) is tried again
const RETRY_MAX = 15000;
const $ = (id) => document.getElementById(id);

let chips = []; // the composer's files: { key, name, type, bytes, blob, media, error, xhr, bar }
const uploads = new Map(); // key -> the upload in progress in this page
const held = new Set(); // outbox messages that wait for an earlier one's files: order is kept
let hooks = null;

const uploaded = (e) => (e.attachments || []).every((a) => a.id);

// -- uploading ------------------------------------------------------------------------------

class Refused extends Error {}

function post(blob, name, progress, item) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    if (item) item.xhr = xhr;
    xhr.open("POST", "/upload");
    xhr.setRequestHeader("Authorization", `Bearer ${localStorage.getItem(TOKEN_KEY) || ""}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => {
      if (e.lengthComputable) progress(e.loaded / e.total);
    };
    xhr.onload = () => {
      const body = xhr.response || {};
      if (xhr.status === 200 && body.id) resolve(body);
      else if (xhr.status >= 500 || xhr.status === 429) reject(new Error(body.error || `HTTP ${xhr.status}`));
      else reject(new Refused(refusal(xhr.status, body.error)));
    };
    xhr.onerror = () => reject(new Error("the connection was cut"));
    xhr.onabort = () => reject(new Refused("removed"));
    const form = new FormData();
    form.append("file", blob, name);
    xhr.send(form);
  });
}

// What a refused upload says on its chip: plainly, with the server's reason.
function refusal(status, why) {
  const what = { 413: "Too large", 415: "Not a type Ganglion accepts", 401: "Not logged in" }[status];
  return `${what || `Refused (${status})`}: ${why || "the server gave no reason"}`;
}

// Upload until it is stored or refused: a cut connection or a busy server is tried again.
async function upload(blob, name, progress, item) {
  let pause = RETRY_FIRST;
  for (;;) {
    if (item?.removed) throw new Refused("removed");
    try {
      return await post(blob, name, progress, item);
    } catch (err) {
      if (err instanceof Refused) throw err;
      if (item) item.note = `${err.message}; trying again`;
      render();
      await new Promise((r) => setTimeout(r, pause));
      pause = Math.min(pause * 2, RETRY_MAX);
    }
  }
}

// Start (once per page) the upload of file ``key``; what it becomes is told to the chips
// and to every outbox message that attaches it.
function start(key, blob, name, item = null) {
  if (uploads.has(key)) return;
  const progress = (p) => {
    if (!item) return;
    item.progress = p;
    if (item.bar) item.bar.value = p; // in place: a focused remove button keeps its focus
  };
  const done = upload(blob, name, progress, item).then(
    (media) => settled(key, media, null), (err) => settled(key, null, err.message));
  uploads.set(key, done);
}

function settled(key, media, error) {
  uploads.delete(key);
  if (error) unkeep(key); // refused: never sent, not kept (a file over media.max_bytes)
  const item = chips.find((c) => c.key === key);
  if (item) {
    item.xhr = null;
    item.note = "";
    if (media) item.media = media;
    else if (error !== "removed") item.error = error;
    render();
  }
  const waiting = (e) => (e.attachments || []).find((x) => x.key === key && !x.id);
  for (const { id } of loadOutbox().filter(waiting)) {
    const outbox = loadOutbox();
    const e = outbox.find((x) => x.id === id);
    const a = e && waiting(e);
    if (!a) continue;
    if (error) {
      // Its message is not sent: said on it, and it leaves the outbox (sending it again
      // would not help); the person attaches another file.
      saveOutbox(outbox.filter((x) => x !== e));
      forget(e);
      const why = `${a.name}: ${error}. The message was not sent.`;
      markFailed(e.id, "failed", why);
      hooks.failed(e.id, why);
      continue;
    }
    Object.assign(a, { id: media.id, type: media.type, bytes: media.bytes,
      width: media.width, height: media.height });
    saveOutbox(outbox);
    const bubble = userBubble(e.id);
    if (bubble) showAttachments(bubble, e.attachments);
    if (uploaded(e)) held.add(e.id);
  }
  // In order, up to the first message still uploading: each goes once its turn comes.
  for (const e of loadOutbox()) {
    if (!uploaded(e)) break;
    if (held.has(e.id)) hooks.send(e);
  }
}

// -- the outbox's side ------------------------------------------------------------------------

// The send frame of an outbox message, or null while its files are uploading (their
// uploads are started here if this page has not yet: after a reload, from IndexedDB).
export function outboxFrame(e) {
  const files = e.attachments || [];
  const missing = files.filter((a) => !a.id);
  if (!missing.length) {
    // A message sent while an earlier one's files upload waits for it (answered in order).
    const outbox = loadOutbox().filter((x) => x.thread === e.thread);
    const earlier = outbox.slice(0, Math.max(0, outbox.findIndex((x) => x.id === e.id)));
    if (!earlier.every(uploaded)) {
      held.add(e.id);
      return null;
    }
    held.delete(e.id);
    const frame = { type: "send", id: e.id, text: e.text };
    if (files.length) frame.attachments = files.map((a) => a.id);
    return frame;
  }
  for (const a of missing) {
    if (uploads.has(a.key)) continue;
    uploads.set(a.key, kept(a.key).then((rec) => {
      uploads.delete(a.key);
      if (rec) start(a.key, rec.blob, a.name);
      else settled(a.key, null, "the file was not kept over the reload; attach it again");
    }));
  }
  return null;
}

// The message is stored (or refused for good): its kept files are no longer needed.
export function acked(clientId) {
  const e = loadOutbox().find((x) => x.id === clientId);
  if (e) forget(e);
}

function forget(e) {
  for (const a of e.attachments || []) unkeep(a.key);
}

// -- the composer's chips ---------------------------------------------------------------------

// A line above the composer (shared with the microphone's): why Send did nothing.
function say(text) {
  const note = $("attach-note");
  note.textContent = text;
  note.hidden = !text;
}

function describe(item) {
  return { key: item.key, name: item.name, type: item.media?.type || item.type,
    bytes: item.media?.bytes ?? item.bytes, id: item.media?.id, width: item.media?.width,
    height: item.media?.height };
}

function add(file) {
  const item = { key: randomHex(12), name: file.name || "pasted file", type: file.type,
    bytes: file.size, blob: file, progress: 0 };
  keep(item.key, file, item.name);
  start(item.key, file, item.name, item);
  return item;
}

export function addFiles(files) {
  say("");
  for (const file of files) {
    if (chips.length >= MAX_FILES) {
      say(`At most ${MAX_FILES} files per message; send these first.`);
      break;
    }
    chips.push(add(file));
  }
  render();
}

// The files to send with the composer's text, or null (said why) while one is refused.
export function forSend() {
  const bad = chips.find((c) => c.error);
  if (bad) {
    say(`Remove the file that was refused (${bad.name}) before sending.`);
    return null;
  }
  return chips.map(describe);
}

// The composer's files left with their message (their uploads go on).
export function sent() {
  say("");
  chips = [];
  render();
}

// A file sent alone, at once (a voice recording).
export function sendFile(file) {
  const item = add(file);
  hooks.sendText("", [describe(item)]);
}

function remove(item) {
  chips = chips.filter((c) => c !== item);
  item.removed = true;
  say("");
  if (item.xhr) item.xhr.abort();
  unkeep(item.key);
  render();
  $("message").focus();
}

function render() {
  const list = $("attachments");
  const focused = document.activeElement?.closest("#attachments li")?.dataset.key;
  list.hidden = chips.length === 0;
  list.replaceChildren(...chips.map((item) => {
    const li = document.createElement("li");
    li.className = "chip";
    li.dataset.key = item.key;
    li.dataset.state = item.error ? "error" : item.media ? "ready" : "uploading";
    const name = document.createElement("span");
    name.className = "chip-name";
    name.textContent = item.name; // text: a name with HTML in it stays text
    const size = document.createElement("span");
    size.className = "chip-size";
    size.textContent = formatBytes(item.bytes);
    li.append(name, size);
    if (!item.media && !item.error) {
      const bar = document.createElement("progress");
      bar.max = 1;
      bar.value = item.progress || 0;
      bar.setAttribute("aria-label", `Uploading ${item.name}`);
      item.bar = bar;
      li.append(bar);
    }
    if (item.error || item.note) {
      const why = document.createElement("span");
      why.className = "chip-error";
      why.setAttribute("role", item.error ? "alert" : "status");
      why.textContent = item.error || item.note;
      li.append(why);
    }
    const x = document.createElement("button");
    x.type = "button";
    x.className = "chip-remove secondary";
    x.textContent = "×";
    x.setAttribute("aria-label", `Remove ${item.name}`);
    x.addEventListener("click", () => remove(item));
    li.append(x);
    return li;
  }));
  if (focused) list.querySelector(`li[data-key="${focused}"] .chip-remove`)?.focus(); // kept
}

// -- the page's ways in -----------------------------------------------------------------------

function hasFiles(e) {
  return Array.from(e.dataTransfer?.types || []).includes("Files");
}

function initDrop() {
  const area = document.querySelector(".app");
  const zone = document.createElement("div");
  zone.className = "drop-zone";
  zone.textContent = "Drop files to attach them";
  zone.hidden = true;
  area.append(zone);
  let depth = 0;
  area.addEventListener("dragenter", (e) => {
    if (!hasFiles(e)) return;
    depth += 1;
    zone.hidden = false;
  });
  area.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) zone.hidden = true;
  });
  area.addEventListener("dragover", (e) => {
    if (hasFiles(e)) e.preventDefault(); // else the browser would open the file
  });
  area.addEventListener("drop", (e) => {
    depth = 0;
    zone.hidden = true;
    if (!e.dataTransfer?.files.length) return;
    e.preventDefault();
    addFiles(e.dataTransfer.files);
    $("message").focus();
  });
}

// hooks from app.js: { sendText(text, files): a new message; send(entry): an outbox message
// whose files are all uploaded, if connected; failed(clientId, why): it was not sent }.
export function initAttach(given) {
  hooks = given;
  const input = $("file-input");
  $("attach").addEventListener("click", () => input.click());
  input.addEventListener("change", () => {
    addFiles(Array.from(input.files));
    input.value = ""; // the same file may be chosen again
  });
  $("composer").addEventListener("paste", (e) => {
    const files = Array.from(e.clipboardData?.files || []);
    if (!files.length) return;
    if (!e.clipboardData.types.includes("text/plain")) e.preventDefault();
    addFiles(files);
  });
  initDrop();
  sweep();
}
