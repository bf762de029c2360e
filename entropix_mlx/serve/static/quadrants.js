// What the terminal's palette means (entropix_mlx/ui/render.py: THEME, QUADRANT_HELP, STRATEGY_HELP;
// engine/config.QUADRANTS), the quadrant rule (engine/sampler.classify) and the piece styling
// (ui/render.piece_styles), for the page.

export const QUADRANTS = ["LELV", "MID", "LEHV", "HELV", "HEHV"]; // least to most uncertain

export const QUADRANT_HELP = { // in QUADRANTS order, least to most uncertain
  LELV: "low entropy, low varentropy: confident",
  MID: "in between: adaptive sampling",
  LEHV: "low entropy, high varentropy: a fork",
  HELV: "high entropy, low varentropy: uniformly unsure",
  HEHV: "high entropy, high varentropy: lost",
};

// Strategies with a mark of their own; argmax/adaptive/greedy/sample print unmarked, as in the terminal.
export const STRATEGY_HELP = {
  inserted: "clarify text inserted by the sampler",
  clarify: "sampled hotter after a clarify insertion",
  explore: "explore: hotter, wider top-k at a fork",
  resample: "resample: high temperature when lost",
};
export const MARKED = ["clarify", "explore", "resample"];

const RANK = Object.fromEntries(QUADRANTS.map((q, i) => [q, i]));

/** (quadrant, strategy) by ENTROPIX.md §2, first match wins, bounds strict: sampler.classify. */
export function classify(h, v, c) {
  if (h < c.low_ent && v < c.low_vent) return "LELV";
  if (h > c.high_ent && v < c.low_vent) return "HELV";
  if (h < c.high_ent && v > c.high_vent) return "LEHV";
  if (h > c.med_ent && v > c.high_vent) return "HEHV";
  return "MID";
}

/** The CSS classes of one record: its quadrant colour plus its strategy's mark. */
export function recordClasses(rec) {
  const q = `q-${String(rec.quadrant).toLowerCase()}`;
  if (rec.inserted) return [q, "m-inserted"];
  return MARKED.includes(rec.strategy) ? [q, `m-${rec.strategy}`] : [q];
}

/** The record that styles a piece made of several tokens: an inserted one, else the most uncertain. */
export function pieceRecord(records) {
  const inserted = records.find((r) => r.inserted);
  if (inserted) return inserted;
  return records.reduce((worst, r) => ((RANK[r.quadrant] ?? 0) > (RANK[worst.quadrant] ?? 0) ? r : worst));
}

export const THRESHOLD_NAMES = ["low_ent", "med_ent", "high_ent", "low_vent", "high_vent"];

/** The five quadrant thresholds of a SamplerConfig-like object, or null when any is missing. */
export function thresholds(config) {
  if (!config || typeof config !== "object") return null;
  const out = {};
  for (const name of THRESHOLD_NAMES) {
    const v = config[name];
    if (typeof v !== "number" || !Number.isFinite(v)) return null;
    out[name] = v;
  }
  return out;
}
