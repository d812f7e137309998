// gofiddle browser editor: wires the editor, the WebSocket protocol and the page.

import "./style.css";
import { Editor } from "./editor.js";
import { Connection, wsUrlFor } from "./connection.js";
import { OutputPanel } from "./output.js";
import { EXAMPLES, DEFAULT_SOURCE, findExample } from "./examples.js";
import {
  queueText, phaseLabel, describeDone, describeTimings, formatElapsed, newId, formatBytes,
} from "./format.js";

const $ = (sel) => document.querySelector(sel);
const NOOP_EL = {
  setAttribute() {}, removeAttribute() {}, addEventListener() {}, focus() {}, select() {},
  classList: { add() {}, remove() {}, toggle() {} }, dataset: {}, hidden: true, value: "", textContent: "",
};
/** Like $, but never null: elements left out of the embed page become no-ops. */
const $$ = (sel) => document.querySelector(sel) || NOOP_EL;

// ---------------------------------------------------------------- settings
const KEYS = { source: "gofiddle.source", theme: "gofiddle.theme", vim: "gofiddle.vim", check: "gofiddle.liveCheck" };

const store = {
  get(key) {
    try { return window.localStorage.getItem(key); } catch { return null; }
  },
  set(key, value) {
    try {
      if (value === null || value === undefined) window.localStorage.removeItem(key);
      else window.localStorage.setItem(key, value);
    } catch { /* storage full or disabled: settings just do not persist */ }
  },
};

function readJSON(id) {
  const el = document.getElementById(id);
  if (!el) return null;
  try { return JSON.parse(el.textContent || "null"); } catch { return null; }
}

const config = Object.assign({ snippet_id: null, embed: false, go_version: "" }, readJSON("config") || {});
const snippetSource = readJSON("snippet");
const embed = !!config.embed || document.documentElement.classList.contains("embed");

// ---------------------------------------------------------------- theme
const darkQuery = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

function themeIsDark() {
  const saved = store.get(KEYS.theme);
  if (saved === "dark") return true;
  if (saved === "light") return false;
  return !!(darkQuery && darkQuery.matches);
}

function applyTheme() {
  const dark = themeIsDark();
  const root = document.documentElement;
  root.dataset.theme = dark ? "dark" : "light";
  root.style.colorScheme = dark ? "dark" : "light";
  const btn = $("#theme");
  if (btn) {
    btn.setAttribute("aria-pressed", String(dark));
    btn.title = dark ? "Switch to light theme" : "Switch to dark theme";
  }
  if (editor) editor.setDark(dark);
}

// ---------------------------------------------------------------- editor
let editor = null;
let saveTimer = null;
let checkTimer = null;

function initialSource() {
  if (typeof snippetSource === "string") return snippetSource;
  if (!embed) {
    const saved = store.get(KEYS.source);
    if (saved !== null && saved !== "") return saved;
  }
  return DEFAULT_SOURCE;
}

const vimSaved = store.get(KEYS.vim) === "on";

editor = new Editor($("#editor"), {
  doc: initialSource(),
  dark: themeIsDark(),
  vim: vimSaved,
  onChange() {
    if (!embed) {
      clearTimeout(saveTimer);
      saveTimer = setTimeout(() => store.set(KEYS.source, editor.text), 250);
    }
    scheduleCheck();
    if (shareState.url && editor.text !== shareState.source) $$("#share-url").classList.add("stale");
  },
});
applyTheme();
if (darkQuery) {
  const onScheme = () => { if (!store.get(KEYS.theme)) applyTheme(); };
  if (darkQuery.addEventListener) darkQuery.addEventListener("change", onScheme);
}
window.addEventListener("beforeunload", () => {
  if (!embed) store.set(KEYS.source, editor.text);
});

// ---------------------------------------------------------------- output & status
const output = new OutputPanel($("#output"));
const statusEl = $("#status");
const queueEl = $("#queue");
const elapsedEl = $("#elapsed");
const connEl = $("#conn");
const stdinEl = $("#stdin");
const stdinEofEl = $("#stdin-eof");
const runBtn = $("#run");
const stopBtn = $("#stop");

let limits = {};
let connState = "connecting";
let connInfo = {};

const timingsEl = $("#timings");

function setStatus(text, { tone = "muted", status = "", timings = "" } = {}) {
  statusEl.textContent = text;
  timingsEl.textContent = timings;
  statusEl.dataset.tone = tone;
  if (status) statusEl.dataset.status = status;
  else delete statusEl.dataset.status;
}

