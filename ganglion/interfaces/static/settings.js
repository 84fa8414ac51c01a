// The settings view (#/settings), in place of the conversation: the memory files
// (memfiles.js), reminders (cancelled after a confirmation), the tools and their policy
// (read-only), endpoints and the conversation's model, and the token use. Everything the
// server sends is drawn as text (textContent), never parsed as HTML. conversations.js hands
// it the socket and its frames.
import { conversationHref } from "./sidebar.js";
import { initFiles, showFiles, filesFrame, newSkill } from "./memfiles.js";

export const SETTINGS_HASH = "#/settings";
const $ = (id) => document.getElementById(id);
const NUM = new Intl.NumberFormat("en-US");

let app = null; // { send(frame): bool, current(): thread id }
let view = null; // the <section>
let opener = null; // the element focused before the view opened (focus returns to it)

// The skeleton: constant markup, no data in it (data is set as text below).
const SKELETON = `
<div class="settings-head">
  <h2 id="settings-title" tabindex="-1">Settings</h2>
  <button id="settings-close" type="button" class="secondary" aria-keyshortcuts="Escape">Back to the chat</button>
</div>
<p id="settings-status" class="settings-status" role="status" aria-live="polite"></p>
<section class="settings-part" aria-labelledby="settings-memory">
  <h3 id="settings-memory">Memory files</h3>
  <p class="settings-note">What the assistant remembers and reads in every conversation. A save is
    refused when the assistant changed the file since it was loaded here; your edit is kept.</p>
  <div id="settings-files"></div>
  <form id="settings-new-skill" class="settings-inline">
    <label for="settings-skill-name">New skill</label>
    <input id="settings-skill-name" type="text" required maxlength="81" autocomplete="off"
           spellcheck="false" pattern="[A-Za-z0-9][A-Za-z0-9_.\\-]{0,80}"
           title="Letters, digits, . _ - (it becomes skills/&lt;name&gt;.md)">
    <button type="submit" class="secondary">Create skill</button>
  </form>
</section>
<section class="settings-part" aria-labelledby="settings-reminders">
  <h3 id="settings-reminders">Reminders</h3>
  <p id="settings-reminders-note" class="settings-note"></p>
  <div class="settings-scroll"><table id="settings-reminder-table" aria-labelledby="settings-reminders">
    <thead><tr><th scope="col">What</th><th scope="col">Next</th><th scope="col">Repeats</th>
      <th scope="col">Conversation</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
    <tbody></tbody></table></div>
</section>
<section class="settings-part" aria-labelledby="settings-tools">
  <h3 id="settings-tools">Tools and their policy</h3>
  <p id="settings-config" class="settings-note"></p>
  <div class="settings-scroll"><table id="settings-tool-table" aria-labelledby="settings-tools">
    <thead><tr><th scope="col">Tool</th><th scope="col">Source</th><th scope="col">Mode</th>
      <th scope="col">State</th></tr></thead>
    <tbody></tbody></table></div>
</section>
<section class="settings-part" aria-labelledby="settings-models">
  <h3 id="settings-models">Endpoints and models</h3>
  <div class="settings-inline">
    <label for="settings-model">Model for this conversation</label>
    <select id="settings-model"></select>
  </div>
  <p id="settings-model-line" class="settings-note"></p>
  <div class="settings-scroll"><table id="settings-endpoint-table" aria-label="Endpoints">
    <thead><tr><th scope="col">Endpoint</th><th scope="col">Base URL</th><th scope="col">State</th>
      <th scope="col">Models</th></tr></thead>
    <tbody></tbody></table></div>
  <p id="settings-aliases" class="settings-note"></p>
</section>
<section class="settings-part" aria-labelledby="settings-usage">
  <h3 id="settings-usage">Token use</h3>
  <div class="settings-scroll"><table id="settings-today">
    <caption>Today's token use</caption><thead><tr><th scope="col">Model</th><th scope="col">Calls</th><th scope="col">Prompt</th>
      <th scope="col">Completion</th></tr></thead>
    <tbody></tbody></table></div>
  <div class="settings-scroll"><table id="settings-days">
    <caption>The last 7 days</caption><thead><tr><th scope="col">Day</th><th scope="col">Prompt</th><th scope="col">Completion</th>
      <th scope="col">Total</th></tr></thead>
    <tbody></tbody></table></div>
</section>`;

