// txtar helpers: which line of the editor text a diagnostic (file, line, col) points at.
//
// The server splits the source exactly like the Go playground: a marker line is
// `-- NAME --`; text before the first marker (if not blank) is the implicit file
// `prog.go`. A single-file source (no marker) is `prog.go`.

export const DEFAULT_FILE = "prog.go";
const MARKER = /^-- (.+?) --\r?$/;

/**
 * Parse the editor text into files.
 * @param {string} text
 * @returns {{isTxtar: boolean, files: {name: string, firstLine: number, lineCount: number}[]}}
 *   firstLine is the 1-based editor line holding the file's line 1.
 */
export function parseTxtar(text) {
  const lines = text.split("\n");
  const files = [];
  let current = { name: DEFAULT_FILE, firstLine: 1, lineCount: 0, implicit: true };
  let blankHead = true;
  let sawMarker = false;
  for (let i = 0; i < lines.length; i++) {
    const m = MARKER.exec(lines[i]);
    if (m) {
      if (!sawMarker) {
        if (!blankHead) files.push(current);
      } else {
        files.push(current);
      }
      sawMarker = true;
      current = { name: m[1].trim(), firstLine: i + 2, lineCount: 0, implicit: false };
    } else {
      current.lineCount++;
      if (!sawMarker && lines[i].trim() !== "") blankHead = false;
    }
  }
  if (sawMarker || !blankHead || files.length === 0) files.push(current);
  return { isTxtar: sawMarker, files };
}

function normalizeName(name) {
  let n = String(name || "").replace(/\\/g, "/");
  while (n.startsWith("./")) n = n.slice(2);
  return n;
}

/**
 * Find the file a diagnostic names. Exact name first, then a path suffix, then
 * the base name; a single-file source takes any name.
 */
export function findFile(parsed, name) {
  const want = normalizeName(name);
  if (!parsed.isTxtar) return parsed.files[0] || null;
  let f = parsed.files.find((x) => x.name === want);
  if (f) return f;
  f = parsed.files.find((x) => want.endsWith("/" + x.name));
  if (f) return f;
  const base = want.split("/").pop();
  const same = parsed.files.filter((x) => x.name.split("/").pop() === base);
  if (same.length === 1) return same[0];
  if (!want && parsed.files.length) return parsed.files[0];
  return null;
}

/**
 * Map a (file, line) pair to a 1-based line of the editor text.
 * Returns null if the file is not in the text. The result is clamped to the text.
 */
export function mapLine(parsed, file, line, totalLines) {
  const f = findFile(parsed, file);
  if (!f) return null;
  const l = Math.max(1, Number(line) || 1);
  let out = f.firstLine + l - 1;
  if (totalLines !== undefined) out = Math.min(Math.max(1, out), totalLines);
  return out;
}

/**
 * Go columns count UTF-8 bytes (1-based). Convert to a UTF-16 offset in lineText.
 */
export function byteColToOffset(lineText, col) {
  const target = (Number(col) || 1) - 1;
  if (target <= 0) return 0;
  let bytes = 0;
  let i = 0;
  while (i < lineText.length) {
    if (bytes >= target) return i;
    const c = lineText.codePointAt(i);
    bytes += c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    i += c >= 0x10000 ? 2 : 1;
  }
  return lineText.length;
}