// ---------------------------------------------------------------- the job
/** The one job in flight (this session has at most one). */
let job = null;
let elapsedTimer = null;
let pendingRun = null; // a run pressed while disconnected, sent on reconnect
let runCount = 0;

function jobActive() { return job !== null && !job.finished; }

function setPhase(phase) {
  if (!job) return;
  job.phase = phase;
  document.body.dataset.phase = phase;
  statusEl.dataset.phase = phase;
  refreshJobStatus();
  updateStdinEnabled();
}

function refreshJobStatus() {
  if (!jobActive()) return;
  if (job.stopping) {
    setStatus("Stopping…", { tone: "busy" });
  } else if (job.phase === "sending") {
    setStatus(connState === "open" ? "Sending…" : "Waiting for the connection…", { tone: "busy" });
  } else {
    setStatus(`${phaseLabel(job.phase)}…`, { tone: "busy" });
  }
}

function tickElapsed() {
  if (!jobActive()) return;
  elapsedEl.textContent = formatElapsed(performance.now() - job.t0);
  tickQueue();
}

function startJob(source) {
  if (job && !job.finished) editor.forget(job.id); // superseded: the server cancels it
  const id = newId("run");
  job = {
    id, source, phase: "sending", t0: performance.now(), diags: [], finished: false,
    stdinQueue: [], stopping: false, cancelTimer: null,
  };
  editor.snapshot(id);
  runCount++;
  document.body.dataset.runs = String(runCount);
  output.clear();
  clearDiagnostics();
  hideQueue();
  document.body.classList.add("busy");
  runBtn.setAttribute("aria-busy", "true");
  stopBtn.hidden = false;
  elapsedEl.textContent = formatElapsed(0);
  clearInterval(elapsedTimer);
  elapsedTimer = setInterval(tickElapsed, 100);
  setPhase("sending");
  return job;
}

function finishJob(text, tone, status, timings = "") {
  if (!job) return;
  job.finished = true;
  clearTimeout(job.cancelTimer);
  clearInterval(elapsedTimer);
  elapsedTimer = null;
  tickElapsedFinal();
  document.body.classList.remove("busy");
  document.body.dataset.phase = "done";
  statusEl.dataset.phase = "done";
  runBtn.removeAttribute("aria-busy");
  stopBtn.hidden = true;
  hideQueue();
  setStatus(text, { tone, status, timings });
  updateStdinEnabled();
  editor.forget(job.id);
}

function tickElapsedFinal() {
  if (job) elapsedEl.textContent = formatElapsed(performance.now() - job.t0);
}

function run() {
  const source = editor.text;
  if (limits.source_bytes && new TextEncoder().encode(source).length > limits.source_bytes) {
    setStatus(`The program is larger than ${formatBytes(limits.source_bytes)}.`, { tone: "error" });
    return;
  }
  clearTimeout(retryTimer);
  const j = startJob(source);
  const frame = { type: "run", id: j.id, source, mode: "run" };
  if (conn.isOpen) {
    conn.send(frame);
  } else {
    pendingRun = frame;
    conn.connectNow();
    refreshJobStatus();
  }
}

function stop() {
  if (!jobActive()) return;
  clearTimeout(retryTimer);
  if (pendingRun && pendingRun.id === job.id) {
    pendingRun = null;
    output.system("Cancelled.", "muted");
    finishJob("Cancelled", "muted", "cancelled");
    return;
  }
  job.stopping = true;
  refreshJobStatus();
  if (!conn.send({ type: "cancel", id: job.id })) {
    output.system("Cancelled.", "muted");
    finishJob("Cancelled", "muted", "cancelled");
    return;
  }
  // If the server never answers, do not leave the page stuck.
  const id = job.id;
  job.cancelTimer = setTimeout(() => {
    if (job && job.id === id && !job.finished) {
      output.system("Cancelled.", "muted");
      finishJob("Cancelled", "muted", "cancelled");
    }
  }, 5000);
}

// ---------------------------------------------------------------- queue
function showQueue(frame) {
  queueEl.hidden = false;
  const text = queueText(frame);
  queueEl.textContent = text;
  const moved = queueEl.dataset.position !== String(frame.position);
  queueEl.dataset.position = String(frame.position);
  const len = frame.queue_length;
  queueEl.title = len ? `${len} waiting in the queue` : "";
  if (job) {
    job.queueFrame = frame;
    job.etaAt = typeof frame.eta_ms === "number" ? performance.now() + frame.eta_ms : null;
  }
  if (moved) announce(text);
}

