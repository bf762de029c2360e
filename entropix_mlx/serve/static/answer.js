// One assistant answer on the page: its records, the printed pieces (spans) made of them, and its
// summary line. A record whose text is "" (half a UTF-8 character) joins the piece of the token that
// completes it, as the terminal's PieceMerger does; a trailing one (end of turn) gets an end mark.

import { QUADRANTS, pieceRecord, recordClasses } from "./quadrants.js";

export class Answer {
  constructor(request, number) {
    this.request = request; // {messages, sampler, profile, seed, max_tokens}
    this.number = number;
    this.records = [];
    this.pieces = []; // [{node, indices}]
    this.pieceOf = []; // record index → piece index
    this.held = [];
    this.content = "";
    this.summary = null;
    this.usage = null;
    this.finishReason = null;
    this.stopped = false;
    this.error = null;
    this.hasRecords = false; // false while only plain text came (a server run with --no-metrics)

    this.node = document.createElement("article");
    this.node.className = "msg assistant";
    this.node.setAttribute("aria-label", `answer ${number}`);
    this.tokens = document.createElement("div");
    this.tokens.className = "tokens";
    this.tokens.setAttribute("role", "group");
    this.tokens.setAttribute("aria-label", `answer ${number}: tokens (arrow keys move, Escape closes the card)`);
    this.line = document.createElement("p");
    this.line.className = "summary";
    this.line.setAttribute("aria-live", "polite");
    this.node.append(this.tokens, this.line);
  }

  /** Text that arrived without records (a server started with --no-metrics). */
  addText(text) {
    this.content += text;
    if (!this.hasRecords) this.tokens.append(text);
  }

  addRecords(records) {
    for (const rec of records) {
      this.hasRecords = true;
      this.records.push(rec);
      this.held.push(this.records.length - 1);
      if (rec.text !== "") this.flush();
    }
  }

  /** Close the answer: a token still held (end of turn, a cut-off character) becomes a piece. */
  end() {
    if (this.held.length) this.flush(true);
  }

  flush(last = false) {
    const indices = this.held;
    this.held = [];
    const records = indices.map((i) => this.records[i]);
    const styling = pieceRecord(records);
    const node = document.createElement("span");
    const text = records.map((r) => r.text).join("");
    node.className = ["tok", ...recordClasses(styling)].join(" ");
    node.dataset.q = styling.quadrant;
    node.dataset.s = styling.inserted ? "inserted" : styling.strategy;
    node.dataset.i = indices.join(" ");
    node.tabIndex = this.pieces.length ? -1 : 0;
    if (text === "" && last) {
      node.classList.add("eot");
      node.textContent = "∎";
      node.setAttribute("aria-label", "end of turn");
    } else {
      node.textContent = text;
      // a token of line breaks only has no box to hover: a faint ↵ (not copied) gives it one
      if (/^\s*$/.test(text) && text.includes("\n")) node.classList.add("nl");
    }
    const piece = this.pieces.length;
    for (const i of indices) this.pieceOf[i] = piece;
    this.pieces.push({ node, indices });
    this.tokens.append(node);
  }

  /** Which piece a node (or its ancestor span) belongs to, or -1. */
  pieceAt(node) {
    const span = node?.closest?.(".tok");
    if (!span || !this.tokens.contains(span)) return -1;
    return this.pieces.findIndex((p) => p.node === span);
  }

  /** Move the roving tab stop to a piece (one tab stop per answer; arrows move inside). */
  focusPiece(piece) {
    for (const p of this.pieces) p.node.tabIndex = -1;
    const node = this.pieces[piece]?.node;
    if (!node) return;
    node.tabIndex = 0;
    node.focus({ preventScroll: false });
  }

  renderSummary() {
    this.line.replaceChildren();
    const s = this.summary;
    const n = s ? s.tokens : this.records.length;
    const parts = [`${n} token${n === 1 ? "" : "s"}`];
    if (s) {
      parts.push(`prefill ${s.prompt_tokens}${this.usage?.prompt_tokens_details?.cached_tokens ? ` (${this.usage.prompt_tokens_details.cached_tokens} cached)` : ""} at ${Math.round(s.prefill_tps)} tok/s`);
      parts.push(`decode ${s.decode_tps.toFixed(1)} tok/s`);
      if (s.seed !== undefined) parts.push(`seed ${s.seed}`);
    } else if (this.records.length > 1) {
      const span = this.records.at(-1).elapsed - this.records[0].elapsed;
      if (span > 0) parts.push(`decode ${((this.records.length - 1) / span).toFixed(1)} tok/s`);
    }
    const quadrants = s?.quadrants ?? countBy(this.records, "quadrant");
    const strategies = s?.strategies ?? countBy(this.records, "strategy");
    this.line.append(parts.join(" · "));
    if (Object.keys(quadrants).length) {
      this.line.append(" · ", mixBar(quadrants), " ", mixWords(strategies));
    }
    const end = this.error ? `error: ${this.error}`
      : this.stopped ? "stopped (kept in the history)"
      : this.summary?.finish_reason === "context" ? "context full: New chat starts over"
      : this.finishReason === "length" ? "hit max tokens"
      : null;
    if (end) {
      const mark = document.createElement("span");
      mark.className = this.error ? "end error" : "end";
      mark.textContent = ` · ${end}`;
      this.line.append(mark);
    }
  }
}

function countBy(records, key) {
  const out = {};
  for (const r of records) out[r[key]] = (out[r[key]] ?? 0) + 1;
  return out;
}

/** Counts most frequent first: "adaptive 5 · argmax 2". */
export function mixWords(counts) {
  return Object.entries(counts)
    .sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]))
    .map(([k, v]) => `${k} ${v}`)
    .join(" · ");
}

/** A small bar of the quadrant mix, least uncertain first (the terminal's render_mix_bar). */
function mixBar(counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const bar = document.createElement("span");
  bar.className = "mixbar";
  bar.setAttribute("role", "img");
  const order = [...QUADRANTS.filter((q) => counts[q]), ...Object.keys(counts).filter((q) => !QUADRANTS.includes(q))];
  bar.setAttribute("aria-label", "quadrant mix: " + order.map((q) => `${q} ${counts[q]}`).join(", "));
  bar.title = bar.getAttribute("aria-label");
  for (const q of order) {
    const cell = document.createElement("span");
    cell.className = `cell q-${q.toLowerCase()}`;
    cell.style.flexGrow = String(counts[q] / total);
    bar.append(cell);
  }
  return bar;
}
