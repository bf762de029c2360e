// The page's controller: settings from /props, chat streaming through /v1/chat/completions (SSE),
// token selection shared by the text, the card and the charts, and the run-file download.

import { Answer } from "./answer.js";
import { Card } from "./card.js";
import { PlaneChart, SeriesChart } from "./charts.js";
import { QUADRANT_HELP, STRATEGY_HELP, thresholds } from "./quadrants.js";
import { runFile } from "./runfile.js";
import { errorMessage, readEvents } from "./sse.js";

const $ = (id) => document.getElementById(id);
const ui = {
  log: $("log"), form: $("composer"), prompt: $("prompt"), send: $("send"), stop: $("stop"),
  newChat: $("new-chat"), download: $("download"), sampler: $("sampler"), profile: $("profile"),
  profiles: $("profiles"), seed: $("seed"), maxTokens: $("max-tokens"), system: $("system"),
  status: $("status"), model: $("model"), error: $("error"), legend: $("legend"),
  chartTitle: $("chart-title"), card: $("card"), settings: $("settings"), apiKey: $("api-key"),
};

const state = {
  props: null,
  history: [], // the conversation's user/assistant messages (the system message comes from its box)
  answers: [],
  current: null, // the answer the charts show
  selection: null, // {answer, piece}
  pinned: false,
  controller: null,
};

const card = new Card(ui.card);
card.onClose = () => unselect();
const pick = (i) => state.current && select(state.current, state.current.pieceOf[i], { scroll: true });
const charts = [
  new SeriesChart($("chart-h"), pick, { key: "entropy", lines: ["low_ent", "med_ent", "high_ent"] }),
  new SeriesChart($("chart-v"), pick, { key: "varentropy", lines: ["low_vent", "high_vent"] }),
  new PlaneChart($("chart-hv"), pick),
];

// ── settings ──────────────────────────────────────────────────────────────────────────────────

/** The server's default sampler config in /props (the charts' thresholds). */
function propsConfig(props) {
  return props?.sampler_config ?? null;
}

/** The Authorization header for a server started with --api-key (the key lives in this tab only). */
function authHeaders() {
  const key = ui.apiKey.value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

async function loadProps() {
  try {
    const response = await fetch("/props", { headers: authHeaders() });
    if (response.status === 401) {
      ui.settings.open = true;
      showError("this server was started with --api-key: enter the key under Settings (API key)");
      setStatus("waiting for the API key");
      return;
    }
    if (!response.ok) throw new Error(await errorMessage(response));
    showError("");
    const props = await response.json();
    state.props = props;
    ui.model.textContent = typeof props.model === "string" ? props.model : "";
    if (props.default_sampler) ui.sampler.value = props.default_sampler;
    const profile = props.profile ?? propsConfig(props)?.profile;
    if (profile) ui.profile.value = profile;
    const names = new Set(["auto", "reference", ...(Array.isArray(props.profiles) ? props.profiles : [])]);
    ui.profiles.replaceChildren(...[...names].map((n) => Object.assign(document.createElement("option"), { value: n })));
    const cap = props.max_tokens;
    if (Number.isInteger(cap)) {
      ui.maxTokens.max = cap;
      ui.maxTokens.value = Math.min(Number(ui.maxTokens.value) || 256, cap);
    }
    setStatus(describeSettings());
  } catch (e) {
    showError(`cannot read the server's settings (/props): ${e.message}`);
    setStatus("no settings from the server");
  }
  renderCharts();
}

/** The sampler config of a profile as far as the page knows it: from an answer's summary, or /props. */
function profileConfig(profile) {
  for (const a of state.answers) {
    if (a.summary?.config && (a.request.profile ?? "") === (profile ?? "")) return a.summary.config;
  }
  const c = propsConfig(state.props);
  const same = !profile || !c?.profile || profile === c.profile || profile === state.props?.profile;
  return same ? c : null;
}

const profileLimits = (profile) => thresholds(profileConfig(profile));

function describeSettings() {
  const profile = ui.profile.value.trim();
  const t = profileLimits(profile || undefined);
  const limits = t ? ` · H ${t.low_ent.toFixed(2)}/${t.med_ent.toFixed(2)}/${t.high_ent.toFixed(2)} bits · V ${t.low_vent.toFixed(2)}/${t.high_vent.toFixed(2)} bits²` : "";
  return `sampler ${ui.sampler.value} · profile ${profile || propsConfig(state.props)?.profile || "default"}${limits}`;
}

/** Thresholds for an answer's charts: its own summary's config, else what is known of its profile. */
function limitsFor(answer) {
  return thresholds(answer?.summary?.config) ?? (answer ? profileLimits(answer.request.profile) : profileLimits(undefined));
}

function buildLegend() {
  const rows = Object.entries(QUADRANT_HELP).map(([q, meaning]) => [`tok q-${q.toLowerCase()}`, q, meaning]);
  rows.push(...Object.entries(STRATEGY_HELP).map(([s, meaning]) => [`tok q-mid m-${s}`, s, meaning]));
  const list = document.createElement("dl");
  for (const [cls, name, meaning] of rows) {
    const dt = document.createElement("dt");
    const sample = document.createElement("span");
    sample.className = cls;
    sample.textContent = name;
    dt.append(sample);
    const dd = document.createElement("dd");
    dd.textContent = meaning;
    list.append(dt, dd);
  }
  ui.legend.append(list);
}

// ── streaming ─────────────────────────────────────────────────────────────────────────────────

function setStatus(text) {
  ui.status.textContent = text;
}

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = !text;
}