/** The ETA counts down between `queued` frames. */
function tickQueue() {
  if (!jobActive() || job.phase !== "queued" || !job.queueFrame || job.etaAt === null) return;
  const text = queueText({ ...job.queueFrame, eta_ms: Math.max(0, job.etaAt - performance.now()) });
  if (queueEl.textContent !== text) queueEl.textContent = text;
}

/** Say something to screen readers without repeating the ticking parts. */
function announce(text) {
  const el = $("#announce");
  if (el) el.textContent = text;
}

function hideQueue() {
  queueEl.hidden = true;
  queueEl.textContent = "";
  delete queueEl.dataset.position;
}

// ---------------------------------------------------------------- stdin
function updateStdinEnabled() {
  const on = jobActive() && !job.stopping && !job.stdinClosed;
  const wasDisabled = stdinEl.disabled;
  stdinEl.disabled = !on;
  stdinEofEl.disabled = !on;
  $("#stdin-form").classList.toggle("active", on);
  if (on && job && (job.phase === "run" || job.phase === "test")) {
    stdinEl.placeholder = "Type input for the program, Enter to send";
  } else if (on) {
    stdinEl.placeholder = "Input typed now is sent when the program starts";
  } else {
    stdinEl.placeholder = "Input for the program (while it runs)";
  }
  if (wasDisabled && !on) return;
}

function sendStdin(frame) {
  if (!jobActive()) return;
  if (job.phase === "run" || job.phase === "test") conn.send(frame);
  else job.stdinQueue.push(frame);
}

function flushStdin() {
  if (!jobActive()) return;
  const q = job.stdinQueue;
  job.stdinQueue = [];
  for (const f of q) conn.send(f);
}

$("#stdin-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  if (!jobActive()) return;
  const line = stdinEl.value;
  stdinEl.value = "";
  output.echo(line + "\n");
  sendStdin({ type: "stdin", id: job.id, data: line + "\n" });
});

function sendEof() {
  if (!jobActive() || job.stdinClosed) return;
  if (stdinEl.value) {
    const rest = stdinEl.value;
    stdinEl.value = "";
    output.echo(rest);
    sendStdin({ type: "stdin", id: job.id, data: rest });
  }
  sendStdin({ type: "stdin", id: job.id, eof: true });
  output.echo("⏎ EOF\n");
  job.stdinClosed = true;
  updateStdinEnabled();
}

stdinEofEl.addEventListener("click", sendEof);
stdinEl.addEventListener("keydown", (ev) => {
  if ((ev.ctrlKey || ev.metaKey) && (ev.key === "d" || ev.key === "D")) {
    ev.preventDefault();
    sendEof();
  } else if (ev.key === "Escape") {
    ev.preventDefault();
    editor.focus();
  }
});

// ---------------------------------------------------------------- diagnostics
let shownDiagnostics = [];

function clearDiagnostics() {
  renderDiagnostics([]);
}

function renderDiagnostics(located) {
  shownDiagnostics = located;
  editor.showDiagnostics(located);
  const box = $("#diagnostics");
  const list = $("#diagnostics-list");
  list.textContent = "";
  if (!located.length) {
    box.hidden = true;
    $("#diagnostics-count").textContent = "";
    return;
  }
  box.hidden = false;
  const errors = located.filter((d) => d.severity === "error").length;
  const warnings = located.length - errors;
  const parts = [];
  if (errors) parts.push(`${errors} error${errors === 1 ? "" : "s"}`);
  if (warnings) parts.push(`${warnings} warning${warnings === 1 ? "" : "s"}`);
  $("#diagnostics-count").textContent = parts.join(", ");
  const frag = document.createDocumentFragment();
  for (const d of located.slice(0, 200)) {
    const li = document.createElement("li");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = `diag ${d.severity}`;
    btn.dataset.line = String(d.from !== null ? editor.lineOf(d.from) : "");
    const where = document.createElement("span");
    where.className = "where";
    const col = Number(d.col) || 0;
    where.textContent = `${d.file || "prog.go"}:${d.line}${col ? ":" + col : ""}`;
    const msg = document.createElement("span");
    msg.className = "msg";
    msg.textContent = d.message;
    const sev = document.createElement("span");
    sev.className = "sev";
    sev.setAttribute("aria-label", d.severity);
    sev.textContent = d.severity === "error" ? "✖" : "⚠";
    btn.append(sev, where, msg);
    if (d.from !== null) {
      btn.title = "Go to this line";
      btn.addEventListener("click", () => editor.goTo(d.from));
    } else {
      btn.disabled = true;
    }
    li.appendChild(btn);
    frag.appendChild(li);
  }
  list.appendChild(frag);
}

