// Ganglion's chat page: one WebSocket per tab, a sessionStorage outbox, server-rendered HTML only.
"use strict";

(() => {
  const TOKEN_KEY = "ganglion.token";
  const THREAD_KEY = "ganglion.thread";
  const OUTBOX_KEY = "ganglion.outbox";
  const THREAD_RE = /^web_[0-9a-f]{16,64}$/;
  const BUSY = new Set(["thinking", "streaming", "tool"]);
  const CLOSE_UNAUTHORIZED = 4401;
  const CLOSE_BAD_THREAD = 4400;
  const BACKOFF_FIRST = 250;
  const BACKOFF_MAX = 5000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    app: document.querySelector(".app"),
    status: $("status"),
    login: $("login"),
    loginForm: $("login-form"),
    loginMessage: $("login-message"),
    tokenInput: $("token-input"),
    log: $("log"),
    composer: $("composer"),
    message: $("message"),
    send: $("send"),
    stop: $("stop"),
    newChat: $("new-chat"),
  };
  const DEFAULT_LOGIN_MESSAGE = ui.loginMessage.textContent;

  let token = null;
  let threadId = null;
  let ws = null;
  let generation = 0; // events of an older socket are ignored
  let ready = false;
  let backoff = BACKOFF_FIRST;
  let reconnectTimer = null;
  let maxBytes = 64000;
  let seen = new Set(); // message ids already shown
  let streamEl = null; // the answer in progress
  let turnState = "idle";

  // -- storage ------------------------------------------------------------------------------

  function randomHex(bytes) {
    const a = new Uint8Array(bytes);
    crypto.getRandomValues(a);
    return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function newThread() {
    const tid = "web_" + randomHex(16);
    sessionStorage.setItem(THREAD_KEY, tid);
    return tid;
  }

  function loadThread() {
    const tid = sessionStorage.getItem(THREAD_KEY);
    return tid && THREAD_RE.test(tid) ? tid : newThread();
  }

  function loadOutbox() {
    try {
      const list = JSON.parse(sessionStorage.getItem(OUTBOX_KEY) || "[]");
      return Array.isArray(list) ? list : [];
    } catch {
      return [];
    }
  }

  function saveOutbox(list) {
    sessionStorage.setItem(OUTBOX_KEY, JSON.stringify(list));
  }

  function takeTokenFromFragment() {
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

  // -- view ---------------------------------------------------------------------------------

  function setStatus(text) {
    ui.status.textContent = text;
    ui.status.dataset.state = text;
  }

  function setTurnState(state) {
    turnState = state;
    ui.stop.disabled = !(ready && BUSY.has(state));
    ui.log.setAttribute("aria-busy", state === "streaming" ? "true" : "false");
    if (ready) setStatus(state === "idle" ? "ready" : state === "streaming" ? "streaming" : "thinking");
  }

  function nearBottom() {
    const l = ui.log;
    return l.scrollHeight - l.scrollTop - l.clientHeight < 80;
  }

  function scrollDown() {
    ui.log.scrollTop = ui.log.scrollHeight;
  }

  function place(el, force) {
    const follow = force || nearBottom();
    if (streamEl && el !== streamEl) ui.log.insertBefore(el, streamEl);
    else ui.log.append(el);
    if (follow) scrollDown();
  }

  function bubble(role) {
    const el = document.createElement("article");
    el.className = "msg";
    el.dataset.role = role;
    const body = document.createElement("div");
    body.className = "body";
    return [el, body];
  }

  function addMessage(m) {
    if (m.role === "assistant") dropStream();
    if (seen.has(m.id)) return;
    seen.add(m.id);
    const [el, body] = bubble(m.role);
    el.dataset.id = String(m.id);
    body.innerHTML = m.html; // server-rendered, escaped HTML only; never raw text
    for (const a of body.querySelectorAll("a[href]")) {
      a.target = "_blank"; // never navigate the chat away
      a.rel = "noopener noreferrer";
    }
    if (m.role === "tool") {
      const details = document.createElement("details");
      const summary = document.createElement("summary");
      const first = (m.text || "").split("\n", 1)[0].slice(0, 80);
      summary.textContent = (m.name ? `Tool ${m.name}` : "Tool") + (first ? `: ${first}` : "");
      details.append(summary, body);
      el.append(details);
    } else {
      el.append(body);
    }
    place(el, false);
  }

  function userBubble(clientId) {
    return ui.log.querySelector(`.msg[data-client-id="${CSS.escape(clientId)}"]`);
  }

  function addUser(text, clientId, status) {
    if (userBubble(clientId)) return;
    const [el, body] = bubble("user");
    el.dataset.clientId = clientId;
    el.dataset.status = status;
    body.textContent = text;
    el.append(body);
    place(el, true);
  }

  function markFailed(clientId, message) {
    const el = userBubble(clientId);
    if (!el) return;
    el.dataset.status = "failed";
    const note = document.createElement("p");
    note.className = "note";
    note.textContent = message;
    el.append(note);
  }

  function addNotice(text) {
    const el = document.createElement("p");
    el.className = "notice";
    el.textContent = text;
    place(el, true);
  }

  function appendDelta(text) {
    if (!streamEl) {
      const [el, body] = bubble("assistant");
      el.classList.add("streaming");
      el.append(body);
      streamEl = el;
      place(el, true);
    }
    const follow = nearBottom();
    streamEl.firstChild.append(document.createTextNode(text)); // plain text while streaming
    if (follow) scrollDown();
  }

  function dropStream() {
    if (streamEl) streamEl.remove();
    streamEl = null;
  }

  function clearView() {
    ui.log.replaceChildren();
    seen = new Set();
    streamEl = null;
  }

  function showLogin(message) {
    ui.app.classList.add("logged-out");
    ui.login.hidden = false;
    ui.loginMessage.textContent = message || DEFAULT_LOGIN_MESSAGE;
    setStatus(message ? "error" : "logged out");
    ui.stop.disabled = true;
    ui.tokenInput.focus();
  }

  function hideLogin() {
    ui.app.classList.remove("logged-out");
    ui.login.hidden = true;
  }

  // -- connection ---------------------------------------------------------------------------

  function sendFrame(frame) {
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    if (!token) {
      showLogin("");
      return;
    }
    const gen = ++generation;
    ready = false;
    setStatus("connecting");
    ui.stop.disabled = true;
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
      if (ev.code === CLOSE_BAD_THREAD) {
        threadId = newThread();
        clearView();
      }
      setStatus("connecting");
      reconnectTimer = setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, BACKOFF_MAX);
    };
  }

  function reconnectNow() {
    generation++; // the old socket's close event is ignored
    if (ws) ws.close(1000);
    ws = null;
    backoff = BACKOFF_FIRST;
    connect();
  }

  function handle(f) {
    switch (f.type) {
      case "ready":
        onReady(f);
        break;
      case "ack": {
        saveOutbox(loadOutbox().filter((e) => e.id !== f.id));
        const el = userBubble(f.id);
        if (el) el.dataset.status = "sent";
        break;
      }
      case "pending":
        addUser(f.text, f.id, "sent");
        break;
      case "message":
        addMessage(f);
        break;
      case "delta":
        appendDelta(f.text);
        break;
      case "reset":
        if (streamEl) streamEl.firstChild.replaceChildren();
        break;
      case "state":
        if (f.state === "idle") dropStream();
        setTurnState(f.state);
        break;
      case "error":
        if (f.id) {
          // Refused for good (too large, malformed): resending would not help.
          saveOutbox(loadOutbox().filter((e) => e.id !== f.id));
          markFailed(f.id, f.message);
        } else {
          addNotice(f.message);
        }
        break;
      default:
        break;
    }
  }

  function onReady(f) {
    ready = true;
    backoff = BACKOFF_FIRST;
    threadId = f.thread_id;
    sessionStorage.setItem(THREAD_KEY, threadId);
    if (f.max_message_bytes) maxBytes = f.max_message_bytes;
    clearView();
    for (const m of f.transcript) addMessage(m);
    for (const p of f.pending) addUser(p.text, p.id, "sent");
    const outbox = loadOutbox().filter((e) => e.thread === threadId);
    saveOutbox(outbox);
    for (const e of outbox) addUser(e.text, e.id, "sending");
    if (f.streaming !== null && f.streaming !== undefined) appendDelta(f.streaming);
    setTurnState(f.state);
    scrollDown();
    // Unacknowledged messages go again with the same id: the server keeps each id once.
    for (const e of outbox) sendFrame({ type: "send", id: e.id, text: e.text });
  }

  // -- input --------------------------------------------------------------------------------

  function sendCurrent() {
    const text = ui.message.value;
    if (!text.trim()) return;
    const size = new TextEncoder().encode(text).length;
    if (size > maxBytes) {
      const fmt = (n) => n.toLocaleString("en-US");
      addNotice(`Message is ${fmt(size)} bytes; the limit is ${fmt(maxBytes)}. Shorten it and send again.`);
      return;
    }
    const id = randomHex(16);
    saveOutbox([...loadOutbox(), { id, text, thread: threadId }]);
    addUser(text, id, "sending");
    ui.message.value = "";
    if (ready) sendFrame({ type: "send", id, text });
  }

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

  ui.newChat.addEventListener("click", () => {
    threadId = newThread();
    saveOutbox([]);
    clearView();
    turnState = "idle";
    if (token) reconnectNow();
    ui.message.focus();
  });

  ui.loginForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const value = ui.tokenInput.value.trim();
    if (!value) return;
    token = value;
    localStorage.setItem(TOKEN_KEY, token);
    ui.tokenInput.value = "";
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
})();