function setBusy(busy) {
  ui.send.disabled = busy;
  ui.stop.disabled = !busy;
  ui.download.disabled = busy || !state.answers.some((a) => a.records.length);
  document.body.classList.toggle("busy", busy);
}

function requestMessages(text) {
  const system = ui.system.value.trim();
  return [...(system ? [{ role: "system", content: system }] : []), ...state.history, { role: "user", content: text }];
}

function addUserMessage(text) {
  const node = document.createElement("article");
  node.className = "msg user";
  node.setAttribute("aria-label", "you");
  node.textContent = text;
  ui.log.append(node);
  return node;
}

async function send(text) {
  if (state.controller || !text.trim()) return;
  showError("");
  const seed = ui.seed.value.trim();
  const request = {
    messages: requestMessages(text),
    sampler: ui.sampler.value,
    profile: ui.profile.value.trim() || undefined,
    seed: seed === "" ? undefined : Number(seed),
    max_tokens: Number(ui.maxTokens.value) || 256,
  };
  const history = state.history; // replaced, not emptied, by New chat
  const userNode = addUserMessage(text);
  const answer = new Answer(request, state.answers.length + 1);
  ui.log.append(answer.node);
  answer.node.scrollIntoView({ block: "end" });
  state.answers.push(answer);
  state.current = answer;
  renderCharts();
  const controller = (state.controller = new AbortController());
  setBusy(true);
  setStatus("sending …");
  ui.prompt.value = "";
  try {
    const response = await fetch("/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      signal: controller.signal,
      body: JSON.stringify({
        model: typeof state.props?.model === "string" ? state.props.model : "entropix",
        messages: request.messages,
        stream: true,
        stream_options: { include_usage: true },
        max_tokens: request.max_tokens,
        ...(request.seed === undefined ? {} : { seed: request.seed }),
        entropix: { sampler: request.sampler, ...(request.profile ? { profile: request.profile } : {}) },
      }),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const event of readEvents(response.body)) {
      if (event.comment !== undefined) {
        setStatus(describeComment(event.comment));
        continue;
      }
      if (event.data === "[DONE]") break;
      const chunk = JSON.parse(event.data);
      if (chunk.error) throw new Error(chunk.error.message ?? "the server failed mid-answer");
      receive(answer, chunk);
    }
  } catch (e) {
    if (e.name === "AbortError") answer.stopped = true;
    else answer.error = e.message;
  } finally {
    state.controller = null;
    const follow = inSight(answer);
    answer.end();
    if (state.history !== history) {
      // New chat was pressed during the answer: it belongs to the conversation that is gone
    } else if (answer.content || answer.stopped || answer.records.length) {
      state.history.push({ role: "user", content: text }, { role: "assistant", content: answer.content });
    } else {  // refused or failed before any token: the message stays visible, struck through
      userNode.classList.add("failed");
      answer.node.remove();
      state.answers.pop();
      state.current = state.answers.at(-1) ?? null;
    }
    if (answer.error) showError(answer.error);
    answer.renderSummary();
    if (follow && answer.node.isConnected) answer.node.scrollIntoView({ block: "end" });
    renderCharts();
    setBusy(false);
    setStatus(describeSettings());
    ui.prompt.focus();
  }
}

