import { test } from "node:test";
import assert from "node:assert/strict";
import {
  ordinal, formatEta, queueText, formatMs, formatElapsed, formatBytes, describeDone,
  describeTimings, backoffDelay, newId, phaseLabel,
} from "../src/format.js";

test("ordinals", () => {
  assert.deepEqual([1, 2, 3, 4, 11, 12, 13, 21, 22, 23, 101, 111].map(ordinal),
    ["1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "23rd", "101st", "111th"]);
});

test("queue text", () => {
  assert.equal(queueText({ position: 3, queue_length: 5, eta_ms: 1800 }), "3rd in line, about 2 s");
  assert.equal(queueText({ position: 1, queue_length: 1, eta_ms: 120 }), "Next in line, about 1 s");
  assert.equal(queueText({ position: 2, queue_length: 2 }), "2nd in line");
  assert.equal(formatEta(125000), "about 2 min 5 s");
  assert.equal(formatEta(120000), "about 2 min");
  assert.equal(formatEta(undefined), "");
});

test("times and sizes", () => {
  assert.equal(formatMs(850), "850 ms");
  assert.equal(formatMs(1234), "1.2 s");
  assert.equal(formatMs(12345), "12 s");
  assert.equal(formatElapsed(0), "0.0 s");
  assert.equal(formatElapsed(65000), "1:05");
  assert.equal(formatBytes(1048576), "1 MiB");
  assert.equal(formatBytes(65536), "64 KiB");
  assert.equal(formatBytes(100), "100 B");
});

test("done descriptions explain why a program stopped", () => {
  const limits = { run_seconds: 10, output_bytes: 1048576, memory_bytes: 268435456 };
  assert.match(describeDone({ status: "timeout" }, limits).sentence, /10 s/);
  assert.match(describeDone({ status: "output_limit" }, limits).sentence, /1 MiB/);
  assert.match(describeDone({ status: "memory_limit" }, limits).sentence, /256 MiB/);
  assert.equal(describeDone({ status: "exit", exit_code: 3 }).label, "Exit status 3");
  assert.equal(describeDone({ status: "cancelled" }).label, "Cancelled");
  for (const s of ["ok", "build_failed", "vet_failed", "tests_failed", "expired", "degraded", "internal_error"]) {
    assert.ok(describeDone({ status: s }).label);
  }
  assert.equal(
    describeTimings({ timings: { queue_ms: 3, build_ms: 450, run_ms: 1200 }, cached: true }),
    "queue 3 ms · build 450 ms · run 1.2 s · cached build");
  assert.equal(phaseLabel("vet"), "Vetting");
});

test("reconnect backoff doubles up to a cap", () => {
  const fixed = { random: () => 0 };
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 10].map((n) => backoffDelay(n, fixed)),
    [250, 500, 1000, 2000, 4000, 8000, 10000, 10000]);
  const jittered = backoffDelay(3, { random: () => 1 });
  assert.ok(jittered >= 1400 && jittered <= 2000);
});

test("ids are fresh and short", () => {
  const ids = new Set(Array.from({ length: 1000 }, () => newId("run")));
  assert.equal(ids.size, 1000);
  for (const id of ids) assert.ok(id.length <= 64);
});
