// The livereel page: wires the UI to a Stream. Holds no model logic.
//
// window.livereel exposes the stream and a small state object for tests and the
// console: state.applied / state.errors list the server's replies as they come.

import { Stream } from "./stream.js";

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

const PAN_KEYS = {
  w: "up", arrowup: "up", s: "down", arrowdown: "down",
  a: "left", arrowleft: "left", d: "right", arrowright: "right",
  "+": "in", "=": "in", "-": "out", _: "out",
};
const MAX_EVENTS = 12;
const MAX_TRANSITION_CHUNKS = 16; // streamer/controls.py: the longest blend the server takes
// Fields where keys type text; everywhere else (slider, menu, buttons, checkbox) they steer.
const TEXT_TYPES = new Set(["text", "number", "search", "email", "url", "tel", "password"]);

const state = {
  connection: "closed",
  session: null,
  hello: null,
  prompt: "",
  paused: false,
  applied: [],
  errors: [],
  stats: null,
  video: null,
  controlLatency: [], // {what, sent, applied, shown} in ms since page load
};
const held = new Set(); // directions held now, from keys and buttons
let lastCamera = "[0,0]0";
const pending = new Map(); // what -> {what, sent} awaiting "applied"

const video = $("video");
const stream = new Stream(video);
window.livereel = { stream, state };

// A server started with --token needs it on /ws, /config.json and the logs: the page
// passes on the one in its own address (http://host:port/?token=...).
const token = params.get("token");
const withToken = (path) => (token ? `${path}?token=${encodeURIComponent(token)}` : path);

// ---------------------------------------------------------------- connection

async function connect() {
  const reply = await fetch(withToken("config.json")).catch(() => null);
  if (reply && (reply.status === 401 || reply.status === 403)) {
    const why = await reply.json().catch(() => ({}));
    showError(`Not allowed: ${why.detail ?? reply.statusText}`);
    $("veil-text").textContent = "Not allowed";
    return;
  }
  const config = reply && reply.ok ? await reply.json().catch(() => ({})) : {};
  stream.iceServers = config.iceServers ?? [];
  const prompt = $("prompt").value.trim() || params.get("prompt") || config.prompt || "";
  const seedText = $("seed").value || params.get("seed") || "";
  const seed = seedText === "" ? undefined : Number(seedText);
  $("prompt").value = prompt;
  Object.assign(state, { session: null, hello: null, paused: false });
  showError("");
  try {
    await stream.connect({ prompt, seed, token });
  } catch (err) {
    // A refused offer or a closed socket has already said why (the "state" event).
    if (stream.state === "connecting") showError(`Cannot connect: ${err.message}`);
  }
}

stream.addEventListener("state", (e) => {
  const { state: s, error } = e.detail;
  const reason = error ? errorWords(error) : e.detail.reason;
  state.connection = s;
  const pill = $("state");
  pill.dataset.state = s;
  pill.textContent =
    { connecting: "connecting", live: "live", reconnecting: "reconnecting", closed: "offline", failed: "error" }[s] ?? s;
  $("veil").hidden = s === "live";
  $("veil-text").textContent =
    s === "connecting" ? "Connecting…" : s === "reconnecting" ? "Reconnecting…" : s === "live" ? ""
      : reason ? `${reason} Reconnect to start again.` : "Offline";
  if (s === "connecting" || s === "reconnecting" || s === "live") showError("");
  else if (reason) showError(reason);
  if (s !== "live") releaseAll();
});

stream.addEventListener("message", (e) => {
  const msg = e.detail;
  switch (msg.type) {
    case "queued": // cluster mode, every worker full: this viewer waits in line for a place
      if (stream.state === "connecting" || stream.state === "reconnecting") {
        $("veil-text").textContent = queueWords(msg.position);
      }
      logEvent(`queued #${msg.position}`, msg.detail);
      break;
    case "answer": // cluster mode names the worker (again after a move)
      state.worker = msg.worker ?? null;
      $("worker").hidden = !msg.worker;
      $("worker").textContent = msg.worker ? `· worker ${msg.worker}` : "";
      break;
    case "hello":
      state.hello = msg;
      state.session = msg.session;
      state.prompt = msg.prompt;
      $("seed").value = msg.seed;
      $("model").textContent = `${msg.model} · ${msg.width ? `${msg.width}×${msg.size}` : msg.size}px · ${msg.fps} fps`;
      setCameraEnabled(msg.camera !== false, msg.camera_note);
      $("caption").textContent = msg.prompt;
      showVocabulary(msg.vocabulary);
      showWords(msg.words, msg.reads);
      const link = $("download");
      link.href = withToken(`sessions/${encodeURIComponent(msg.session)}/log.jsonl`);
      link.setAttribute("download", `livereel-${msg.session}.jsonl`);
      link.removeAttribute("aria-disabled");
      break;
    case "applied":
      onApplied(msg);
      break;
    case "stats":
      state.stats = msg;
      $("s-chunk").textContent = `${msg.chunk_ms.toFixed(0)} ms`;
      $("s-chunk").title = `${msg.chunk} chunks made`;
      $("s-frame").textContent = msg.frame;
      $("s-held").textContent = msg.held;
      break;
    case "error":
      state.errors.push(msg);
      showError(errorWords(msg));
      logEvent(`error ${msg.code}`, msg.detail, "bad");
      break;
  }
});