/** The server's SSE comments (": queued N", ": prefill done/total") as a status line. */
function describeComment(comment) {
  const queued = /^queued (\d+)/.exec(comment);
  if (queued) {
    const n = Number(queued[1]);
    return n ? `waiting: ${n} request${n === 1 ? "" : "s"} ahead · Esc stops` : "reading the prompt …";
  }
  const prefill = /^prefill (\d+)\/(\d+)/.exec(comment);
  return prefill ? `reading the prompt: ${prefill[1]}/${prefill[2]} tokens · Esc stops` : comment;
}

/** Whether the end of `answer` is in sight (then the view follows it as it grows). */
function inSight(answer) {
  const scrolls = ui.log.scrollHeight > ui.log.clientHeight + 1;
  const bottom = scrolls ? Math.min(innerHeight, ui.log.getBoundingClientRect().bottom) : innerHeight;
  return answer.node.getBoundingClientRect().bottom <= bottom + 8;
}

function receive(answer, chunk) {
  if (chunk.usage) answer.usage = chunk.usage;
  const choice = chunk.choices?.[0];
  if (!choice) return;
  const follow = inSight(answer);
  const extra = choice.entropix;
  if (extra?.tokens?.length) answer.addRecords(extra.tokens);
  if (choice.delta?.content) answer.addText(choice.delta.content);
  if (follow) answer.node.scrollIntoView({ block: "end" });
  if (extra?.summary) answer.summary = extra.summary;
  if (choice.finish_reason) answer.finishReason = choice.finish_reason;
  const n = answer.records.length;
  const elapsed = n > 1 ? answer.records[n - 1].elapsed - answer.records[0].elapsed : 0;
  setStatus(`answering · ${n} token${n === 1 ? "" : "s"}${elapsed > 0 ? ` · ${((n - 1) / elapsed).toFixed(1)} tok/s` : ""} · Esc stops`);
  scheduleCharts();
}

// ── selection: text ⇄ card ⇄ charts ─────────────────────────────────────────────────────────────

function answerOf(node) {
  return state.answers.find((a) => a.tokens.contains(node)) ?? null;
}

function recordsOf(answer, piece) {
  return answer.pieces[piece].indices.map((i) => answer.records[i]);
}

function select(answer, piece, { scroll = false, focus = false } = {}) {
  if (!answer || piece === undefined || piece < 0) return;
  const old = state.selection;
  if (old) {
    old.answer.pieces[old.piece]?.node.classList.remove("sel");
    old.answer.pieces[old.piece]?.node.removeAttribute("aria-describedby");
  }
  state.selection = { answer, piece };
  state.pinned = true;
  const node = answer.pieces[piece].node;
  node.classList.add("sel");
  node.setAttribute("aria-describedby", "card"); // a screen reader reads the card after the token
  if (focus) answer.focusPiece(piece);
  else for (const p of answer.pieces) p.node.tabIndex = p.node === node ? 0 : -1;
  if (scroll) node.scrollIntoView({ block: "nearest" });
  if (state.current !== answer) state.current = answer;
  card.show(recordsOf(answer, piece), node, true);
  renderCharts();
}

function unselect() {
  const old = state.selection;
  if (old) {
    old.answer.pieces[old.piece]?.node.classList.remove("sel");
    old.answer.pieces[old.piece]?.node.removeAttribute("aria-describedby");
  }
  state.selection = null;
  state.pinned = false;
  card.hide();
  renderCharts();
}

