// The settings view's memory files: one labelled textarea each, saved against the version
// (a hash of the text) it was loaded at; a refused save shows the file's new text and keeps
// the person's edit beside it. Drafts survive the view being drawn again. Text only: every
// file is set as a textarea's value, never parsed.
const $ = (id) => document.getElementById(id);
const NUM = new Intl.NumberFormat("en-US");

let send = () => false; // sends a frame; from settings.js
let say = () => {}; // the view's status line
let maxBytes = 64000; // tools.memory_max_bytes, from the view
let emptyVersion = ""; // the version a new file is made from (the view says it)
let made = 0; // editors made: each textarea's id is unique
const editors = new Map(); // file name -> { text, version, area, note, conflict }

function button(label, name, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "secondary";
  b.textContent = label;
  b.setAttribute("aria-label", name);
  b.addEventListener("click", onClick);
  return b;
}

function save(name) {
  const ed = editors.get(name);
  const text = ed.area.value;
  const size = new TextEncoder().encode(text).length;
  if (size > maxBytes) {
    ed.note.textContent = `${NUM.format(size)} bytes; the limit is ${NUM.format(maxBytes)} (tools.memory_max_bytes). Not saved.`;
    return;
  }
  if (send({ type: "settings_save", name, text, version: ed.version })) ed.note.textContent = "Saving…";
  else ed.note.textContent = "Not connected: save again once connected.";
}

function editor(file) {
  const box = document.createElement("div");
  box.className = "memfile";
  box.dataset.name = file.name;
  made += 1;
  const id = `settings-file-${made}`;
  const label = document.createElement("label");
  label.htmlFor = id;
  label.textContent = file.name;
  const area = document.createElement("textarea");
  area.id = id;
  area.rows = 6;
  area.spellcheck = false;
  const note = document.createElement("span");
  note.className = "file-note";
  note.setAttribute("role", "status");
  const actions = document.createElement("div");
  actions.className = "file-actions";
  // A file it could not load (too large, a link) is shown with why, and left alone.
  if (!file.error) actions.append(button("Save", `Save ${file.name}`, () => save(file.name)));
  if (file.name.startsWith("skills/") && !file.error) {
    actions.append(button("Delete", `Delete ${file.name}`, () => {
      const ed = editors.get(file.name);
      if (confirm(`Delete ${file.name}? The assistant loses this skill.`)) {
        send({ type: "settings_delete", name: file.name, version: ed.version });
      }
    }));
  }
  actions.append(note);
  const conflict = document.createElement("div");
  conflict.className = "conflict";
  conflict.hidden = true;
  box.append(label, area, actions, conflict);
  const ed = { text: "", version: "", area, note, conflict };
  if (file.error) {
    area.value = "";
    area.disabled = true;
    note.textContent = file.error;
  } else {
    area.value = file.text;
    ed.text = file.text;
    ed.version = file.version;
  }
  editors.set(file.name, ed);
  return box;
}

// The view's files (and its limit and the version of a new file).
export function showFiles(view) {
  maxBytes = view.max_bytes;
  emptyVersion = view.new_version;
  // An edit not saved yet stays, with the version it started from (a save then tells
  // whether the assistant wrote meanwhile).
  const drafts = new Map();
  for (const [name, ed] of editors) {
    if (ed.area.value !== ed.text) drafts.set(name, { value: ed.area.value, version: ed.version, text: ed.text });
  }
  editors.clear();
  $("settings-files").replaceChildren(...view.files.map(editor));
  for (const [name, d] of drafts) {
    if (!editors.has(name) && d.version === emptyVersion) { // a new skill not saved yet
      $("settings-files").append(editor({ name, text: "", version: d.version }));
    }
    const ed = editors.get(name);
    if (!ed) continue;
    ed.area.value = d.value;
    ed.text = d.text;
    ed.version = d.version;
    ed.note.textContent = "Not saved yet.";
  }
}

function onConflict(f) {
  const ed = editors.get(f.name);
  if (!ed) return;
  const mine = ed.area.value;
  ed.text = f.text;
  ed.version = f.version;
  ed.area.value = f.text; // what the file holds now
  ed.note.textContent = "Not saved: changed meanwhile.";
  const p = document.createElement("p");
  p.setAttribute("role", "alert");
  p.textContent = f.message;
  const label = document.createElement("label");
  const keptId = `${ed.area.id}-mine`;
  label.htmlFor = keptId;
  label.textContent = `Your edit of ${f.name} (not saved)`;
  const kept = document.createElement("textarea");
  kept.id = keptId;
  kept.readOnly = true;
  kept.rows = 4;
  kept.value = mine;
  const use = button("Use my edit", `Put my edit of ${f.name} back`, () => {
    ed.area.value = mine; // saved against the new version: the assistant's change is seen
    ed.conflict.hidden = true;
    ed.area.focus();
  });
  const copy = button("Copy my edit", `Copy my edit of ${f.name}`, () => {
    navigator.clipboard?.writeText(mine).catch(() => kept.select());
  });
  ed.conflict.replaceChildren(p, label, kept, use, copy);
  ed.conflict.hidden = false;
  say(`${f.name} was not saved: it changed meanwhile (see below).`);
}

// A new skill's editor (saved once written); false when the name is taken.
export function newSkill(typed) {
  const name = `skills/${typed.trim().replace(/\.md$/, "")}.md`;
  if (editors.has(name)) {
    say(`${name} exists already: edit it above.`);
    return false;
  }
  $("settings-files").append(editor({ name, text: "", version: emptyVersion }));
  editors.get(name).area.focus();
  say(`${name} is new: write it, then Save.`);
  return true;
}

// A frame about a file: handled here (true), or not (false).
export function filesFrame(f) {
  const ed = f.name ? editors.get(f.name) : undefined;
  switch (f.type) {
    case "settings_saved":
      if (ed) {
        ed.text = f.text;
        ed.version = f.version;
        ed.note.textContent = "Saved.";
        ed.conflict.hidden = true;
      }
      say(`Saved ${f.name}.`);
      return true;
    case "settings_conflict":
      onConflict(f);
      return true;
    case "settings_deleted":
      $("settings-files").querySelector(`[data-name="${CSS.escape(f.name)}"]`)?.remove();
      editors.delete(f.name);
      say(`Deleted ${f.name}.`);
      return true;
    case "settings_refused":
      if (!ed) return false;
      ed.note.textContent = f.message;
      say(f.message);
      return true;
    default:
      return false;
  }
}

// api: { send(frame): bool, say(text) }
export function initFiles(api) {
  send = api.send;
  say = api.say;
}
