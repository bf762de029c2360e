// The conversation as a run file (`entropix run --jsonl`): each answer's token records, then one
// {"summary": …}. `entropix replay`, `plot` and `export.read_run` read it.

function count(values) {
  const out = {};
  for (const v of values) out[v] = (out[v] ?? 0) + 1;
  return out;
}

/** Totals of a stopped answer, which got no summary from the server (engine/generate.Summary.from_events). */
export function summaryFromRecords(records, promptTokens = 0) {
  const n = records.length;
  if (!n) return { tokens: 0, prompt_tokens: promptTokens, prefill_tps: 0, decode_tps: 0, finish_reason: null, strategies: {}, quadrants: {}, mean_entropy: 0 };
  const span = (records[n - 1].elapsed ?? 0) - (records[0].elapsed ?? 0);
  return {
    tokens: n,
    prompt_tokens: promptTokens,
    prefill_tps: 0,
    decode_tps: span > 0 ? (n - 1) / span : 0,
    finish_reason: null,
    strategies: count(records.map((r) => r.strategy)),
    quadrants: count(records.map((r) => r.quadrant)),
    mean_entropy: records.reduce((s, r) => s + r.entropy, 0) / n,
  };
}

/**
 * One answer's summary object for the file: the server's summary when the answer finished, else
 * totals from its records and the sampler config `configFor` knows for it (so `plot` draws that
 * profile's thresholds); with the messages that led to it and the answer (as chat's /save).
 */
export function answerSummary(answer, configFor = () => null) {
  const body = answer.summary
    ? { ...answer.summary }
    : { ...summaryFromRecords(answer.records, answer.usage?.prompt_tokens ?? 0), interrupted: true };
  if (!answer.summary) {
    const config = configFor(answer);
    if (config) body.config = config;
  }
  const req = answer.request;
  body.sampler ??= req.sampler;
  body.profile ??= req.profile;
  if (req.seed !== undefined) body.seed ??= req.seed;
  body.max_tokens ??= req.max_tokens;
  body.messages ??= [...req.messages, { role: "assistant", content: answer.content }];
  return body;
}

/** The run file's text: records and a summary per answer that produced any record. */
export function runFile(answers, configFor) {
  const lines = [];
  for (const answer of answers) {
    if (!answer.records.length) continue;
    for (const rec of answer.records) lines.push(JSON.stringify(rec));
    lines.push(JSON.stringify({ summary: answerSummary(answer, configFor) }));
  }
  return lines.map((l) => l + "\n").join("");
}
