// The s4c dashboard: sign in with an API key, list the tenant's jobs with live progress, submit
// a JSONL file, cancel a job, and plot one job's statistics. It only talks to the /v1 JSON API
// (Bearer key kept in sessionStorage); all text from the API goes in through textContent.
"use strict";

const KEY_STORAGE = "s4c.apiKey";
const POLL_MS = 1500;
const MAX_RESULTS = 5000;
const JOBS_SHOWN = 100; // the newest jobs; older ones stay readable through the API
const TERMINAL = new Set(["completed", "failed", "expired", "cancelled"]);
const COLORS = { job: "#2f6fdf", sample: "#6f9be8", baseline: "#9aa3b5" };

const state = {
  key: sessionStorage.getItem(KEY_STORAGE),
  jobs: [],
  jobsSeen: null, // the last list drawn, as JSON: redraw only when it changes
  selectedId: null,
  tokens: new Map(), // job id -> {finished, samples}: completion tokens per finished request
  timer: null,
};

const $ = (id) => document.getElementById(id);

function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}`, ...(options.headers || {}) };
  const response = await fetch(path, { ...options, headers });
  const type = response.headers.get("Content-Type") || "";
  const body = type.includes("json") ? await response.json() : await response.text();
  if (!response.ok) throw new ApiError(response.status, typeof body === "object" ? body : null);
  return body;
}

const fmt = {
  num: (v, digits = 1) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits)),
  speedup: (v) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(2)}×`),
  time: (unix) => (unix ? new Date(unix * 1000).toLocaleTimeString() : "–"),
  short: (id) => (id.length > 16 ? `${id.slice(0, 12)}…${id.slice(-4)}` : id),
};

// "done / total", cancelled requests named apart: a cancelled job never reads "48 / 48".
function progressText(job) {
  const c = job.request_counts;
  return `${c.completed + c.failed} / ${c.total}` + (c.cancelled ? ` (${c.cancelled} cancelled)` : "");
}

function finished(job) {
  const c = job.request_counts;
  return c.completed + c.failed + c.cancelled;
}

// ---- sign in / out ----------------------------------------------------------------------