// Live type-checking while typing (debounced).
let liveCheck = store.get(KEYS.check) !== "off";
let checkId = null;

function scheduleCheck() {
  clearTimeout(checkTimer);
  if (!liveCheck) return;
  checkTimer = setTimeout(sendCheck, 600);
}

function sendCheck() {
  if (!liveCheck || !conn.isOpen || jobActive()) return;
  const source = editor.text;
  if (limits.source_bytes && source.length > limits.source_bytes) return;
  if (checkId) editor.forget(checkId);
  checkId = newId("chk");
  editor.snapshot(checkId);
  conn.send({ type: "check", id: checkId, source });
}

// ---------------------------------------------------------------- format & share
let formatId = null;
const shareState = { id: null, url: null, source: null };

function format() {
  if (!conn.isOpen) {
    setStatus("Not connected: cannot format right now.", { tone: "error" });
    conn.connectNow();
    return;
  }
  if (formatId) editor.forget(formatId);
  formatId = newId("fmt");
  editor.snapshot(formatId);
  $("#format").setAttribute("aria-busy", "true");
  conn.send({ type: "format", id: formatId, source: editor.text, imports: true });
}

function share() {
  if (!conn.isOpen) {
    setStatus("Not connected: cannot share right now.", { tone: "error" });
    conn.connectNow();
    return;
  }
  shareState.id = newId("shr");
  shareState.source = editor.text;
  $$("#share").setAttribute("aria-busy", "true");
  conn.send({ type: "share", id: shareState.id, source: shareState.source });
}

async function showShared(frame) {
  $$("#share").removeAttribute("aria-busy");
  let url = frame.url || `/p/${frame.snippet}`;
  try { url = new URL(url, window.location.href).href; } catch { /* keep as is */ }
  shareState.url = url;
  const bar = $$("#sharebar");
  const input = $$("#share-url");
  const open = $$("#share-open");
  bar.hidden = false;
  input.value = url;
  input.classList.remove("stale");
  if (open) open.href = url;
  const msg = $$("#share-msg");
  let copied = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(url);
      copied = true;
    }
  } catch { /* permission denied: the link is shown anyway */ }
  msg.textContent = copied ? "Link copied to the clipboard." : "Copy this link to share your code.";
  if (!copied) {
    input.focus();
    input.select();
  }
}

$$("#share-copy").addEventListener("click", async () => {
  const input = $$("#share-url");
  let ok = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(input.value);
      ok = true;
    }
  } catch { /* fall through */ }
  if (!ok) {
    input.focus();
    input.select();
    try { ok = document.execCommand("copy"); } catch { ok = false; }
  }
  $$("#share-msg").textContent = ok ? "Link copied to the clipboard." : "Press Ctrl+C to copy the selected link.";
});
$$("#share-close").addEventListener("click", () => { $$("#sharebar").hidden = true; $$("#share").focus(); });

// ---------------------------------------------------------------- protocol
let retryTimer = null;
let busyRetries = 0;

function onFrame(f) {
  switch (f.type) {
    case "hello": {
      limits = f.limits || {};
      if (f.go_version) $("#go-version").textContent = f.go_version;
      if (pendingRun) {
        const frame = pendingRun;
        pendingRun = null;
        if (jobActive() && job.id === frame.id) {
          conn.send(frame);
          refreshJobStatus();
        }
      } else if (!jobActive()) {
        if (f.ready === false) setStatus("Connected: the server is still warming up, so the first run may be slow.", { tone: "muted" });
        else setStatus("Ready", { tone: "ok" });
      }
      break;
    }
    case "queued":
      if (!jobActive() || f.id !== job.id) break;
      if (job.phase === "sending" || job.phase === "queued") setPhase("queued");
      showQueue(f);
      break;
    case "started":
      if (!jobActive() || f.id !== job.id) break;
      hideQueue();
      setPhase(f.phase || "build");
      if (f.phase === "run" || f.phase === "test") flushStdin();
      break;
    case "diagnostics":
      if (!job || f.id !== job.id) break;
      job.diags.push(...(f.items || []).map((d) => ({ ...d, phase: d.phase || f.phase })));
      renderDiagnostics(editor.locate(job.diags, job.id));
      break;
    case "output":
      if (!job || f.id !== job.id) break;
      output.append(f.stream, f.data);
      break;
    case "done":
      if (!job || f.id !== job.id || job.finished) break;
      onDone(f);
      break;
    case "formatted":
      if (f.id !== formatId) break;
      onFormatted(f);
      break;
    case "checked":
      if (f.id !== checkId) break;
      if (jobActive()) break; // the run's own diagnostics win
      if (!job || job.finished) {
        renderDiagnostics(editor.locate((f.diagnostics || []).map((d) => ({ ...d, phase: "check" })), f.id));
      }
      editor.forget(f.id);
      checkId = null;
      break;
    case "shared":
      if (f.id !== shareState.id) break;
      showShared(f);
      break;
    case "error":
      onError(f);
      break;
    case "pong":
    default:
      break;
  }
}

