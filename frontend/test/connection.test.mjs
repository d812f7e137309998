import { test } from "node:test";
import assert from "node:assert/strict";
import { Connection, wsUrlFor } from "../src/connection.js";

class FakeWS {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWS.all.push(this);
  }
  open() { this.readyState = 1; this.onopen && this.onopen(); }
  recv(obj) { this.onmessage && this.onmessage({ data: JSON.stringify(obj) }); }
  send(s) { this.sent.push(JSON.parse(s)); }
  close() { this.readyState = 3; }
  drop() { this.readyState = 3; this.onclose && this.onclose(); }
}

test("ws url follows the page's scheme", () => {
  assert.equal(wsUrlFor({ protocol: "http:", host: "h:1" }), "ws://h:1/ws");
  assert.equal(wsUrlFor({ protocol: "https:", host: "h" }), "wss://h/ws");
});

test("open after hello, reconnect with growing delays, reset after hello", async () => {
  FakeWS.all = [];
  const states = [];
  const frames = [];
  const c = new Connection({
    url: "ws://x/ws", WebSocketImpl: FakeWS, base: 5, max: 40,
    onFrame: (f) => frames.push(f.type), onState: (s, info) => states.push([s, info.retryInMs]),
  });
  c.connect();
  const ws = FakeWS.all[0];
  ws.open();
  assert.equal(c.isOpen, false, "not open before hello");
  ws.recv({ type: "hello", session: "s" });
  assert.equal(c.isOpen, true);
  assert.ok(c.send({ type: "ping" }));
  assert.deepEqual(ws.sent, [{ type: "ping" }]);
  ws.drop();
  assert.equal(c.state, "closed");
  assert.equal(c.send({ type: "ping" }), false);
  const delays = [];
  for (let i = 0; i < 4; i++) {
    await new Promise((r) => setTimeout(r, 60));
    const w = FakeWS.all[FakeWS.all.length - 1];
    w.drop(); // fails before hello
  }
  for (const [s, d] of states) if (s === "closed" && d !== undefined) delays.push(d);
  assert.ok(delays.length >= 4);
  assert.ok(delays[3] >= delays[0], `delays grow: ${delays}`);
  assert.ok(delays.every((d) => d <= 40));
  await new Promise((r) => setTimeout(r, 60));
  const w = FakeWS.all[FakeWS.all.length - 1];
  w.open();
  w.recv({ type: "hello" });
  assert.equal(c.attempt, 0);
  c.close();
  assert.deepEqual(frames.filter((f) => f === "hello").length, 2);
});

test("bad JSON and throwing handlers do not break the connection", () => {
  FakeWS.all = [];
  let n = 0;
  const orig = console.error;
  console.error = () => {};
  const c = new Connection({
    url: "ws://x/ws", WebSocketImpl: FakeWS,
    onFrame: () => { n++; throw new Error("boom"); },
  });
  c.connect();
  const ws = FakeWS.all[0];
  ws.open();
  ws.onmessage({ data: "not json" });
  ws.recv({ type: "hello" });
  ws.recv({ type: "output" });
  console.error = orig;
  assert.equal(n, 2);
  assert.equal(c.isOpen, true);
  c.close();
});
