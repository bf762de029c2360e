// Hand-written SVG charts of one answer: entropy and varentropy per token with the profile's
// threshold lines, and the entropy–varentropy plane with the quadrant regions. A point per record;
// clicking (or tapping) near a point picks its token.

import { classify } from "./quadrants.js";

const NS = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** About `count` round tick values covering [0, max]. */
export function ticks(max, count = 4) {
  if (!(max > 0)) return [0];
  const raw = max / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw);
  const out = [];
  for (let v = 0; v <= max + step * 1e-9; v += step) out.push(+v.toFixed(10));
  return out;
}

const fmt = (v) => (Math.abs(v) >= 10 || Number.isInteger(v) ? v.toFixed(0) : v.toFixed(1));

class Chart {
  constructor(svg, onPick) {
    this.svg = svg;
    this.points = []; // [x, y, recordIndex] in viewBox units
    svg.addEventListener("click", (e) => {
      const i = this.nearest(e.clientX, e.clientY);
      if (i !== null) onPick(i);
    });
  }

  /** The record of the point nearest to a screen position, within 14 px; else null. */
  nearest(clientX, clientY) {
    const ctm = this.svg.getScreenCTM();
    if (!ctm || !this.points.length) return null;
    let best = null;
    let bestD = 14 * 14;
    for (const [x, y, i] of this.points) {
      const dx = ctm.a * x + ctm.e - clientX;
      const dy = ctm.d * y + ctm.f - clientY;
      const d = dx * dx + dy * dy;
      if (d <= bestD) [best, bestD] = [i, d];
    }
    return best;
  }

  frame(W, H) {
    this.svg.replaceChildren();
    this.svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    this.points = [];
  }

  point(x, y, rec, i, selected) {
    this.points.push([x, y, i]);
    const q = String(rec.quadrant).toLowerCase();
    const c = el("circle", {
      cx: x.toFixed(1), cy: y.toFixed(1), r: selected ? 5 : 3,
      class: `pt q-${q}${selected ? " sel" : ""}`, "data-i": i,
    });
    c.append(el("title", {}, `#${rec.index} ${JSON.stringify(rec.text)} ${rec.quadrant} ${rec.strategy}`));
    return c;
  }
}

/** One metric per token (x = token position) with horizontal threshold lines. */
export class SeriesChart extends Chart {
  constructor(svg, onPick, { key, lines }) {
    super(svg, onPick);
    this.key = key;
    this.lines = lines;
  }

