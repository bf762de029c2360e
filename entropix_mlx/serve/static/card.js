// The token card: everything a run file records about the token(s) of one printed piece.

import { QUADRANT_HELP, STRATEGY_HELP } from "./quadrants.js";

const num = (v, digits = 3) => (typeof v === "number" && Number.isFinite(v) ? v.toFixed(digits) : "—");

/** A token's text as the card shows it: quoted, with escapes for line breaks and tabs. */
export function visibleText(text) {
  return text === "" ? "(no text: end of turn or part of a character)" : JSON.stringify(text);
}

function rows(rec) {
  const p = typeof rec.logprob === "number" ? ` (p ${Math.exp(rec.logprob).toFixed(3)})` : "";
  return [
    ["token", `#${rec.index} · id ${rec.token_id}`],
    ["logprob", rec.logprob === null ? "— (inserted, not sampled)" : num(rec.logprob) + p],
    ["entropy", `${num(rec.entropy)} bits`],
    ["varentropy", `${num(rec.varentropy)} bits²`],
    ["attn entropy", num(rec.attn_entropy)],
    ["attn varentropy", num(rec.attn_varentropy)],
    ["agreement", num(rec.agreement)],
    ["interaction", num(rec.interaction_strength)],
    ["temperature", num(rec.temperature)],
    ["top-k", rec.top_k === 0 ? "0 (off)" : String(rec.top_k)],
    ["top-p", num(rec.top_p)],
    ["min-p", num(rec.min_p)],
  ];
}

function section(rec) {
  const box = document.createElement("section");
  const head = document.createElement("p");
  head.className = "card-head";
  const text = document.createElement("code");
  text.className = "card-text";
  text.textContent = visibleText(rec.text);
  const quad = document.createElement("span");
  quad.className = `pill q-${String(rec.quadrant).toLowerCase()}`;
  quad.textContent = rec.quadrant;
  head.append(text, " ", quad);
  const why = document.createElement("p");
  why.className = "card-why";
  const strategy = rec.inserted ? "inserted" : rec.strategy;
  why.textContent = `${QUADRANT_HELP[rec.quadrant] ?? rec.quadrant} · strategy ${rec.strategy}` +
    (STRATEGY_HELP[strategy] ? ` (${STRATEGY_HELP[strategy]})` : "");
  const list = document.createElement("dl");
  for (const [name, value] of rows(rec)) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dd.dataset.field = name;
    list.append(dt, dd);
  }
  box.append(head, why, list);
  return box;
}

export class Card {
  constructor(node) {
    this.node = node;
    this.anchor = null;
    this.onClose = null;
    window.addEventListener("resize", () => this.place());
    window.addEventListener("scroll", () => this.place(), true);
  }

  /** Show the records of one piece next to `anchor` (its span); a pinned card has a close button. */
  show(records, anchor, pinned) {
    this.anchor = anchor;
    this.node.replaceChildren(...records.map(section));
    if (pinned) {
      const close = document.createElement("button");
      close.type = "button";
      close.className = "card-close";
      close.textContent = "×";
      close.setAttribute("aria-label", "close the token card (Escape)");
      close.addEventListener("click", () => this.onClose?.());
      this.node.prepend(close);
    }
    this.node.classList.toggle("pinned", pinned);
    this.node.hidden = false;
    this.place(pinned);
  }

  hide() {
    this.node.hidden = true;
    this.anchor = null;
  }

  /** Below the token (above when there is no room), kept inside the viewport; docked on phones. */
  place(reveal = false) {
    if (this.node.hidden || !this.anchor) return;
    if (matchMedia("(max-width: 640px)").matches) {
      this.node.classList.add("docked");
      this.node.style.left = this.node.style.top = "";
      // keep the chosen token in sight above the docked card
      const r = this.anchor.getBoundingClientRect();
      const room = innerHeight - this.node.offsetHeight - 12;
      if (reveal && (r.bottom > room || r.top < 0)) window.scrollBy(0, r.bottom - room);
      return;
    }
    this.node.classList.remove("docked");
    const r = this.anchor.getBoundingClientRect();
    const w = this.node.offsetWidth, h = this.node.offsetHeight, gap = 6;
    const left = Math.max(8, Math.min(r.left, innerWidth - w - 8));
    const below = r.bottom + gap + h <= innerHeight - 8;
    const top = below ? r.bottom + gap : Math.max(8, r.top - gap - h);
    this.node.style.left = `${left}px`;
    this.node.style.top = `${top}px`;
  }
}
