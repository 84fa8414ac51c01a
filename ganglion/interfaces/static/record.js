// The microphone button: a voice message recorded with MediaRecorder (Opus in WebM where the
// browser has it), shown while it records with its elapsed time, Stop (sends it) and Cancel
// (Esc too); the recording is uploaded and sent like an attached file. The server
// transcribes it, and the transcript follows as a notice.
import { sendFile } from "./attach.js";

const TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/webm", "audio/mp4"];
const $ = (id) => document.getElementById(id);

let recorder = null;
let timer = null;
let keepIt = false;

function say(text) {
  const note = $("attach-note");
  note.textContent = text;
  note.hidden = !text;
}

function elapsed(since) {
  const s = Math.floor((Date.now() - since) / 1000);
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function showRecording(on) {
  $("recording").hidden = !on;
  $("record").disabled = on;
  $("record").setAttribute("aria-pressed", on ? "true" : "false");
}

async function begin() {
  say("");
  if (!navigator.mediaDevices?.getUserMedia || typeof MediaRecorder === "undefined") {
    say("Recording needs a browser with a microphone API, on https or localhost.");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    say(err.name === "NotAllowedError"
      ? "The microphone is blocked for this page: allow it in the browser's site settings, then press the microphone again."
      : `No microphone could be opened (${err.name}).`);
    return;
  }
  const mimeType = TYPES.find((t) => MediaRecorder.isTypeSupported(t)) || "";
  const rec = new MediaRecorder(stream, mimeType ? { mimeType } : {});
  const parts = [];
  const since = Date.now();
  keepIt = false;
  rec.ondataavailable = (e) => {
    if (e.data.size) parts.push(e.data);
  };
  rec.onstop = () => {
    for (const track of stream.getTracks()) track.stop();
    clearInterval(timer);
    recorder = null;
    showRecording(false);
    $("message").focus();
    if (!keepIt || !parts.length) return;
    const type = (rec.mimeType || mimeType || "audio/webm").split(";")[0];
    const ext = { "audio/ogg": "ogg", "audio/mp4": "m4a" }[type] || "webm";
    const stamp = new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");
    sendFile(new File(parts, `voice-${stamp}.${ext}`, { type }));
  };
  recorder = rec;
  rec.start(1000); // a part each second: a long recording is not one growing buffer
  const clock = $("recording-time");
  clock.textContent = "0:00";
  timer = setInterval(() => { clock.textContent = elapsed(since); }, 500);
  showRecording(true);
  $("recording-stop").focus();
}

function end(send) {
  if (!recorder) return;
  keepIt = send;
  recorder.stop();
}

export function initRecord() {
  $("record").addEventListener("click", begin);
  $("recording-stop").addEventListener("click", () => end(true));
  $("recording-cancel").addEventListener("click", () => end(false));
  // Esc cancels a recording before it would stop an answer (capture: first).
  window.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && recorder) {
      e.preventDefault();
      e.stopPropagation();
      end(false);
    }
  }, true);
}
