// Files of unsent messages, kept in IndexedDB (a Blob survives a reload there; sessionStorage
// holds only text): a message whose files were still uploading when the page went away
// uploads them again after the reload. Each record is removed once its message is stored.
const DB = "ganglion";
const STORE = "files";
const STALE_MS = 2 * 24 * 3600 * 1000; // a file no message took (the tab closed) goes then

let opened = null;

function db() {
  if (!opened) {
    opened = new Promise((resolve, reject) => {
      const req = indexedDB.open(DB, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(STORE);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
    opened.catch(() => { opened = null; });
  }
  return opened;
}

function run(mode, work) {
  return db().then((d) => new Promise((resolve, reject) => {
    const tx = d.transaction(STORE, mode);
    const req = work(tx.objectStore(STORE));
    tx.oncomplete = () => resolve(req ? req.result : undefined);
    tx.onerror = () => reject(tx.error);
    tx.onabort = () => reject(tx.error);
  }));
}

// Best effort: without IndexedDB (a private window may refuse it) the file is only not
// resumable; the upload itself goes on.
export function keep(key, blob, name) {
  return run("readwrite", (s) => s.put({ blob, name, at: Date.now() }, key)).catch(() => {});
}

// { blob, name } or null.
export function kept(key) {
  return run("readonly", (s) => s.get(key)).then((r) => r || null, () => null);
}

export function unkeep(key) {
  return run("readwrite", (s) => s.delete(key)).catch(() => {});
}

export function sweep() {
  return run("readwrite", (s) => {
    const req = s.openCursor();
    req.onsuccess = () => {
      const cur = req.result;
      if (!cur) return;
      if (!(Date.now() - (cur.value.at || 0) < STALE_MS)) cur.delete();
      cur.continue();
    };
    return null;
  }).catch(() => {});
}
