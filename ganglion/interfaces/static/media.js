// Attachments as the transcript shows them: an image as a thumbnail (a click opens it
// larger), audio as a player, any other file as a chip that downloads it. Each is fetched
// from GET /media/<id> with the token in the Authorization header and shown from a blob:
// URL: the token never goes into a URL. Names are set as text, never parsed as HTML.
import { TOKEN_KEY } from "./local.js";

const urls = new Map(); // media id -> Promise of a blob: URL (each file fetched once)

export function formatBytes(n) {
  if (!(n >= 0)) return "";
  if (n < 1024) return `${n} B`;
  const units = ["KB", "MB", "GB"];
  let v = n / 1024;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v < 10 ? v.toFixed(1) : Math.round(v)} ${units[i]}`;
}

export function mediaUrl(id) {
  let got = urls.get(id);
  if (!got) {
    const headers = { Authorization: `Bearer ${localStorage.getItem(TOKEN_KEY) || ""}` };
    got = fetch(`/media/${encodeURIComponent(id)}`, { headers }).then(async (r) => {
      if (!r.ok) {
        const body = await r.json().catch(() => ({}));
        throw new Error(body.error || `HTTP ${r.status}`);
      }
      return URL.createObjectURL(await r.blob());
    });
    got.catch(() => urls.delete(id)); // asked again next time
    urls.set(id, got);
  }
  return got;
}

// The transcript was cleared: its blob: URLs are let go (a redraw fetches again, from the
// browser's cache: the responses are immutable).
export function forgetMedia() {
  const old = [...urls.values()];
  urls.clear();
  for (const got of old) got.then((url) => URL.revokeObjectURL(url), () => {});
}

// A file is fetched when its place nears the view: a long transcript of photos does not
// download them all at once.
const loads = new WeakMap();
const seen = new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    seen.unobserve(entry.target);
    loads.get(entry.target)?.();
    loads.delete(entry.target);
  }
}, { rootMargin: "800px 0px" });

function whenNear(node, load) {
  loads.set(node, load);
  seen.observe(node);
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function label(a) {
  return `${a.name || "file"} (${formatBytes(a.bytes)})`;
}

// Where a file could not be fetched (removed by retention, say): said on it.
function broken(node, err) {
  node.classList.add("broken");
  node.title = err.message;
  node.append(el("span", "file-error", ` (${err.message})`));
}

let viewer = null;

// The larger view: a modal dialog (Esc or Close shuts it, focus comes back).
function openLarge(url, name) {
  if (!viewer) {
    viewer = el("dialog", "viewer");
    viewer.setAttribute("aria-label", "Image");
    const close = el("button", "secondary", "Close");
    close.type = "button";
    close.addEventListener("click", () => viewer.close());
    viewer.addEventListener("click", (e) => {
      if (e.target === viewer) viewer.close(); // a click beside the image
    });
    viewer.addEventListener("keydown", (e) => e.stopPropagation()); // Esc: not "stop the answer"
    viewer.append(el("img"), el("p", "viewer-name"), close);
    document.body.append(viewer);
  }
  viewer.querySelector("img").src = url;
  viewer.querySelector("img").alt = name;
  viewer.querySelector(".viewer-name").textContent = name;
  viewer.showModal();
}

function image(a) {
  const button = el("button", "thumb");
  button.type = "button";
  button.setAttribute("aria-label", `Open image ${label(a)}`);
  const img = el("img");
  img.alt = a.name || "image";
  if (a.width && a.height) img.style.aspectRatio = `${a.width} / ${a.height}`;
  button.append(img);
  whenNear(button, () => mediaUrl(a.id).then((url) => {
    img.src = url;
    button.addEventListener("click", () => openLarge(url, a.name || "image"));
  }, (err) => broken(button, err)));
  return button;
}

function audio(a) {
  const figure = el("figure", "voice");
  const player = el("audio");
  player.controls = true;
  player.preload = "metadata";
  player.setAttribute("aria-label", `Play ${label(a)}`);
  figure.append(player, el("figcaption", "", label(a)));
  whenNear(figure, () => mediaUrl(a.id).then((url) => { player.src = url; },
    (err) => broken(figure, err)));
  return figure;
}

function file(a) {
  const button = el("button", "file-chip secondary", label(a));
  button.type = "button";
  button.setAttribute("aria-label", `Download ${label(a)}`);
  button.addEventListener("click", () => {
    mediaUrl(a.id).then((url) => {
      const link = el("a");
      link.href = url;
      link.download = a.name || "file";
      link.click();
    }, (err) => broken(button, err));
  });
  return button;
}

// A file of a message still on its way up (after a reload it resumes by itself).
function uploading(a) {
  return el("span", "file-chip uploading", `${label(a)}: uploading…`);
}

export function attachmentList(list) {
  const box = el("div", "attachments");
  for (const a of list) {
    if (!a.id) box.append(uploading(a));
    else if ((a.type || "").startsWith("image/")) box.append(image(a));
    else if ((a.type || "").startsWith("audio/")) box.append(audio(a));
    else box.append(file(a));
  }
  return box;
}

// Draw (or redraw) a message's attachments, above its footer.
export function showAttachments(bubble, list) {
  const old = bubble.querySelector(":scope > .attachments");
  if (!list || !list.length) {
    if (old) old.remove();
    return;
  }
  const box = attachmentList(list);
  if (old) old.replaceWith(box);
  else bubble.insertBefore(box, bubble.querySelector(":scope > .meta"));
}