function onDone(f) {
  const d = describeDone(f, limits);
  const timings = describeTimings(f);
  output.flush();
  let sentence = d.sentence;
  if (job.diags.length) {
    // Compiler and vet findings, as `go build` prints them, under any output.
    const lines = job.diags.map((x) => `${x.file || "prog.go"}:${x.line}${Number(x.col) ? ":" + x.col : ""}: ${x.message}`);
    output.append("stderr", lines.join("\n") + "\n");
  } else if (f.message && f.status !== "ok") {
    sentence = sentence ? `${sentence} ${f.message}` : f.message;
  }
  if (sentence) output.system(sentence, d.tone);
  const label = f.status === "exit" ? `Exit status ${f.exit_code}` : d.label;
  finishJob(label, d.tone, f.status, timings);
  statusEl.dataset.exitCode = f.exit_code !== undefined && f.exit_code !== null ? String(f.exit_code) : "";
  statusEl.dataset.cached = f.cached ? "true" : "false";
}

function onFormatted(f) {
  $("#format").removeAttribute("aria-busy");
  const diags = f.diagnostics || [];
  if (diags.length) {
    renderDiagnostics(editor.locate(diags.map((d) => ({ ...d, phase: "format" })), f.id));
    setStatus("Format: fix the syntax errors first.", { tone: "error" });
  } else {
    const snap = editor.snapshots.get(f.id);
    const untouched = snap && snap.changes.empty;
    if (!untouched) {
      setStatus("Not formatted: the code changed while formatting. Try again.", { tone: "warn" });
    } else if (typeof f.source === "string") {
      editor.setText(f.source, { keepCursor: true });
      if (!jobActive()) clearDiagnostics();
      setStatus("Formatted", { tone: "ok" });
    }
  }
  editor.forget(f.id);
  formatId = null;
}

function onError(f) {
  const msg = f.message || f.code || "error";
  if (f.id && f.id === checkId) {
    if (f.code === "bad_request") liveCheck = false; // server does not support check
    editor.forget(checkId);
    checkId = null;
    return;
  }
  if (f.id && f.id === formatId) {
    $("#format").removeAttribute("aria-busy");
    formatId = null;
    setStatus(`Format failed: ${msg}`, { tone: "error" });
    return;
  }
  if (f.id && f.id === shareState.id) {
    $$("#share").removeAttribute("aria-busy");
    setStatus(`Share failed: ${msg}`, { tone: "error" });
    return;
  }
  if (jobActive() && (!f.id || f.id === job.id)) {
    if (f.id === job.id && f.code === "busy" && busyRetries < 5) {
      busyRetries++;
      const wait = Math.max(500, Number(f.retry_after_ms) || 2000);
      const source = job.source;
      setStatus(`Server busy: queue full. Retrying in ${Math.ceil(wait / 1000)} s…`, { tone: "warn" });
      clearTimeout(retryTimer);
      retryTimer = setTimeout(() => {
        if (!jobActive() || job.source !== source) return;
        const frame = { type: "run", id: newId("run"), source, mode: "run" };
        editor.forget(job.id);
        job.id = frame.id;
        editor.snapshot(job.id);
        conn.send(frame);
      }, wait);
      return;
    }
    busyRetries = 0;
    let text = msg;
    if (f.retry_after_ms) text += ` (try again in ${Math.ceil(f.retry_after_ms / 1000)} s)`;
    output.system(text, "error");
    finishJob(text, "error", f.code || "error");
    return;
  }
  if (f.id && f.id.startsWith("ping")) return;
  setStatus(msg, { tone: "error" });
}

