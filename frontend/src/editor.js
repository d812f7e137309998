// CodeMirror 6 setup: Go language, lint markers, light/dark theme and optional Vim,
// each switchable at run time through a compartment.

import { EditorView, keymap, lineNumbers, highlightActiveLineGutter, highlightSpecialChars,
  drawSelection, dropCursor, rectangularSelection, crosshairCursor, highlightActiveLine } from "@codemirror/view";
import { EditorState, Compartment, ChangeSet } from "@codemirror/state";
import { foldGutter, indentOnInput, syntaxHighlighting, defaultHighlightStyle, bracketMatching,
  foldKeymap, indentUnit, HighlightStyle } from "@codemirror/language";
import { history, defaultKeymap, historyKeymap, indentWithTab, isolateHistory } from "@codemirror/commands";
import { highlightSelectionMatches, searchKeymap } from "@codemirror/search";
import { closeBrackets, autocompletion, closeBracketsKeymap, completionKeymap } from "@codemirror/autocomplete";
import { lintKeymap, lintGutter, setDiagnostics } from "@codemirror/lint";
import { go } from "@codemirror/lang-go";
import { oneDark } from "@codemirror/theme-one-dark";
import { tags as t } from "@lezer/highlight";
import { parseTxtar, mapLine, byteColToOffset } from "./txtar.js";

const lightHighlight = HighlightStyle.define([
  { tag: t.keyword, color: "#7c3aed" },
  { tag: [t.controlKeyword, t.moduleKeyword], color: "#7c3aed" },
  { tag: [t.string, t.special(t.string)], color: "#0f7b3a" },
  { tag: [t.number, t.bool, t.null], color: "#b45309" },
  { tag: t.comment, color: "#6b7280", fontStyle: "italic" },
  { tag: [t.typeName, t.standard(t.typeName)], color: "#0e7490" },
  { tag: [t.function(t.variableName), t.function(t.definition(t.variableName))], color: "#1d4ed8" },
  { tag: t.definition(t.variableName), color: "#111827" },
  { tag: t.operator, color: "#374151" },
  { tag: t.invalid, color: "#dc2626" },
]);

const lightTheme = EditorView.theme({
  "&": { backgroundColor: "var(--editor-bg)", color: "var(--fg)" },
  ".cm-gutters": { backgroundColor: "var(--gutter-bg)", color: "var(--muted)", borderRight: "1px solid var(--border)" },
  ".cm-activeLine": { backgroundColor: "rgba(0, 173, 216, 0.06)" },
  ".cm-activeLineGutter": { backgroundColor: "rgba(0, 173, 216, 0.12)" },
  "&.cm-focused .cm-cursor": { borderLeftColor: "#111827" },
}, { dark: false });

const darkExtras = EditorView.theme({
  "&": { backgroundColor: "var(--editor-bg)" },
  ".cm-gutters": { backgroundColor: "var(--gutter-bg)" },
}, { dark: true });

const sharedTheme = EditorView.theme({
  "&": { height: "100%", fontSize: "var(--code-size)" },
  ".cm-scroller": { fontFamily: "var(--mono)", lineHeight: "1.55" },
  ".cm-content": { paddingBottom: "4rem" },
  ".cm-lintRange-error": { backgroundPosition: "left bottom" },
});

// Vim bindings are loaded on first use (a separate chunk), keeping the page light.
let vimModule = null;
async function loadVim() {
  if (!vimModule) vimModule = await import("@replit/codemirror-vim");
  return vimModule;
}

function themeExt(dark) {
  return dark ? [oneDark, darkExtras] : [lightTheme, syntaxHighlighting(lightHighlight)];
}

/**
 * Remembers the document as it was when a request was sent, and composes every
 * later change, so diagnostics for that text land on the right spot after edits.
 */
class Snapshots {
  constructor() { this.map = new Map(); }
  take(key, doc) { this.map.set(key, { doc, changes: ChangeSet.empty(doc.length) }); }
  get(key) { return this.map.get(key); }
  drop(key) { this.map.delete(key); }
  apply(changes) {
    for (const s of this.map.values()) s.changes = s.changes.compose(changes);
  }
}

export class Editor {
  /**
   * @param {HTMLElement} parent
   * @param {object} opts {doc, dark, vim, onChange(view), onRun(), onFormat()}
   */
  constructor(parent, { doc, dark, vim: vimOn, onChange, readOnly = false }) {
    this.themeC = new Compartment();
    this.vimC = new Compartment();
    this.snapshots = new Snapshots();
    this.onChange = onChange || (() => {});
    const extensions = [
      this.vimC.of([]),
      lineNumbers(),
      highlightActiveLineGutter(),
      highlightSpecialChars(),
      history(),
      foldGutter(),
      lintGutter(),
      drawSelection(),
      dropCursor(),
      EditorState.allowMultipleSelections.of(true),
      indentOnInput(),
      syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
      bracketMatching(),
      closeBrackets(),
      autocompletion(),
      rectangularSelection(),
      crosshairCursor(),
      highlightActiveLine(),
      highlightSelectionMatches(),
      keymap.of([
        ...closeBracketsKeymap,
        ...defaultKeymap,
        ...searchKeymap,
        ...historyKeymap,
        ...foldKeymap,
        ...completionKeymap,
        ...lintKeymap,
        indentWithTab,
      ]),
      go(),
      indentUnit.of("\t"),
      EditorState.tabSize.of(4),
      sharedTheme,
      this.themeC.of(themeExt(dark)),
      EditorState.readOnly.of(readOnly),
      EditorView.contentAttributes.of({
        "aria-label": "Go source code. Press Escape then Tab to leave the editor.",
        spellcheck: "false",
        autocorrect: "off",
        autocapitalize: "off",
      }),
      EditorView.updateListener.of((u) => {
        if (u.docChanged) {
          this.snapshots.apply(u.changes);
          this.onChange(this);
        }
      }),
    ];
    this.view = new EditorView({
      parent,
      state: EditorState.create({ doc: doc || "", extensions }),
    });
    this.vimOn = false;
    if (vimOn) this.setVim(true);
  }

