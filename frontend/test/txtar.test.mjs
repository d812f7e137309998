import { test } from "node:test";
import assert from "node:assert/strict";
import { parseTxtar, mapLine, findFile, byteColToOffset } from "../src/txtar.js";

test("single file: every name maps to the text itself", () => {
  const p = parseTxtar("package main\n\nfunc main() {}\n");
  assert.equal(p.isTxtar, false);
  assert.equal(mapLine(p, "prog.go", 3), 3);
  assert.equal(mapLine(p, "./prog.go", 1), 1);
  assert.equal(mapLine(p, "whatever.go", 2), 2);
});

test("txtar: a file's line N is N lines after its marker", () => {
  const text = [
    "-- go.mod --", // 1
    "module m", // 2
    "", // 3
    "go 1.22", // 4
    "-- a.go --", // 5
    "package main", // 6
    "", // 7
    "func main() {", // 8
    "\tundefinedThing()", // 9
    "}", // 10
    "-- sub/b.go --", // 11
    "package sub", // 12
  ].join("\n");
  const p = parseTxtar(text);
  assert.equal(p.isTxtar, true);
  assert.deepEqual(p.files.map((f) => f.name), ["go.mod", "a.go", "sub/b.go"]);
  assert.equal(mapLine(p, "a.go", 4), 9);
  assert.equal(mapLine(p, "go.mod", 1), 2);
  assert.equal(mapLine(p, "sub/b.go", 1), 12);
  assert.equal(mapLine(p, "./sub/b.go", 1), 12);
  assert.equal(mapLine(p, "/tmp/job123/sub/b.go", 1), 12);
  assert.equal(mapLine(p, "missing.go", 1), null);
});

test("txtar: text before the first marker is prog.go", () => {
  const text = "package main\n\nfunc main() { x }\n-- util.go --\npackage main\n";
  const p = parseTxtar(text);
  assert.deepEqual(p.files.map((f) => f.name), ["prog.go", "util.go"]);
  assert.equal(mapLine(p, "prog.go", 3), 3);
  assert.equal(mapLine(p, "util.go", 1), 5);
});

test("txtar: a blank head is not a file", () => {
  const p = parseTxtar("\n\n-- a.go --\npackage main\n");
  assert.deepEqual(p.files.map((f) => f.name), ["a.go"]);
  assert.equal(findFile(p, "prog.go"), null);
});

test("mapLine clamps to the text", () => {
  const p = parseTxtar("a\nb\n");
  assert.equal(mapLine(p, "prog.go", 99, 3), 3);
  assert.equal(mapLine(p, "prog.go", 0, 3), 1);
});

test("byte columns become UTF-16 offsets", () => {
  assert.equal(byteColToOffset("\tx := 1", 2), 1);
  assert.equal(byteColToOffset("abc", 0), 0);
  assert.equal(byteColToOffset("abc", 1), 0);
  // "é" is 2 bytes, "世" is 3 bytes, "😀" is 4 bytes and 2 UTF-16 units
  assert.equal(byteColToOffset("é=1", 3), 1);
  assert.equal(byteColToOffset("世x", 4), 1);
  assert.equal(byteColToOffset("😀x", 5), 2);
  assert.equal(byteColToOffset("ab", 40), 2);
});