  render(records, limits, selected) {
    const W = 400, H = 110, L = 28, R = 76, T = 6, B = 16;
    this.frame(W, H);
    const values = records.map((r) => r[this.key]).filter(Number.isFinite);
    const lines = limits ? this.lines.map((n) => [n, limits[n]]) : [];
    const ymax = Math.max(1, ...values.map((v) => v * 1.05), ...lines.map(([, v]) => v * 1.1));
    const n = Math.max(records.length - 1, 15);
    const x = (i) => L + ((W - L - R) * i) / n;
    const y = (v) => T + (H - T - B) * (1 - Math.min(v, ymax) / ymax);
    const axes = el("g", { class: "axes" });
    for (const t of ticks(ymax, 3)) {
      axes.append(el("line", { x1: L, x2: W - R, y1: y(t), y2: y(t), class: "grid" }));
      axes.append(el("text", { x: L - 4, y: y(t) + 3, "text-anchor": "end" }, fmt(t)));
    }
    for (const t of ticks(n, 5)) {
      axes.append(el("text", { x: x(t), y: H - 4, "text-anchor": "middle" }, String(t)));
    }
    for (const [name, v] of lines) {
      axes.append(el("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "threshold" }));
      axes.append(el("text", { x: W - R + 4, y: y(v) + 3, class: "threshold-label" }, `${name} ${fmt(v)}`));
    }
    this.svg.append(axes);
    const path = records.map((r, i) => (Number.isFinite(r[this.key]) ? `${x(i).toFixed(1)},${y(r[this.key]).toFixed(1)}` : null));
    this.svg.append(el("polyline", { points: path.filter(Boolean).join(" "), class: "trace" }));
    const dots = el("g", { class: "points" });
    records.forEach((r, i) => {
      if (Number.isFinite(r[this.key])) dots.append(this.point(x(i), y(r[this.key]), r, i, selected.has(i)));
    });
    this.svg.append(dots);
  }
}

/** Round values for a square-root axis up to `max`, at least `gap` units apart on the axis. */
export function sqrtTicks(max, scale, gap) {
  const out = [0];
  for (const mag of [0.01, 0.1, 1, 10, 100, 1000]) {
    for (const f of [1, 2, 5]) {
      const v = +(f * mag).toPrecision(1);
      if (v <= max && scale(v) - scale(out.at(-1)) >= gap) out.push(v);
    }
  }
  return out;
}

/**
 * The entropy–varentropy plane: quadrant regions from the thresholds, a point per token. Both axes
 * use a square-root scale, so the narrow low-entropy and low-varentropy bands (thresholds near 0.1)
 * stay visible next to values of 5–10.
 */
export class PlaneChart extends Chart {
  render(records, limits, selected) {
    const W = 400, H = 280, L = 34, R = 8, T = 8, B = 30;
    this.frame(W, H);
    const hs = records.map((r) => r.entropy).filter(Number.isFinite);
    const vs = records.map((r) => r.varentropy).filter(Number.isFinite);
    const xmax = Math.max(1, ...hs.map((v) => v * 1.05), limits ? limits.high_ent * 1.15 : 0);
    const ymax = Math.max(1, ...vs.map((v) => v * 1.05), limits ? limits.high_vent * 1.25 : 0);
    const sx = (h) => ((W - L - R) * Math.sqrt(Math.max(0, Math.min(h, xmax)))) / Math.sqrt(xmax);
    const sy = (v) => ((H - T - B) * Math.sqrt(Math.max(0, Math.min(v, ymax)))) / Math.sqrt(ymax);
    const x = (h) => L + sx(h);
    const y = (v) => H - B - sy(v);
    if (limits) this.svg.append(this.regions(limits, xmax, ymax, x, y));
    const axes = el("g", { class: "axes" });
    for (const t of sqrtTicks(ymax, sy, 18)) {
      axes.append(el("text", { x: L - 4, y: y(t) + 3, "text-anchor": "end" }, String(t)));
    }
    for (const t of sqrtTicks(xmax, sx, 26)) {
      axes.append(el("text", { x: x(t), y: H - B + 12, "text-anchor": "middle" }, String(t)));
    }
    axes.append(el("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "frame" }));
    axes.append(el("text", { x: (L + W - R) / 2, y: H - 3, "text-anchor": "middle", class: "axis-title" }, "entropy H (bits, √ scale)"));
    axes.append(el("text", { x: 10, y: (T + H - B) / 2, "text-anchor": "middle", class: "axis-title",
      transform: `rotate(-90 10 ${(T + H - B) / 2})` }, "varentropy V (bits², √ scale)"));
    this.svg.append(axes);
    const dots = el("g", { class: "points" });
    const order = records.map((_, i) => i).filter((i) => Number.isFinite(records[i].entropy) && Number.isFinite(records[i].varentropy));
    for (const i of order) if (!selected.has(i)) dots.append(this.point(x(records[i].entropy), y(records[i].varentropy), records[i], i, false));
    for (const i of order) if (selected.has(i)) dots.append(this.point(x(records[i].entropy), y(records[i].varentropy), records[i], i, true));
    this.svg.append(dots);
  }

  /** The plane cut along every threshold; each cell shaded by the quadrant its middle falls in. */
  regions(c, xmax, ymax, x, y) {
    const cut = (vals, max) => [...new Set([0, ...vals.filter((v) => v > 0 && v < max), max])].sort((a, b) => a - b);
    const xs = cut([c.low_ent, c.med_ent, c.high_ent], xmax);
    const ys = cut([c.low_vent, c.high_vent], ymax);
    const g = el("g", { class: "regions" });
    const labelled = new Set();
    const cells = [];
    for (let a = 0; a + 1 < xs.length; a++) {
      for (let b = 0; b + 1 < ys.length; b++) {
        const q = classify((xs[a] + xs[a + 1]) / 2, (ys[b] + ys[b + 1]) / 2, c);
        const [x0, x1, y0, y1] = [x(xs[a]), x(xs[a + 1]), y(ys[b + 1]), y(ys[b])];
        g.append(el("rect", { x: x0, y: y0, width: x1 - x0, height: y1 - y0, class: `region q-${q.toLowerCase()}` }));
        cells.push([q, x0, x1, y0, y1]);
      }
    }
    // Each quadrant's name once, in its largest cell, when the cell has room for it.
    cells.sort((p, q) => (q[2] - q[1]) * (q[4] - q[3]) - (p[2] - p[1]) * (p[4] - p[3]));
    for (const [q, x0, x1, y0, y1] of cells) {
      if (labelled.has(q) || x1 - x0 < 34 || y1 - y0 < 13) continue;
      labelled.add(q);
      g.append(el("text", { x: (x0 + x1) / 2, y: (y0 + y1) / 2 + 4, "text-anchor": "middle", class: "region-label" }, q));
    }
    for (const v of [c.low_ent, c.med_ent, c.high_ent]) {
      if (v > 0 && v < xmax) g.append(el("line", { x1: x(v), x2: x(v), y1: y(0), y2: y(ymax), class: "threshold" }));
    }
    for (const v of [c.low_vent, c.high_vent]) {
      if (v > 0 && v < ymax) g.append(el("line", { x1: x(0), x2: x(xmax), y1: y(v), y2: y(v), class: "threshold" }));
    }
    return g;
  }
}
