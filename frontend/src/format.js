// Pure text helpers for the status bar (kept DOM-free so node --test can check them).

export function ordinal(n) {
  const v = Math.abs(Math.trunc(n));
  const mod100 = v % 100;
  if (mod100 >= 11 && mod100 <= 13) return `${n}th`;
  switch (v % 10) {
    case 1: return `${n}st`;
    case 2: return `${n}nd`;
    case 3: return `${n}rd`;
    default: return `${n}th`;
  }
}

/** "about 2 s", "about 1 min 5 s"; ms rounded up to whole seconds, minimum 1 s. */
export function formatEta(ms) {
  if (ms === undefined || ms === null || !isFinite(ms) || ms < 0) return "";
  const s = Math.max(1, Math.ceil(ms / 1000));
  if (s < 90) return `about ${s} s`;
  const m = Math.floor(s / 60);
  const r = s % 60;
  return r ? `about ${m} min ${r} s` : `about ${m} min`;
}

/** Text for a `queued` frame: "3rd in line, about 2 s". */
export function queueText(frame) {
  const pos = Number(frame.position) || 0;
  let text = pos <= 1 ? "Next in line" : `${ordinal(pos)} in line`;
  const eta = formatEta(frame.eta_ms);
  if (eta) text += `, ${eta}`;
  return text;
}

/** "850 ms", "1.2 s", "12 s" */
export function formatMs(ms) {
  const v = Number(ms) || 0;
  if (v < 1000) return `${Math.round(v)} ms`;
  if (v < 10000) return `${(v / 1000).toFixed(1)} s`;
  return `${Math.round(v / 1000)} s`;
}

/** Elapsed-time ticker text: "0.0 s", "12.3 s", "1:05". */
export function formatElapsed(ms) {
  const s = Math.max(0, ms) / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  const r = Math.floor(s % 60);
  return `${m}:${String(r).padStart(2, "0")}`;
}

export function formatBytes(n) {
  const v = Number(n) || 0;
  if (v >= 1024 * 1024 && v % (1024 * 1024) === 0) return `${v / (1024 * 1024)} MiB`;
  if (v >= 1024 * 1024) return `${(v / (1024 * 1024)).toFixed(1)} MiB`;
  if (v >= 1024 && v % 1024 === 0) return `${v / 1024} KiB`;
  if (v >= 1024) return `${(v / 1024).toFixed(1)} KiB`;
  return `${v} B`;
}

export const PHASES = {
  queued: "Queued",
  build: "Building",
  vet: "Vetting",
  run: "Running",
  test: "Testing",
};

export function phaseLabel(phase) {
  return PHASES[phase] || (phase ? phase[0].toUpperCase() + phase.slice(1) : "Working");
}

/**
 * A short label and a learner-friendly sentence for a `done` frame.
 * limits: the `hello.limits` object (may be empty).
 */
export function describeDone(done, limits = {}) {
  const code = done.exit_code;
  const secs = (x) => (x ? `${x} s` : "the limit");
  switch (done.status) {
    case "ok":
      return { label: "Finished", sentence: "Program exited.", tone: "ok" };
    case "exit":
      return { label: `Exit status ${code}`, sentence: `Program exited: status ${code}.`, tone: "warn" };
    case "build_failed":
      return { label: "Build failed", sentence: "Build failed.", tone: "error" };
    case "vet_failed":
      return { label: "Vet failed", sentence: "go vet found problems (as on the Go playground, vet findings stop the run).", tone: "error" };
    case "tests_failed":
      return { label: "Tests failed", sentence: "Some tests failed.", tone: "error" };
    case "timeout":
      return { label: "Timed out", sentence: `Timed out: the program ran longer than ${secs(limits.run_seconds)}.`, tone: "error" };
    case "output_limit":
      return { label: "Output limit", sentence: `Stopped: the program wrote more than ${limits.output_bytes ? formatBytes(limits.output_bytes) : "the output limit"}.`, tone: "error" };
    case "memory_limit":
      return { label: "Memory limit", sentence: `Stopped: the program used more than ${limits.memory_bytes ? formatBytes(limits.memory_bytes) : "the memory limit"} of memory.`, tone: "error" };
    case "cancelled":
      return { label: "Cancelled", sentence: "Cancelled.", tone: "muted" };
    case "expired":
      return { label: "Expired", sentence: "Waited too long in the queue; please try again.", tone: "error" };
    case "degraded":
      return { label: "Checked only", sentence: "The server is overloaded: your program was only type-checked, not run. Try again shortly.", tone: "warn" };
    case "internal_error":
      return { label: "Internal error", sentence: "Something went wrong on the server.", tone: "error" };
    default:
      return { label: String(done.status || "Done"), sentence: "", tone: "muted" };
  }
}

/** "queue 3 ms · build 450 ms · run 12 ms · cached" */
export function describeTimings(done) {
  const t = done.timings || {};
  const parts = [];
  if (t.queue_ms !== undefined && t.queue_ms !== null) parts.push(`queue ${formatMs(t.queue_ms)}`);
  if (t.build_ms !== undefined && t.build_ms !== null) parts.push(`build ${formatMs(t.build_ms)}`);
  if (t.run_ms !== undefined && t.run_ms !== null) parts.push(`run ${formatMs(t.run_ms)}`);
  if (done.cached) parts.push("cached build");
  return parts.join(" · ");
}

/** Reconnect delay: min(max, base * 2^attempt), with up to 30% jitter taken off. */
export function backoffDelay(attempt, { base = 250, max = 10000, random = Math.random } = {}) {
  const raw = Math.min(max, base * Math.pow(2, Math.max(0, attempt)));
  return Math.round(raw * (1 - 0.3 * random()));
}

let counter = 0;
/** A fresh job id (≤ 64 chars). */
export function newId(prefix = "r") {
  counter = (counter + 1) % 1e9;
  const rnd = Math.random().toString(36).slice(2, 10);
  return `${prefix}-${Date.now().toString(36)}-${counter}-${rnd}`;
}