function onApplied(msg) {
  const now = performance.now();
  state.applied.push({ ...msg, at: now });
  const wait = pending.get(msg.what);
  if (wait) {
    pending.delete(msg.what);
    const entry = { what: msg.what, sent: wait.sent, applied: now, shown: null };
    state.controlLatency.push(entry);
    waitingForFrame.push(entry);
  }
  let text = "";
  if (msg.what === "prompt") {
    state.prompt = msg.text;
    $("caption").textContent = msg.text;
    showWords(msg.words, msg.reads);
    text = msg.text;
  } else if (msg.what === "camera") {
    text = `pan ${msg.pan.map((v) => v.toFixed(2)).join(", ")} · zoom ${msg.zoom.toFixed(2)}`;
  } else if (msg.what === "reset") {
    text = `seed ${msg.seed}`;
  } else {
    state.paused = msg.what === "pause";
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    $("badge").hidden = !state.paused;
    $("badge").textContent = "paused";
  }
  logEvent(`${msg.what} @ ${msg.frame}`, text);
}

// The first frame presented after an "applied" is the first one made under it.
const waitingForFrame = [];
stream.addEventListener("frame", (e) => {
  const { now, metadata } = e.detail;
  const received = metadata.receiveTime ?? now;
  while (waitingForFrame.length && received >= waitingForFrame[0].applied - 5) {
    waitingForFrame.shift().shown = now;
  }
});

function send(message) {
  if (!stream.send(message)) {
    showError("Not connected.");
    return false;
  }
  pending.set(message.type, { sent: performance.now() });
  return true;
}

// ---------------------------------------------------------------- controls

$("prompt-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("prompt").value.trim();
  if (!text) return;
  if (text === state.prompt) {
    showNote("Already showing this prompt: change the text, or Reset for a new take.");
    return;
  }
  if (send({ type: "prompt", text, transition: transitionChunks() })) showNote("");
  $("prompt").blur(); // keys steer the camera again; "/" comes back here
});
$("prompt").addEventListener("input", () => showNote(""));
$("prompt").addEventListener("keydown", (e) => e.key === "Escape" && $("prompt").blur());

// The menu speaks seconds, the protocol chunks: round to the model's chunks, at least one.
function transitionChunks() {
  const seconds = Number($("transition").value);
  const hello = state.hello;
  if (!seconds || !hello) return 0;
  const chunks = Math.round((seconds * hello.fps) / hello.frames_per_chunk);
  return Math.min(MAX_TRANSITION_CHUNKS, Math.max(1, chunks));
}

$("pause").addEventListener("click", togglePause);
function togglePause() {
  send({ type: state.paused ? "resume" : "pause" });
}

$("reset").addEventListener("click", () => {
  let seed = Number($("seed").value);
  if (!Number.isInteger(seed) || seed < 0 || seed > 4294967295) {
    seed = Math.floor(Math.random() * 2 ** 32);
    $("seed").value = seed;
  }
  send({ type: "reset", seed });
});

$("reconnect").addEventListener("click", connect);

$("speed").addEventListener("input", () => {
  $("speed-out").textContent = Number($("speed").value).toFixed(2);
  sendCamera();
});

$("smooth").addEventListener("change", () => $("screen").classList.toggle("smooth", $("smooth").checked));

// A model without camera input (a Wan text-to-video model) greys the pad, with the reason.
function setCameraEnabled(on, note) {
  state.camera = on;
  for (const b of document.querySelectorAll(".hold")) b.disabled = !on;
  $("speed").disabled = !on;
  $("camera-card").classList.toggle("disabled", !on);
  $("camera-now").textContent = on ? "still" : note || "this model takes no camera input";
}