async function signIn(key) {
  state.key = key;
  try {
    await api("/v1/jobs?limit=1");
  } catch (error) {
    state.key = null;
    $("sign-in-error").textContent =
      error.status === 401 ? "That API key is unknown or revoked." : `Cannot sign in: ${error.message}`;
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  $("sign-in-error").textContent = "";
  showApp();
}

function signOut() {
  sessionStorage.removeItem(KEY_STORAGE);
  clearTimeout(state.timer);
  Object.assign(state, { key: null, jobs: [], jobsSeen: null, selectedId: null, tokens: new Map() });
  $("app").hidden = true;
  $("session").hidden = true;
  $("sign-in").hidden = false;
}

function showApp() {
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("session").hidden = false;
  $("key-hint").textContent = `key ${state.key.slice(0, 8)}…`;
  poll();
}

// ---- polling -----------------------------------------------------------------------------

async function poll() {
  clearTimeout(state.timer);
  try {
    const page = await api(`/v1/jobs?limit=${JOBS_SHOWN}`);
    $("jobs-more").hidden = !page.has_more;
    const seen = JSON.stringify(page.data);
    const changed = seen !== state.jobsSeen;
    state.jobsSeen = seen;
    state.jobs = page.data;
    if (!state.selectedId && state.jobs.length) state.selectedId = state.jobs[0].id;
    if (changed) {
      // Redraw only on change: rows and plots stay put (and clickable) between updates.
      renderJobs();
      await renderDetail();
    }
    $("poll-state").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (error) {
    if (error.status === 401) return signOut();
    $("poll-state").textContent = `refresh failed: ${error.message}`;
  }
  state.timer = setTimeout(poll, POLL_MS);
}

// ---- jobs table --------------------------------------------------------------------------

function progressBar(job) {
  const c = job.request_counts;
  const total = Math.max(1, c.total);
  const fill = (n, cls) => h("div", { class: `fill ${cls}`, style: `width: ${(100 * n) / total}%` });
  return h(
    "div",
    { class: "progress", "data-finished": finished(job), "data-total": c.total },
    h("div", { class: "track" }, fill(c.completed, "completed"), fill(c.failed, "failed"), fill(c.cancelled, "cancelled")),
    h("span", { class: "count", title: `${c.completed} completed, ${c.failed} failed, ${c.cancelled} cancelled` },
      progressText(job)),
  );
}

async function cancelJob(jobId, button) {
  button.disabled = true;
  try {
    await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
  } catch (error) {
    $("submit-message").className = "error";
    $("submit-message").textContent = `Cancel failed: ${error.message}`;
  }
  poll();
}

function renderJobs() {
  const body = $("jobs-body");
  body.replaceChildren();
  $("jobs-empty").hidden = state.jobs.length > 0;
  for (const job of state.jobs) {
    const stats = job.stats;
    const tags = Object.entries(job.metadata).map(([k, v]) => h("span", { class: "tag" }, `${k}=${v}`));
    const canCancel = !TERMINAL.has(job.status) && job.status !== "cancelling";
    const action = canCancel
      ? h("button", { class: "danger", type: "button", "data-action": "cancel",
          onclick: (event) => { event.stopPropagation(); cancelJob(job.id, event.target); } }, "Cancel")
      : "";
    const row = h(
      "tr",
      { "data-job-id": job.id, "data-status": job.status, class: job.id === state.selectedId ? "selected" : "",
        onclick: () => { state.selectedId = job.id; renderJobs(); renderDetail(); } },
      h("td", {}, h("code", { title: job.id }, fmt.short(job.id))),
      h("td", {}, h("span", { class: `badge ${job.status}` }, job.status.replace("_", " "))),
      h("td", {}, progressBar(job)),
      h("td", { class: "num" }, fmt.num(stats.tokens_per_second)),
      h("td", { class: "num" }, fmt.num(stats.tau, 2)),
      h("td", { class: "num" }, fmt.speedup(stats.baseline.speedup)),
      h("td", {}, ...tags),
      h("td", { class: "num" }, fmt.time(job.created_at)),
      h("td", {}, action),
    );
    body.append(row);
  }
}

// ---- one job's statistics ------------------------------------------------------------------

async function completionTokens(job) {
  // Re-read the results only when more requests have finished since the last read.
  const cached = state.tokens.get(job.id);
  if (cached && cached.finished === finished(job)) return cached.samples;
  const samples = [];
  let after = null;
  while (samples.length < MAX_RESULTS) {
    const query = after === null ? "limit=1000" : `limit=1000&after=${after}`;
    const page = await api(`/v1/jobs/${encodeURIComponent(job.id)}/results?${query}`);
    for (const result of page.data) {
      if (result.response) samples.push(result.response.usage.completion_tokens);
    }
    if (!page.has_more || page.last_index === null) break;
    after = page.last_index;
  }
  state.tokens.set(job.id, { finished: finished(job), samples });
  return samples;
}

function card(name, value, note = "") {
  return h("div", { class: "card" }, h("div", { class: "name" }, name), h("div", { class: "val" }, value),
    h("div", { class: "note" }, note));
}

function renderCards(job) {
  const s = job.stats;
  const b = s.baseline;
  const greedy = b.measured ? `${b.greedy_matched} / ${b.greedy_checked}` : "–";
  const c = job.request_counts;
  $("detail-cards").replaceChildren(
    card("Requests", `${c.completed + c.failed} / ${c.total}`,
      [c.failed && `${c.failed} failed`, c.cancelled && `${c.cancelled} cancelled`].filter(Boolean).join(", ")),
    card("Method", s.method || "–"),
    card("Tokens generated", s.tokens_generated ?? "–"),
    card("Tokens/s", fmt.num(s.tokens_per_second)),
    card("τ (tokens / forward)", fmt.num(s.tau, 2)),
    card("Measured speedup", fmt.speedup(b.speedup)),
    card("Greedy = plain", greedy, b.measured ? "token-identical outputs" : ""),
    ...(job.completion_window ? [windowCard(job)] : []),
  );
}

// A job with a completion window: when it expires (or expired), in the viewer's local time.
function windowCard(job) {
  let when = `expires ${fmt.time(job.expires_at)}`;
  if (job.expired_at) when = `expired ${fmt.time(job.expired_at)}`;
  else if (job.status === "cancelled") when = "cancelled before it expired";
  else if (TERMINAL.has(job.status)) when = "finished in time";
  return card("Completion window", job.completion_window, when);
}

function throughputChart(job) {
  const s = job.stats;
  const b = s.baseline;
  $("throughput-caption").textContent = b.speedup
    ? `Throughput: measured speedup ${fmt.speedup(b.speedup)} over plain decoding (${b.sample_size} requests re-run)`
    : "Throughput (speedup appears once a baseline sample is measured)";
  const method = s.method || "job";
  return Charts.barChart({
    kind: "throughput",
    labels: [`${method} (whole job)`, `${method} (sample)`, "ar baseline (sample)"],
    values: [s.tokens_per_second, b.sample_tokens_per_second, b.tokens_per_second],
    colors: [COLORS.job, COLORS.sample, COLORS.baseline],
    yLabel: "tokens / s",
    format: (v) => v.toFixed(1),
    emptyText: "no tokens generated yet",
  });
}

function acceptanceChart(job) {
  const s = job.stats;
  const perDepth = s.acceptance_per_depth || [];
  $("acceptance-caption").textContent =
    s.tau === null ? "Acceptance per draft depth" : `Acceptance per draft depth (τ = ${s.tau.toFixed(2)})`;
  return Charts.barChart({
    kind: "acceptance",
    labels: perDepth.map((_, d) => `depth ${d + 1}`),
    values: perDepth,
    max: 1,
    yLabel: "accepted / attempted",
    format: (v) => `${Math.round(v * 100)}%`,
    emptyText: s.method === "ar" ? "plain decoding: no draft tokens" : "no drafts verified yet",
  });
}

function groupKeys() {
  const keys = new Set();
  for (const job of state.jobs) Object.keys(job.metadata).forEach((k) => keys.add(k));
  return [...[...keys].sort(), "method"];
}

function groupChart() {
  const select = $("group-key");
  const keys = groupKeys();
  const current = keys.includes(select.value) ? select.value : keys[0];
  if ([...select.options].map((o) => o.value).join("\n") !== keys.join("\n")) {
    select.replaceChildren(...keys.map((k) => h("option", { value: k }, k)));
  }
  select.value = current;
  const groups = new Map();
  for (const job of state.jobs) {
    const speedup = job.stats.baseline.speedup;
    if (speedup === null || speedup === undefined) continue;
    const value = current === "method" ? job.stats.method : job.metadata[current];
    if (value === undefined || value === null) continue;
    if (!groups.has(value)) groups.set(value, []);
    groups.get(value).push(speedup);
  }
  const names = [...groups.keys()].sort();
  return Charts.barChart({
    kind: "groups",
    labels: names.map((n) => `${n} (${groups.get(n).length})`),
    values: names.map((n) => groups.get(n).reduce((a, b) => a + b, 0) / groups.get(n).length),
    yLabel: "mean measured speedup",
    format: (v) => `${v.toFixed(2)}×`,
    reference: { value: 1, label: "1× = plain decoding" },
    emptyText: "no job with a measured baseline yet",
  });
}

async function renderDetail() {
  const job = state.jobs.find((j) => j.id === state.selectedId);
  $("detail").hidden = !job;
  if (!job) return;
  $("detail-id").textContent = job.id;
  $("detail-status").textContent = job.status.replace("_", " ");
  $("detail-status").className = `badge ${job.status}`;
  renderCards(job);
  $("chart-throughput").replaceChildren(throughputChart(job));
  $("chart-acceptance").replaceChildren(acceptanceChart(job));
  $("chart-groups").replaceChildren(groupChart());
  const samples = await completionTokens(job);
  if (state.selectedId !== job.id) return;
  $("chart-tokens").replaceChildren(
    Charts.histogram({ kind: "tokens", samples, xLabel: "completion tokens per request" }),
  );
}

// ---- submit ------------------------------------------------------------------------------

function problemMessage(error) {
  // The detail names the first problem; list the others, each with its line where known.
  const items = ((error.problem && error.problem.errors) || []).filter((e) => !error.message.endsWith(e.message));
  const text = (e) => (e.line && !e.message.startsWith("line ") ? `line ${e.line}: ${e.message}` : e.message);
  return [h("span", {}, `Rejected (${error.status}): ${error.message}`), h("ul", {}, ...items.map((e) => h("li", {}, text(e))))];
}

async function submitJob(event) {
  event.preventDefault();
  const message = $("submit-message");
  const file = $("submit-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  const metadata = $("submit-metadata").value.trim();
  if (metadata) form.append("metadata", metadata);
  const baseline = $("submit-baseline").value.trim();
  if (baseline) form.append("baseline_sample", baseline);
  const completionWindow = $("submit-window").value.trim();
  if (completionWindow) form.append("completion_window", completionWindow);
  $("submit-button").disabled = true;
  message.className = "";
  message.textContent = `Uploading ${file.name}…`;
  try {
    const job = await api("/v1/jobs", { method: "POST", body: form });
    message.className = "ok";
    message.textContent = `Submitted ${job.id} (${job.request_counts.total} requests).`;
    state.selectedId = job.id;
    $("submit-form").reset();
  } catch (error) {
    message.className = "error";
    message.replaceChildren(...problemMessage(error));
  } finally {
    $("submit-button").disabled = false;
  }
  poll();
}

// ---- wiring ------------------------------------------------------------------------------

$("sign-in-form").addEventListener("submit", (event) => {
  event.preventDefault();
  signIn($("api-key").value.trim());
});
$("sign-out").addEventListener("click", signOut);
$("submit-form").addEventListener("submit", submitJob);
$("group-key").addEventListener("change", () => $("chart-groups").replaceChildren(groupChart()));
if (state.key) signIn(state.key);