function onConnState(state, info) {
  connState = state;
  connInfo = info;
  connEl.dataset.state = state;
  const label = state === "open" ? "Connected" : state === "connecting" ? "Connecting…" : "Disconnected";
  connEl.title = label;
  connEl.setAttribute("aria-label", label);
  document.body.dataset.conn = state;
  if (state === "open") {
    $("#conn-text").textContent = "";
    return;
  }
  if (state === "closed") {
    if (jobActive() && !(pendingRun && pendingRun.id === job.id)) {
      // Closing the socket cancels the job on the server.
      output.system("Connection lost: the run was stopped. Press Run to try again.", "error");
      finishJob("Connection lost", "error", "disconnected");
    }
    if (checkId) { editor.forget(checkId); checkId = null; }
    if (formatId) { editor.forget(formatId); formatId = null; $("#format").removeAttribute("aria-busy"); }
    $$("#share").removeAttribute("aria-busy");
    const secs = info.retryInMs ? Math.max(1, Math.round(info.retryInMs / 1000)) : 0;
    $("#conn-text").textContent = secs ? `Reconnecting in ${secs} s` : "Offline";
    if (!jobActive()) setStatus("Disconnected: your code is kept; reconnecting…", { tone: "warn" });
  } else {
    $("#conn-text").textContent = "Connecting…";
    if (!jobActive()) setStatus("Connecting…", { tone: "muted" });
  }
}

const conn = new Connection({ url: wsUrlFor(window.location), onFrame, onState: onConnState });
conn.connect();
window.addEventListener("online", () => conn.connectNow());
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") conn.connectNow();
});
$("#conn").addEventListener("click", () => conn.connectNow());

// ---------------------------------------------------------------- toolbar
runBtn.addEventListener("click", () => { busyRetries = 0; run(); });
stopBtn.addEventListener("click", () => { stop(); runBtn.focus(); });
$("#format").addEventListener("click", format);
const shareBtn = $("#share");
if (shareBtn) shareBtn.addEventListener("click", share);

const examplesEl = $("#examples");
if (examplesEl) {
  for (const ex of EXAMPLES) {
    const opt = document.createElement("option");
    opt.value = ex.id;
    opt.textContent = ex.title;
    examplesEl.appendChild(opt);
  }
  examplesEl.addEventListener("change", () => {
    const ex = findExample(examplesEl.value);
    examplesEl.value = "";
    if (!ex) return;
    editor.setText(ex.source);
    clearDiagnostics();
    setStatus(`Loaded “${ex.title}”. Ctrl+Z brings your previous code back.`, { tone: "muted" });
    editor.focus();
  });
}

$("#theme").addEventListener("click", () => {
  store.set(KEYS.theme, themeIsDark() ? "light" : "dark");
  applyTheme();
});

const vimBtn = $("#vim");
if (vimBtn) {
  vimBtn.setAttribute("aria-pressed", String(vimSaved));
  vimBtn.addEventListener("click", () => {
    const on = vimBtn.getAttribute("aria-pressed") !== "true";
    vimBtn.setAttribute("aria-pressed", String(on));
    store.set(KEYS.vim, on ? "on" : "off");
    editor.setVim(on).then(() => {
      document.body.dataset.vim = editor.vimOn ? "on" : "off";
      editor.focus();
    });
  });
}

// Global shortcuts (capture phase, so they work in the editor, also in Vim mode).
window.addEventListener("keydown", (ev) => {
  if ((ev.ctrlKey || ev.metaKey) && !ev.altKey && !ev.shiftKey && ev.key === "Enter") {
    if (ev.target === stdinEl) return; // Enter in stdin sends the line
    ev.preventDefault();
    ev.stopPropagation();
    busyRetries = 0;
    run();
  } else if (ev.shiftKey && ev.altKey && !ev.ctrlKey && !ev.metaKey && ev.code === "KeyF") {
    ev.preventDefault();
    ev.stopPropagation();
    format();
  }
}, true);

// ---------------------------------------------------------------- start
setStatus("Connecting…", { tone: "muted" });
updateStdinEnabled();
document.body.dataset.phase = "idle";
statusEl.dataset.phase = "idle";
if (!embed && !snippetSource) editor.focus();

// For tests and debugging.
window.gofiddle = {
  get editor() { return editor; },
  get conn() { return conn; },
  get job() { return job; },
  output,
  setText: (text) => editor.setText(text),
  getText: () => editor.text,
  get diagnostics() { return shownDiagnostics; },
};