function sendCamera() {
  if (state.camera === false) return;
  const v = Number($("speed").value);
  const x = (held.has("right") - held.has("left")) * v;
  const y = (held.has("down") - held.has("up")) * v;
  const zoom = (held.has("in") - held.has("out")) * v;
  const key = `[${x},${y}]${zoom}`;
  // While reconnecting the stream keeps it for the next worker (releaseAll's stop, too).
  if (key === lastCamera || (stream.state !== "live" && stream.state !== "reconnecting")) return;
  lastCamera = key;
  send({ type: "camera", pan: [x, y], zoom });
  $("camera-now").textContent = key === "[0,0]0" ? "still" : `pan ${x.toFixed(2)}, ${y.toFixed(2)} · zoom ${zoom.toFixed(2)}`;
  for (const b of document.querySelectorAll(".hold")) b.classList.toggle("on", held.has(b.dataset.key));
}

function press(dir) {
  if (!held.has(dir)) {
    held.add(dir);
    sendCamera();
  }
}

function release(dir) {
  if (held.delete(dir)) sendCamera();
}

function releaseAll() {
  if (held.size) {
    held.clear();
    sendCamera();
  }
  lastCamera = "[0,0]0";
}

const typing = (el) =>
  el instanceof HTMLTextAreaElement || (el instanceof HTMLInputElement && TEXT_TYPES.has(el.type)) || el.isContentEditable;

// Keys steer wherever the focus is but in a text field: a focused slider, menu or button
// does not get them (arrows would move the slider, Space would click the button again).
window.addEventListener("keydown", (e) => {
  if (typing(e.target) || e.ctrlKey || e.metaKey || e.altKey) return;
  const dir = PAN_KEYS[e.key.toLowerCase()];
  if (dir) {
    e.preventDefault();
    press(dir);
  } else if (e.key === " ") {
    e.preventDefault();
    if (!e.repeat) togglePause();
  } else if (e.key === "/") {
    e.preventDefault();
    $("prompt").focus();
    $("prompt").select(); // typing replaces the prompt
  }
});
window.addEventListener("keyup", (e) => {
  const dir = PAN_KEYS[e.key.toLowerCase()];
  if (dir) release(dir);
  if (e.key === " " && !typing(e.target)) e.preventDefault(); // a button clicks on Space's keyup
});
window.addEventListener("blur", releaseAll);
document.addEventListener("visibilitychange", () => document.hidden && releaseAll());