function cell(text, tag = "td") {
  const c = document.createElement(tag);
  c.textContent = text;
  return c;
}

function tableRow(...cells) {
  const tr = document.createElement("tr");
  tr.append(...cells.map((c) => {
    if (c instanceof HTMLTableCellElement) return c;
    if (!(c instanceof Node)) return cell(String(c));
    const td = document.createElement("td");
    td.append(c);
    return td;
  }));
  return tr;
}

function fill(id, rows, empty) {
  const body = $(id).tBodies[0];
  if (rows.length === 0) {
    const td = cell(empty);
    td.colSpan = $(id).tHead.rows[0].cells.length;
    td.className = "settings-empty";
    rows = [tableRow(td)];
  }
  body.replaceChildren(...rows);
}

function say(text) {
  $("settings-status").textContent = text;
}

function button(label, name, onClick) {
  const b = document.createElement("button");
  b.type = "button";
  b.className = "secondary";
  b.textContent = label;
  if (name) b.setAttribute("aria-label", name);
  b.addEventListener("click", onClick);
  return b;
}

// -- the other sections ---------------------------------------------------------------------

function showReminders(f) {
  $("settings-reminders-note").textContent = f.reminders_total > f.reminders.length
    ? `The ${f.reminders.length} soonest of ${f.reminders_total}; times in ${f.timezone}.`
    : `Times in ${f.timezone}.`;
  fill("settings-reminder-table", f.reminders.map((r) => {
    const tr = tableRow(
      r.system ? `${r.text} (a task, shows nothing)` : r.text,
      r.next_local, r.repeat, r.here ? `${r.title} (this one)` : r.title || "New conversation",
      button("Cancel", `Cancel reminder #${r.id}`, () => {
        if (confirm(`Cancel the reminder "${r.text}" (next: ${r.next_local})?`)) {
          app.send({ type: "settings_cancel_reminder", id: r.id });
        }
      }));
    tr.dataset.id = r.id;
    return tr;
  }), "No reminders. Ask the assistant for one in plain words.");
}

function showTools(f) {
  $("settings-config").textContent = f.config_path
    ? `Read-only: the config file is the source of truth (tools.policy in ${f.config_path}; `
      + "a change takes effect at the next start)."
    : "Read-only: the config file is the source of truth; this daemon runs without one "
      + "(the defaults), so tools.policy in a config.yaml would change these.";
  fill("settings-tool-table", f.tools.map((t) => tableRow(
    t.name, t.server ? `MCP server ${t.server}` : "built-in", t.mode, t.state || "")), "No tools.");
}

function showModel(m) {
  const select = $("settings-model");
  const names = new Set([...select.options].map((o) => o.value));
  if (!names.has(m.current)) select.append(new Option(m.current, m.current));
  select.value = m.chosen ? m.current : "default";
  $("settings-model-line").textContent = m.chosen
    ? `This conversation uses ${m.current} (chosen here or with /model).`
    : `This conversation uses ${m.current}, the default (llm.model).`;
}

function showModels(f) {
  const select = $("settings-model");
  select.replaceChildren(new Option(`Default (${f.model.default})`, "default"),
    ...f.models.map((name) => new Option(name, name)));
  showModel(f.model);
  fill("settings-endpoint-table", f.endpoints.map((e) => tableRow(
    e.added_by ? `${e.name} (added by ${e.added_by})` : e.name, e.url,
    e.healthy ? "healthy" : e.problem || "not answering",
    e.models === null ? "unknown yet" : e.models.join(", ") || "none")), "No endpoints.");
  $("settings-aliases").textContent = f.aliases.length
    ? "Aliases: " + f.aliases.map((a) => `${a.alias} → ${a.model}`).join(", ")
    : "No aliases (/alias adds one).";
}