ui.log.addEventListener("mouseover", (e) => {
  const answer = answerOf(e.target);
  const piece = answer?.pieceAt(e.target) ?? -1;
  if (piece >= 0) card.show(recordsOf(answer, piece), answer.pieces[piece].node, false);
});
ui.log.addEventListener("mouseout", (e) => {
  if (!e.target.closest?.(".tok") || e.relatedTarget?.closest?.(".tok")) return;
  const sel = state.selection;
  if (sel) card.show(recordsOf(sel.answer, sel.piece), sel.answer.pieces[sel.piece].node, true);
  else card.hide();
});
ui.log.addEventListener("click", (e) => {
  const answer = answerOf(e.target);
  const piece = answer?.pieceAt(e.target) ?? -1;
  if (piece < 0) return;
  const sel = state.selection;
  if (!(sel && sel.answer === answer && sel.piece === piece)) select(answer, piece); // focusin may have
});
ui.log.addEventListener("focusin", (e) => {
  const answer = answerOf(e.target);
  const piece = answer?.pieceAt(e.target) ?? -1;
  const sel = state.selection;
  if (piece >= 0 && !(sel && sel.answer === answer && sel.piece === piece)) select(answer, piece);
});
ui.log.addEventListener("keydown", (e) => {
  const answer = answerOf(e.target);
  const piece = answer?.pieceAt(e.target) ?? -1;
  if (piece < 0) return;
  const last = answer.pieces.length - 1;
  const to = { ArrowRight: piece + 1, ArrowDown: piece + 1, ArrowLeft: piece - 1, ArrowUp: piece - 1, Home: 0, End: last }[e.key];
  if (to !== undefined) {
    e.preventDefault();
    select(answer, Math.max(0, Math.min(last, to)), { focus: true });
  }
});
document.addEventListener("keydown", (e) => {
  if (e.key !== "Escape") return;
  if (state.controller) state.controller.abort();
  else if (state.selection) unselect();
});
document.addEventListener("click", (e) => {
  // The path as dispatched: a chart re-rendered by this click has already dropped its target.
  if (!state.pinned || e.composedPath().some((n) => n.matches?.(".tok, #card, .chart"))) return;
  unselect();
});

// ── charts ────────────────────────────────────────────────────────────────────────────────────

let frame = 0;
function scheduleCharts() {
  if (!frame) frame = requestAnimationFrame(() => { frame = 0; renderCharts(); });
}

function renderCharts() {
  const answer = state.current;
  const records = answer?.records ?? [];
  const sel = state.selection;
  const selected = new Set(sel && sel.answer === answer ? sel.answer.pieces[sel.piece].indices : []);
  const limits = limitsFor(answer);
  for (const chart of charts) chart.render(records, limits, selected);
  ui.chartTitle.textContent = answer
    ? `answer ${answer.number} · ${records.length} token${records.length === 1 ? "" : "s"}${limits ? "" : " · thresholds unknown for this profile until the answer ends"}`
    : "no answer yet";
}

// ── controls ──────────────────────────────────────────────────────────────────────────────────

ui.form.addEventListener("submit", (e) => {
  e.preventDefault();
  send(ui.prompt.value);
});
ui.prompt.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    send(ui.prompt.value);
  }
});
ui.stop.addEventListener("click", () => state.controller?.abort());
ui.newChat.addEventListener("click", () => {
  state.controller?.abort();
  state.history = [];
  state.answers = [];
  state.current = null;
  unselect();
  ui.log.replaceChildren();
  showError("");
  setBusy(false);
  ui.prompt.focus();
});
ui.download.addEventListener("click", () => {
  const text = runFile(state.answers, (answer) => profileConfig(answer.request.profile));
  const url = URL.createObjectURL(new Blob([text], { type: "application/x-ndjson" }));
  const link = document.createElement("a");
  link.href = url;
  link.download = `entropix-chat-${new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19)}.jsonl`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
});
for (const input of [ui.sampler, ui.profile]) input.addEventListener("change", () => setStatus(describeSettings()));
ui.apiKey.value = sessionStorage.getItem("entropix.apiKey") ?? "";
ui.apiKey.addEventListener("change", () => {
  sessionStorage.setItem("entropix.apiKey", ui.apiKey.value.trim());
  loadProps();
});

buildLegend();
ui.settings.open = matchMedia("(min-width: 901px)").matches; // folded away on phones
setBusy(false);
loadProps();
window.entropix = { state }; // for the browser tests and the curious