for (const button of document.querySelectorAll(".hold")) {
  const dir = button.dataset.key;
  button.addEventListener("pointerdown", (e) => {
    button.setPointerCapture(e.pointerId);
    press(dir);
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
    button.addEventListener(type, () => release(dir));
  }
  button.addEventListener("contextmenu", (e) => e.preventDefault());
}

// ---------------------------------------------------------------- display

function showError(text, kind = "error") {
  const el = $("error");
  el.textContent = text;
  el.hidden = !text;
  el.dataset.kind = kind;
}

// A note (not an error) in the same place; clearing one leaves an error shown.
function showNote(text) {
  if (text) showError(text, "note");
  else if ($("error").dataset.kind === "note") showError("");
}

// Where a queued viewer stands: `position` 1 is the next to get a place.
function queueWords(position) {
  return `Waiting for a free place: ${position > 1 ? `${position - 1} ahead` : "you are next"}`;
}

// Plain words for the server's error messages; the code and detail go to the event log.
function errorWords(msg) {
  if (msg.code === "server_full") {
    // "server full: <why>; try again in a moment": the why, as a sentence
    const why = /^server full: (.*?)(; try again.*)?$/.exec(msg.detail)?.[1] || "all sessions are in use";
    return `${why[0].toUpperCase()}${why.slice(1)}; try again in a moment.`;
  }
  if (msg.code === "rate_limited") return "Too many controls at once: some were dropped.";
  if (msg.code === "generation_failed") return "The model failed, so this session is over.";
  return `${msg.code}: ${msg.detail}`;
}

// A closed-vocabulary model (livereel's own) says what it made of each word of the
// prompt (hello and applied "words"): understood words with what they set, ignored ones
// marked, and every word it knows one click away. An open one (Wan) sends neither.
// `reads`: the prompt as the model reads it, where the prompt rewrite reworded it.
function showWords(words, reads) {
  const line = $("words-line");
  line.replaceChildren();
  $("words").hidden = !words;
  if (!words) return;
  const first = new Map(); // attribute -> the word that set it
  const ignored = [];
  for (const w of words) {
    const chip = document.createElement("span");
    chip.className = "word";
    chip.textContent = w.text;
    if (w.attribute && w.used) {
      first.set(w.attribute, w.text);
      chip.dataset.kind = "understood";
      chip.title = `understood: ${w.attribute} ${w.value}`;
      const what = document.createElement("small");
      what.textContent = w.value === w.text ? w.attribute : `${w.attribute} ${w.value}`;
      chip.append(what);
    } else if (w.attribute) {
      chip.dataset.kind = "overridden";
      chip.title = `${w.attribute} ${w.value}, but "${first.get(w.attribute) ?? "an earlier word"}" already set the ${w.attribute}`;
    } else if (w.stop) {
      chip.dataset.kind = "stop";
      chip.title = "a small word: fine, means nothing alone";
    } else {
      chip.dataset.kind = "ignored";
      chip.title = "not a word this model knows: ignored";
      ignored.push(w.text);
    }
    line.append(chip);
  }
  const summary = document.createElement("span");
  summary.className = "muted small";
  summary.textContent = ignored.length
    ? ` · ignored: ${ignored.join(", ")}`
    : first.size ? " · every word understood" : " · no word understood";
  line.append(summary);
  if (reads) {
    const reworded = document.createElement("span");
    reworded.id = "reads";
    reworded.className = "muted small";
    reworded.title = "the prompt reworded in the words this model was trained on (serve --no-rewrite: as typed)";
    reworded.textContent = ` · reads: “${reads}”`;
    line.append(reworded);
  }
}

function showVocabulary(vocabulary) {
  const list = $("vocab-list");
  list.replaceChildren();
  for (const [attribute, values] of Object.entries(vocabulary ?? {})) {
    const dt = document.createElement("dt");
    dt.textContent = attribute;
    const dd = document.createElement("dd");
    for (const [value, phrases] of Object.entries(values)) {
      const b = document.createElement("button");
      b.type = "button";
      b.className = "ghost";
      b.textContent = value;
      const word = phrases[0] ?? value; // a phrase that names this value (bare "snow" is the biome)
      const others = phrases.filter((p) => p !== value);
      b.title = others.length ? `${word === value ? "also" : "say"}: ${others.join(", ")}` : value;
      b.addEventListener("click", () => {
        const box = $("prompt");
        box.value = box.value.trim() ? `${box.value.trim()} ${word}` : word;
        box.focus();
      });
      dd.append(b);
    }
    list.append(dt, dd);
  }
}

function logEvent(title, detail = "", kind = "") {
  const li = document.createElement("li");
  li.className = kind;
  const b = document.createElement("b");
  b.textContent = title;
  li.append(b, document.createTextNode(detail ? ` ${detail}` : ""));
  const list = $("events");
  list.prepend(li);
  while (list.children.length > MAX_EVENTS) list.lastChild.remove();
}

// Stats from getStats once a second: delivered fps, and a latency estimate of
// server queue + jitter buffer + half the round trip.
let previous = null;
setInterval(async () => {
  const s = await stream.stats().catch(() => null);
  if (!s) return;
  if (previous && s.framesDecoded < previous.framesDecoded) previous = null; // a new session
  const fps = previous && s.time > previous.time
    ? ((s.framesDecoded - previous.framesDecoded) * 1000) / (s.time - previous.time)
    : s.framesPerSecond ?? 0;
  const jitter = s.jitterBufferEmittedCount
    ? ((s.jitterBufferDelay - (previous?.jitterBufferDelay ?? 0)) /
        Math.max(1, s.jitterBufferEmittedCount - (previous?.jitterBufferEmittedCount ?? 0))) * 1000
    : 0;
  const kbps = previous ? ((s.bytesReceived - previous.bytesReceived) * 8) / (s.time - previous.time) : 0;
  previous = s;
  const queued = state.stats && state.hello ? (state.stats.queued / state.hello.fps) * 1000 : 0;
  const latency = queued + jitter + (s.rtt ?? 0) * 500;
  state.video = { fps, jitterMs: jitter, queuedMs: queued, latencyMs: latency, kbps, codec: s.codec, width: s.width, height: s.height };
  $("s-fps").textContent = fps.toFixed(1);
  $("s-latency").textContent = `${latency.toFixed(0)} ms`;
  $("s-kbps").textContent = kbps.toFixed(0);
  $("s-video").textContent = `${s.codec} ${s.width}×${s.height} · session ${state.session ?? "–"}`;
}, 1000);

connect();