function showUsage(u) {
  fill("settings-today", u.today.models.map((m) => tableRow(
    m.model, NUM.format(m.calls), NUM.format(m.prompt_tokens), NUM.format(m.completion_tokens))),
  "No model calls today.");
  fill("settings-days", u.days.slice().reverse().map((d) => tableRow(
    d.day, NUM.format(d.prompt_tokens), NUM.format(d.completion_tokens),
    NUM.format(d.prompt_tokens + d.completion_tokens))), "");
}

function showView(f) {
  showFiles(f);
  showReminders(f);
  showTools(f);
  showModels(f);
  showUsage(f.usage);
  view.setAttribute("aria-busy", "false");
}

// -- opening and closing --------------------------------------------------------------------

export function settingsOpen() {
  return view !== null && !view.hidden;
}

function open() {
  if (settingsOpen()) return;
  if (!opener) opener = document.activeElement;
  if ($("sidebar").classList.contains("open")) $("close-sidebar").click(); // the drawer
  view.hidden = false;
  view.parentElement.classList.add("settings-open");
  view.setAttribute("aria-busy", "true");
  say("");
  app.send({ type: "settings" }); // not connected: asked again once ready
  $("settings-title").focus();
}

function hide() {
  if (!settingsOpen()) return;
  view.hidden = true;
  view.parentElement.classList.remove("settings-open");
  // Back where the person was; the message box when that is gone or hidden (the drawer).
  const shown = opener && opener !== document.body
    && opener.checkVisibility?.({ visibilityProperty: true });
  const back = shown ? opener : $("message");
  opener = null;
  back.focus();
}

function close() {
  if (location.hash === SETTINGS_HASH) location.hash = conversationHref(app.current());
  else hide();
}

function route() {
  if (location.hash === SETTINGS_HASH) open();
  else hide();
}

// A frame for the view: handled here (true), or for the others (false).
export function settingsFrame(f) {
  if (filesFrame(f)) return true;
  switch (f.type) {
    case "ready":
      if (settingsOpen()) queueMicrotask(() => app.send({ type: "settings" }));
      return false;
    case "settings":
      showView(f);
      return true;
    case "settings_reminder_cancelled":
      $("settings-reminder-table").querySelector(`tr[data-id="${f.id}"]`)?.remove();
      say(`Reminder #${f.id} cancelled.`);
      return true;
    case "settings_model":
      showModel(f);
      say(f.line.replaceAll("`", "")); // /model's answer, in Markdown
      return true;
    case "settings_refused": {
      say(f.message);
      if (f.action === "model") app.send({ type: "settings" }); // the picker as it is
      return true;
    }
    default:
      return false;
  }
}

// api: { send(frame): bool, current(): thread id }
export function initSettings(api) {
  app = api;
  initFiles({ send: app.send, say });
  view = document.createElement("section");
  view.id = "settings";
  view.className = "settings";
  view.hidden = true;
  view.setAttribute("aria-labelledby", "settings-title");
  view.innerHTML = SKELETON; // constant: no data from anywhere
  $("log").closest(".log-wrap").before(view);
  $("settings-close").addEventListener("click", close);
  $("new-chat").addEventListener("click", close); // after app.js opened the new one
  $("open-settings").addEventListener("click", () => {
    opener = $("open-settings");
    if (location.hash === SETTINGS_HASH) open();
    else location.hash = SETTINGS_HASH;
  });
  $("settings-model").addEventListener("change", (e) => {
    app.send({ type: "settings_model", model: e.target.value });
  });
  $("settings-new-skill").addEventListener("submit", (e) => {
    e.preventDefault();
    if (newSkill($("settings-skill-name").value)) $("settings-skill-name").value = "";
  });
  // Esc leaves the view (before the page's own Esc, which stops an answer).
  window.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && !e.isComposing && settingsOpen()) {
      e.preventDefault();
      e.stopPropagation();
      close();
    }
  }, true);
  window.addEventListener("hashchange", route);
  route();
}
