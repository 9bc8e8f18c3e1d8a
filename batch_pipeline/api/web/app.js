// The batch_pipeline web page: list jobs, start one, follow it live (server-sent events read with
// fetch so the bearer token can travel in a header), then show the ranked images and costs.
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;      // the job shown
let stream = null;       // AbortController of its event stream
const blobUrls = [];

function token() { return sessionStorage.getItem("batchApiToken") || ""; }
function headers(extra = {}) {
  const h = { ...extra };
  if (token()) h["Authorization"] = "Bearer " + token();
  return h;
}
async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: headers(options.headers) });
  if (response.status === 401) { $("auth").hidden = false; throw new Error("the API needs a token"); }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}
async function image(img, url) {
  // Through fetch, not <img src>, so a token-protected server can serve it.
  const response = await fetch(url, { headers: headers() });
  if (!response.ok) return;
  const blobUrl = URL.createObjectURL(await response.blob());
  blobUrls.push(blobUrl);
  img.src = blobUrl;
}
function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}
// Money arrives formatted by the server (pricing.format_usd): one formatting rule everywhere.
function costLine(c) {
  return `paid ${c.paid} · standard for the same calls ${c.standard} · batch/flex saved ${c.tierSaved}` +
    ` · cache avoided ${c.cacheAvoided}`;
}

async function loadJobs() {
  const { jobs } = await api("/api/jobs");
  const list = $("jobs");
  list.replaceChildren(...jobs.map((job) => {
    const li = text("li", `${job.jobId} · ${job.status} · ${job.prompt}`);
    li.dataset.jobId = job.jobId;
    if (current === job.jobId) li.className = "selected";
    li.addEventListener("click", () => show(job.jobId));
    return li;
  }));
}

function logEvent(name, data) {
  const summary = {
    round_queued: (d) => `round queued: iteration ${d.iteration} ${d.round}`,
    batch_created: (d) => `batch created: ${d.batchId} (${d.requestCount} requests, ${d.model})`,
    batch_progress: (d) => `batch ${d.batchId}: ${d.status} ${d.completed ?? 0}/${d.requestCount}`,
    round_applied: (d) => `round applied: iteration ${d.iteration} ${d.round} (${d.succeeded}/${d.calls} ok)`,
    cost: (d) => `cost so far: ${costLine(d)}`,
    winner: (d) => `winner: ${d.candidateId}`,
    status: (d) => `status: ${d.status}${d.error ? " — " + d.error : ""}`,
    end: (d) => `finished: ${d.status}`,
  }[name];
  if (!summary) return;
  const li = text("li", summary(data), "event-" + name);
  li.dataset.event = name;
  $("events").prepend(li);
}

function render(job) {
  $("job").hidden = false;
  $("job-title").textContent = `${job.jobId}: ${job.prompt}`;
  $("job-status").textContent = job.status;
  $("job-status").dataset.status = job.status;
  $("job-progress").value = job.progress;
  if (job.cost) $("job-cost").textContent = costLine(job.cost);
  $("job-error").textContent = job.error || "";
}

async function showRanked(jobId) {
  const { candidates } = await api(`/api/job/${encodeURIComponent(jobId)}/candidates`);
  const items = candidates.filter((c) => c.inLastRanking && c.imageUrl);
  $("ranked").replaceChildren(...items.map((c) => {
    const li = document.createElement("li");
    li.className = "candidate";
    const img = document.createElement("img");
    img.alt = c.prompt || c.candidateId;
    image(img, c.imageUrl);
    li.append(img, text("div", `#${c.rank ?? "-"} ${c.candidateId} · score ${c.score?.toFixed(2) ?? "-"}`),
              text("div", c.prompt || "", "hint"));
    return li;
  }));
}

async function follow(jobId) {
  if (stream) stream.abort();
  stream = new AbortController();
  const response = await fetch(`/api/job/${encodeURIComponent(jobId)}/events`,
                               { headers: headers({ Accept: "text/event-stream" }), signal: stream.signal });
  if (!response.ok) return;
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let name = "message", data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event: ")) name = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      if (data && current === jobId) await onEvent(jobId, name, JSON.parse(data));
    }
  }
}

async function onEvent(jobId, name, data) {
  if (name === "snapshot") { render(data); return; }
  logEvent(name, data);
  if (name === "cost") $("job-cost").textContent = costLine(data);
  if (name === "round_applied" || name === "status" || name === "end") render(await api(`/api/job/${encodeURIComponent(jobId)}`));
  if (name === "winner") {
    $("winner").hidden = false;
    $("winner-prompt").textContent = data.prompt || data.candidateId;
    image($("winner-image"), data.imageUrl);
  }
  if (name === "end") { await showRanked(jobId); await loadJobs(); }
}

async function show(jobId) {
  current = jobId;
  blobUrls.splice(0).forEach((u) => URL.revokeObjectURL(u));
  $("events").replaceChildren();
  $("ranked").replaceChildren();
  $("winner").hidden = true;
  await loadJobs();
  follow(jobId).catch((e) => { if (e.name !== "AbortError") $("job-error").textContent = String(e.message || e); });
}

$("start").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const body = { prompt: form.get("prompt"), tier: form.get("tier") };
  for (const k of ["n", "m", "iterations", "ensembleSize"]) body[k] = Number(form.get(k));
  $("form-error").textContent = "";
  try {
    const job = await api("/api/beam-search", { method: "POST", body: JSON.stringify(body),
                                                headers: { "Content-Type": "application/json" } });
    await show(job.jobId);
  } catch (e) { $("form-error").textContent = e.message; }
});
$("refresh").addEventListener("click", () => loadJobs().catch(() => {}));
$("save-token").addEventListener("click", () => {
  sessionStorage.setItem("batchApiToken", $("token").value.trim());
  $("auth").hidden = true;
  loadJobs().catch(() => {});
});
fetch("/api/health").then((r) => r.json()).then((h) => { $("health").textContent = h.worker ? "worker running" : "worker stopped"; });
loadJobs().catch(() => {});