  get text() { return this.view.state.doc.toString(); }

  /** Replace all text as one undoable change (Ctrl+Z brings the old text back). */
  setText(text, { keepCursor = false } = {}) {
    const state = this.view.state;
    const old = state.doc.toString();
    if (old === text) return;
    // Replace only the part that differs so the cursor and scroll stay put.
    let start = 0;
    const max = Math.min(old.length, text.length);
    while (start < max && old.charCodeAt(start) === text.charCodeAt(start)) start++;
    let endOld = old.length;
    let endNew = text.length;
    while (endOld > start && endNew > start && old.charCodeAt(endOld - 1) === text.charCodeAt(endNew - 1)) {
      endOld--;
      endNew--;
    }
    const spec = {
      changes: { from: start, to: endOld, insert: text.slice(start, endNew) },
      annotations: isolateHistory.of("full"), // its own undo step
    };
    if (!keepCursor) spec.selection = { anchor: 0 };
    this.view.dispatch(spec);
    if (!keepCursor) this.view.dispatch({ effects: EditorView.scrollIntoView(0) });
  }

  setDark(dark) {
    this.view.dispatch({ effects: this.themeC.reconfigure(themeExt(dark)) });
  }

  /** Switch Vim bindings on or off; resolves once the bindings are active. */
  async setVim(on) {
    this.vimOn = on;
    if (!on) {
      this.view.dispatch({ effects: this.vimC.reconfigure([]) });
      return;
    }
    const { vim } = await loadVim();
    if (this.vimOn) this.view.dispatch({ effects: this.vimC.reconfigure(vim({ status: true })) });
  }

  focus() { this.view.focus(); }

  /** Remember the current text under `key` (a request id) for later diagnostics. */
  snapshot(key) { this.snapshots.take(key, this.view.state.doc); }
  forget(key) { this.snapshots.drop(key); }

  /**
   * Turn protocol diagnostics ({file, line, col, severity, message}) into
   * positioned items against the text of snapshot `key` (or the current text),
   * mapped through edits made since.
   */
  locate(items, key) {
    const snap = key ? this.snapshots.get(key) : null;
    const doc = snap ? snap.doc : this.view.state.doc;
    const changes = snap ? snap.changes : null;
    const parsed = parseTxtar(doc.toString());
    const out = [];
    for (const d of items || []) {
      const lineNo = mapLine(parsed, d.file, d.line, doc.lines);
      let from;
      let to;
      if (lineNo === null) {
        from = to = null;
      } else {
        const line = doc.line(lineNo);
        const col = Number(d.col) || 0;
        if (col > 0) {
          const off = byteColToOffset(line.text, col);
          from = line.from + off;
          to = from + tokenLength(line.text, off);
          if (to === from && from > line.from) from--;
        } else {
          const indent = line.text.length - line.text.trimStart().length;
          from = line.from + indent;
          to = line.to;
        }
        if (changes) {
          from = changes.mapPos(from, 1);
          to = Math.max(from, changes.mapPos(to, -1));
        }
      }
      out.push({ ...d, from, to, severity: d.severity === "warning" ? "warning" : "error" });
    }
    return out;
  }

  /** Show located diagnostics as lint markers (those with a position). */
  showDiagnostics(located) {
    const len = this.view.state.doc.length;
    const diags = located
      .filter((d) => d.from !== null)
      .map((d) => ({
        from: Math.min(d.from, len),
        to: Math.min(Math.max(d.to, d.from), len),
        severity: d.severity,
        message: d.message,
        source: d.phase === "vet" ? "go vet" : d.phase === "check" ? "type check" : "go build",
      }));
    this.view.dispatch(setDiagnostics(this.view.state, diags));
  }

  /** Put the cursor at pos, scroll to it and focus the editor. */
  goTo(pos) {
    const p = Math.max(0, Math.min(pos, this.view.state.doc.length));
    this.view.dispatch({ selection: { anchor: p }, effects: EditorView.scrollIntoView(p, { y: "center" }) });
    this.view.focus();
  }

  lineOf(pos) {
    const p = Math.max(0, Math.min(pos, this.view.state.doc.length));
    return this.view.state.doc.lineAt(p).number;
  }
}

/** Length of the identifier/number/operator token starting at off (at least 1 if not at EOL). */
function tokenLength(text, off) {
  if (off >= text.length) return 0;
  const rest = text.slice(off);
  const m = /^[\p{L}\p{N}_]+/u.exec(rest) || /^"(?:[^"\\]|\\.)*"?/.exec(rest) || /^\S/.exec(rest);
  return m ? m[0].length : 1;
}
