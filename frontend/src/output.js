// The output panel: appends streamed text in chunks, once per animation frame,
// with stdout/stderr told apart and ANSI colours rendered by ansi_up.
// Rendering is capped so a megabyte of output stays fast.

import { AnsiUp } from "ansi_up";

const ESC = "\x1b";
const FF = "\f"; // form feed clears the output, as on the Go playground
const SPAN_CHARS = 32 * 1024; // start a new span after this many characters

export class OutputPanel {
  /**
   * @param {HTMLElement} el  the scrolling container (#output)
   * @param {object} [opts]
   * @param {number} [opts.maxChars] rendered characters kept; older output is dropped
   */
  constructor(el, { maxChars = 2_000_000 } = {}) {
    this.el = el;
    this.maxChars = maxChars;
    this.pending = [];
    this.scheduled = false;
    this.rendered = 0;
    this.dropped = 0;
    this.ansi = { stdout: this._newAnsi(), stderr: this._newAnsi() };
    this.ansiOn = { stdout: false, stderr: false };
    this.notice = null;
    this.onFlush = null;
    this.chars = { stdout: 0, stderr: 0 };
  }

  _newAnsi() {
    const au = new AnsiUp();
    au.use_classes = true;
    au.escape_html = true;
    return au;
  }

  clear() {
    this.pending = [];
    this.el.textContent = "";
    this.rendered = 0;
    this.dropped = 0;
    this.notice = null;
    this.ansi = { stdout: this._newAnsi(), stderr: this._newAnsi() };
    this.ansiOn = { stdout: false, stderr: false };
    this.chars = { stdout: 0, stderr: 0 };
    this.el.classList.add("empty");
  }

  /** Program output. stream: "stdout" | "stderr". */
  append(stream, data) {
    if (!data) return;
    const s = stream === "stderr" ? "stderr" : "stdout";
    let text = String(data);
    const ff = text.lastIndexOf(FF);
    if (ff >= 0) {
      this.clear();
      text = text.slice(ff + 1);
      if (!text) return;
    }
    this.chars[s] += text.length;
    this._push(s, text);
  }

  /** Echo of what the user typed into stdin. */
  echo(text) {
    this._push("stdin", text);
  }

  /** A line from gofiddle itself (exit status, errors): kind "ok" | "warn" | "error" | "muted". */
  system(text, kind = "muted") {
    this._push(`system ${kind}`, text, true);
  }

  _push(cls, text, block = false) {
    const last = this.pending[this.pending.length - 1];
    if (last && last.cls === cls && !block && !last.block) last.text += text;
    else this.pending.push({ cls, text, block });
    this._schedule();
  }

  _schedule() {
    if (this.scheduled) return;
    this.scheduled = true;
    const run = () => {
      if (!this.scheduled) return;
      this.flush();
    };
    // rAF batches DOM work per frame; the timeout keeps hidden tabs moving.
    if (typeof requestAnimationFrame === "function") requestAnimationFrame(run);
    setTimeout(run, 120);
  }

  flush() {
    this.scheduled = false;
    if (!this.pending.length) return;
    const el = this.el;
    const nearBottom = el.scrollHeight - el.scrollTop - el.clientHeight < 48;
    const items = this.pending;
    this.pending = [];
    el.classList.remove("empty");
    for (const item of items) this._render(item);
    if (this.rendered > this.maxChars) this._trim();
    if (nearBottom) el.scrollTop = el.scrollHeight;
    if (this.onFlush) this.onFlush();
  }

  _render({ cls, text, block }) {
    const el = this.el;
    if (block) {
      const div = document.createElement("div");
      div.className = cls;
      div.textContent = text;
      el.appendChild(div);
      this.rendered += text.length;
      return;
    }
    let span = el.lastChild;
    if (!span || span.nodeType !== 1 || span.tagName !== "SPAN" || span.dataset.cls !== cls ||
        (span._chars || 0) > SPAN_CHARS) {
      span = document.createElement("span");
      span.className = cls;
      span.dataset.cls = cls;
      span._chars = 0;
      el.appendChild(span);
    }
    const stream = cls === "stderr" ? "stderr" : cls === "stdout" ? "stdout" : null;
    if (stream && (this.ansiOn[stream] || text.includes(ESC))) {
      this.ansiOn[stream] = true;
      const html = this.ansi[stream].ansi_to_html(text);
      if (html) span.insertAdjacentHTML("beforeend", html);
    } else {
      span.appendChild(document.createTextNode(text));
    }
    span._chars += text.length;
    this.rendered += text.length;
  }

  _trim() {
    const el = this.el;
    const target = Math.floor(this.maxChars * 0.75);
    while (this.rendered > target && el.firstChild) {
      const node = el.firstChild;
      if (node === this.notice) {
        el.removeChild(node);
        continue;
      }
      const n = node._chars !== undefined ? node._chars : (node.textContent || "").length;
      el.removeChild(node);
      this.rendered -= n;
      this.dropped += n;
    }
    if (!this.notice) {
      this.notice = document.createElement("div");
      this.notice.className = "system muted trimmed";
    }
    this.notice.textContent = `… ${Math.round(this.dropped / 1024)} KiB of earlier output not shown …`;
    el.insertBefore(this.notice, el.firstChild);
  }

  /** All rendered text (used by tests and "copy output"). */
  text() {
    this.flush();
    return this.el.textContent;
  }
}
