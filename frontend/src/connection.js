// WebSocket connection with auto-reconnect (exponential backoff), keepalive pings
// and a liveness watchdog. Knows nothing about the DOM.

import { backoffDelay } from "./format.js";

export class Connection {
  /**
   * @param {object} opts
   * @param {string} opts.url            ws(s)://host/ws
   * @param {(frame: object) => void} opts.onFrame
   * @param {(state: string, info: object) => void} opts.onState
   *        state: "connecting" | "open" | "closed"; info.retryInMs when a retry is scheduled
   */
  constructor({ url, onFrame, onState, WebSocketImpl, pingMs = 20000, staleMs = 50000, base = 250, max = 10000 }) {
    this.url = url;
    this.onFrame = onFrame;
    this.onState = onState || (() => {});
    this.WS = WebSocketImpl || globalThis.WebSocket;
    this.pingMs = pingMs;
    this.staleMs = staleMs;
    this.base = base;
    this.max = max;
    this.ws = null;
    this.state = "closed";
    this.attempt = 0;
    this.retryTimer = null;
    this.pingTimer = null;
    this.lastFrameAt = 0;
    this.stopped = false;
    this.hello = null;
  }

  connect() {
    this.stopped = false;
    if (this.ws && (this.state === "open" || this.state === "connecting")) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this._setState("connecting", { attempt: this.attempt });
    let ws;
    try {
      ws = new this.WS(this.url);
    } catch (err) {
      this._scheduleRetry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.lastFrameAt = Date.now();
      this._startPing();
    };
    ws.onmessage = (ev) => {
      if (this.ws !== ws) return;
      this.lastFrameAt = Date.now();
      let frame;
      try {
        frame = JSON.parse(ev.data);
      } catch {
        return;
      }
      if (!frame || typeof frame !== "object") return;
      if (frame.type === "hello") {
        this.attempt = 0;
        this.hello = frame;
        this._setState("open", { hello: frame });
      }
      try {
        this.onFrame(frame);
      } catch (err) {
        // A bug in a handler must not kill the connection.
        console.error("gofiddle: frame handler failed", err);
      }
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this._dropped();
    };
    ws.onerror = () => {
      // onclose follows.
    };
  }

  /** Connect now, skipping any pending backoff (e.g. the user pressed Run). */
  connectNow() {
    if (this.state === "open" || this.state === "connecting") return;
    this.attempt = 0;
    this.connect();
  }

  get isOpen() {
    return this.state === "open" && this.ws && this.ws.readyState === 1;
  }

  send(obj) {
    if (!this.ws || this.ws.readyState !== 1) return false;
    try {
      this.ws.send(JSON.stringify(obj));
      return true;
    } catch {
      return false;
    }
  }

  close() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this._stopPing();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      try { ws.close(); } catch { /* ignore */ }
    }
    this._setState("closed", {});
  }

  _dropped() {
    this._stopPing();
    const ws = this.ws;
    this.ws = null;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      try { ws.close(); } catch { /* ignore */ }
    }
    if (this.stopped) {
      this._setState("closed", {});
      return;
    }
    this._scheduleRetry();
  }

  _scheduleRetry() {
    const delay = backoffDelay(this.attempt, { base: this.base, max: this.max });
    this.attempt++;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null;
      this.connect();
    }, delay);
    this._setState("closed", { retryInMs: delay, retryAt: Date.now() + delay, attempt: this.attempt });
  }

  _startPing() {
    this._stopPing();
    this.pingTimer = setInterval(() => {
      if (!this.ws || this.ws.readyState !== 1) return;
      if (Date.now() - this.lastFrameAt > this.staleMs) {
        // Nothing heard (not even a pong) for too long: the link is dead.
        this._dropped();
        return;
      }
      this.send({ type: "ping", id: `ping-${Date.now().toString(36)}` });
    }, this.pingMs);
  }

  _stopPing() {
    clearInterval(this.pingTimer);
    this.pingTimer = null;
  }

  _setState(state, info) {
    this.state = state;
    this.onState(state, info || {});
  }
}

/** ws(s)://host/ws for the page's location. */
export function wsUrlFor(loc) {
  const proto = loc.protocol === "https:" ? "wss:" : "ws:";
  return `${proto}//${loc.host}/ws`;
}
