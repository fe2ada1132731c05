// agentflow ui: the runs list and a run's page. Plain script, no build step: it polls the
// JSON and SVG the server reads from the run database, so a page left open follows a run.
"use strict";

const POLL_MS = 1000;  // while a run runs
const IDLE_POLL_MS = 5000;

async function getJSON(url) {
  const response = await fetch(url, {cache: "no-store"});
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}

function showError(err) {
  document.getElementById("error").textContent = err ? String(err.message || err) : "";
}

const api = (runId) => `/api/runs/${encodeURIComponent(runId)}`;
const templateOf = (id) => id.replace(/\[\d+\]/g, "[*]").replace(/#\d+/g, "#*");
const fannedOut = (id) => id.includes("[*]") || id.includes("#*");
const tokens = (r) => (r.prompt_tokens || 0) + (r.completion_tokens || 0);
const cost = (usd) => (usd || 0).toFixed(4);
const when = (iso) => (iso ? iso.replace("T", " ").slice(0, 19) : "");
const seconds = (s) => (s == null ? "" : `${s.toFixed(1)} s`);
const took = (run) => (run.duration_s != null ? seconds(run.duration_s)
  : run.live ? `${seconds((Date.now() - Date.parse(run.started_at)) / 1000)} so far` : "");

function nodeCounts(run) {
  const parts = ["succeeded", "running", "pending", "failed", "cancelled", "skipped", "waiting"]
    .filter((s) => run[s]).map((s) => `${run[s]} ${s}`);
  if (run.cached) parts.push(`${run.cached} reused`);
  return `${run.nodes}` + (parts.length ? ` (${parts.join(", ")})` : "");
}

// ------------------------------------------------------------------ the list of runs

async function showRuns() {
  try {
    const runs = await getJSON("/api/runs");
    const body = document.querySelector("#runs tbody");
    body.replaceChildren(...runs.map((r) => el("tr", {"data-run": r.run_id},
      el("td", {}, el("a", {href: `/runs/${encodeURIComponent(r.run_id)}`}, r.run_id)),
      el("td", {class: "run-status"}, r.status),
      el("td", {}, r.flow + (r.entry && r.entry !== "main" ? `:${r.entry}` : "")),
      el("td", {}, when(r.started_at)),
      el("td", {class: "num"}, took(r)),
      el("td", {}, nodeCounts(r)),
      el("td", {class: "num"}, tokens(r) || ""),
      el("td", {class: "num"}, cost(r.cost_usd)))));
    document.getElementById("empty").hidden = runs.length > 0;
    showError(null);
  } catch (err) {
    showError(err);
  }
  setTimeout(showRuns, 2 * POLL_MS);
}

// ------------------------------------------------------------------ one run

function showRun(runId) {
  document.getElementById("run-id").textContent = runId;
  document.title = `agentflow run ${runId}`;
  const state = {runId, view: null, drawn: null, expand: new Set(), selected: null};
  pollRun(state);
}

async function pollRun(state) {
  try {
    await refresh(state);
    showError(null);
  } catch (err) {
    showError(err);
  }
  // A run that is not running may still be resumed: look again, less often.
  setTimeout(() => pollRun(state), state.view && !state.view.run.live ? IDLE_POLL_MS : POLL_MS);
}

async function refresh(state) {
  const view = await getJSON(api(state.runId));
  state.view = view;
  showRunHeader(view);
  const wanted = view.version + "|" + [...state.expand].sort().join(",");
  if (wanted !== state.drawn) {
    await drawGraph(state);
    state.drawn = wanted;
    if (state.selected) await select(state, state.selected);
  }
}

function showRunHeader(view) {
  const run = view.run;
  const status = document.getElementById("run-status");
  status.textContent = run.status;
  status.style.background = view.colors[run.status] || "#fff";
  document.getElementById("run-facts").textContent =
    `${run.flow} · ${when(run.started_at)} · ${took(run)} · nodes ${nodeCounts(run)}` +
    ` · ${tokens(run)} tokens · $${cost(run.cost_usd)}`;
  document.getElementById("legend").replaceChildren(...Object.entries(view.colors).map(([s, c]) =>
    el("span", {}, el("i", {style: `background:${c}`}), s)));
}

async function drawGraph(state) {
  const expand = [...state.expand].map(encodeURIComponent).join(",");
  const response = await fetch(`${api(state.runId)}/graph.svg?expand=${expand}`, {cache: "no-store"});
  if (!response.ok) throw new Error((await response.json()).error);
  const graph = document.getElementById("graph");
  graph.innerHTML = await response.text();
  for (const box of graph.querySelectorAll("g.node")) {
    const id = box.id.slice(2);  // "n:" + the node id
    box.classList.toggle("selected", id === state.selected);
    box.addEventListener("click", () => select(state, id));
  }
}

function markSelected(id) {
  for (const box of document.querySelectorAll("#graph g.node")) box.classList.toggle("selected", box.id === `n:${id}`);
}

async function select(state, id) {
  state.selected = id;
  markSelected(id);
  const details = document.getElementById("details");
  if (fannedOut(id)) {
    details.replaceChildren(...fanOutDetails(state, id));
    return;
  }
  if (!(id in state.view.statuses)) {
    details.replaceChildren(el("h2", {}, id), el("p", {}, "Not started in this run."));
    return;
  }
  try {
    const d = await getJSON(`${api(state.runId)}/node?id=${encodeURIComponent(id)}`);
    const form = document.getElementById("answer-form");
    if (d.status === "waiting" && form && form.dataset.node === id) return;  // keep what the person is typing
    details.replaceChildren(...nodeDetails(state, d));
  } catch (err) {
    details.replaceChildren(el("h2", {}, id), el("p", {class: "error"}, err.message));
  }
}

function toggleExpand(state, template) {
  if (state.expand.has(template)) state.expand.delete(template);
  else state.expand.add(template);
  refresh(state).catch(showError);
}

// A fan-out may have 100k instances: the details count them by status and list the first
// LISTED, those that need a look (failed, waiting, running, ...) before the others; a list of
// them all took the page ~10 s to build, and it is built again at every redraw.
const LISTED = 200;
const LIST_FIRST = ["failed", "waiting", "running", "cancelled", "pending"];

function fanOutDetails(state, template) {
  const items = Object.entries(state.view.statuses).filter(([id]) => templateOf(id) === template);
  const counts = {};
  for (const [, status] of items) counts[status] = (counts[status] || 0) + 1;
  const rank = (status) => {
    const at = LIST_FIRST.indexOf(status);
    return at < 0 ? LIST_FIRST.length : at;
  };
  // sort is stable: within a status, instances keep their order
  const listed = [...items].sort((a, b) => rank(a[1]) - rank(b[1])).slice(0, LISTED);
  const byStatus = Object.entries(counts).sort((a, b) => rank(a[0]) - rank(b[0])).map(([s, n]) => `${n} ${s}`);
  const out = [
    el("h2", {}, template),
    el("p", {}, `A fan-out: ${items.length} instance(s) in this run` + (items.length ? ` (${byStatus.join(", ")}).` : ".")),
    el("button", {id: "expand", onclick: () => toggleExpand(state, template)},
      state.expand.has(template) ? "collapse in the graph" : "expand in the graph"),
    el("ul", {class: "instances"}, ...listed.map(([id, status]) =>
      el("li", {}, el("a", {href: "#", onclick: (e) => { e.preventDefault(); select(state, id); }}, id), ` ${status}`))),
  ];
  if (items.length > listed.length) {
    out.push(el("p", {class: "more"}, `${items.length - listed.length} more not listed: ` +
      `agentflow show ${state.runId} lists every instance.`));
  }
  return out;
}

function section(title, ...content) {
  return el("section", {}, el("h3", {}, title), ...content);
}

function json(value) {
  return el("pre", {}, typeof value === "string" ? value : JSON.stringify(value, null, 2));
}

function messageView(m) {
  const who = m.role + (m.repair ? " (asked to repair its answer)" : "") + (m.name ? ` ${m.name}` : "") +
    (m.by ? ` by ${m.by}` : "");
  const content = m.role === "question" ? m.prompt : m.role === "answer" ? m.value : m.content;
  const parts = [el("div", {class: "who"}, who)];
  if (content != null && content !== "") parts.push(json(content));
  for (const call of m.tool_calls || []) {
    const fn = call.function || {};
    parts.push(el("div", {class: "tool-call"}, `calls ${fn.name}`), json(fn.arguments ?? ""));
  }
  return el("div", {class: `message ${m.role}`}, ...parts);
}

function nodeDetails(state, d) {
  const template = templateOf(d.node);
  const facts = [["status", d.status], ["role", d.role || ""], ["attempts", d.attempts],
    ["latency", d.duration_ms == null ? "" : `${Math.round(d.duration_ms)} ms`],
    ["model calls", d.llm_calls], ["tokens", `${d.prompt_tokens || 0} in, ${d.completion_tokens || 0} out`],
    ["cost", `$${cost(d.cost_usd)}`], ["started", when(d.started_at)], ["finished", when(d.finished_at)]];
  const out = [
    el("h2", {}, d.node),
    el("table", {class: "facts"}, ...facts.map(([k, v]) => el("tr", {}, el("th", {}, k), el("td", {}, v)))),
    section("why", el("p", {class: "why"}, d.why)),
  ];
  if (fannedOut(template) && state.expand.has(template))
    out.push(el("button", {onclick: () => toggleExpand(state, template)}, "collapse in the graph"));
  if (d.status === "waiting") out.push(answerPlace(state, d));
  if (d.error) out.push(section("error", el("pre", {class: "error"}, d.error)));
  out.push(section("inputs", ...Object.entries(d.inputs).map(([name, input]) =>
    el("div", {class: "input"}, el("div", {class: "who"}, name),
      input.known ? json(input.value) : el("p", {}, `not stored (value hash ${input.hash.slice(0, 12)}…)`)))));
  for (const name of ["system", "prompt"]) {
    if (d.prompt[name] == null) continue;
    const title = d.prompt.filled ? name : `${name} (template: not all its inputs are stored)`;
    out.push(section(title, el("pre", {class: "prompt"}, d.prompt[name])));
  }
  out.push(section("messages", ...(d.messages.length ? d.messages.map(messageView)
    : [el("p", {}, "none stored (a reused node, a tool, or a structure)")])));
  out.push(section("output", d.has_output ? json(d.output) : el("p", {}, "none stored")));
  return out;
}

// HUMAN ANSWER FORM: a waiting `model = "human"` node is answered here, with an input that
// fits its type. The server checks the answer as `agentflow answer` does: one that does not
// fit comes back with the reason, shown under the form, and nothing is stored.
function answerPlace(state, d) {
  const q = d.question;
  if (!q) {
    return el("section", {class: "answer-form", id: "answer-form", "data-node": d.node},
      el("h3", {}, "waiting"), el("p", {}, "It waits for nodes inside it that a person answers."));
  }
  const value = answerInput(q);
  const by = el("input", {id: "answer-by", type: "text", placeholder: "your name (default: the server's login)"});
  const said = el("p", {id: "answer-said", role: "status"});
  const submit = (e) => {
    e.preventDefault();
    postAnswer(state, d.node, value.value, by.value, said);
  };
  return el("form", {class: "answer-form", id: "answer-form", "data-node": d.node, onsubmit: submit},
    el("h3", {}, "waiting for a person's answer"),
    el("pre", {class: "prompt"}, q.prompt),
    el("label", {for: "answer-value"}, `answer, of type ${q.type}`), value,
    el("label", {for: "answer-by"}, "answered by"), by,
    el("button", {type: "submit", id: "answer-submit"}, "answer"), said);
}

// The input for an answer: its `value` is the text sent, as `agentflow answer VALUE` takes it.
function answerInput(q) {
  const r = q.returns;
  if (r.literal) {
    return el("select", {id: "answer-value"}, ...r.literal.map((v) => el("option", {value: String(v)}, v)));
  }
  if (r === "bool") {
    return el("select", {id: "answer-value"}, el("option", {value: "true"}, "yes"), el("option", {value: "false"}, "no"));
  }
  if (typeof r === "string") return el("input", {id: "answer-value", type: "text"});  // str, int, float
  const area = el("textarea", {id: "answer-value", rows: 8, spellcheck: "false"});
  area.value = JSON.stringify(q.skeleton, null, 2);
  return area;
}

async function postAnswer(state, node, value, by, said) {
  said.className = "";
  said.textContent = "sending…";
  try {
    const response = await fetch(`${api(state.runId)}/answer`, {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify({node, value, by})});
    const body = await response.json().catch(() => ({error: response.statusText}));
    if (!response.ok) throw new Error(body.error);
    said.className = "answered";
    said.textContent = body.message;
    document.getElementById("notice").textContent = body.message;
  } catch (err) {
    said.className = "error";
    said.textContent = err.message;
  }
}
