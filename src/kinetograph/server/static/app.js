// The kinetograph web UI: submits jobs, polls /api/jobs every second, keeps one list item per job.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const jobsList = $("#jobs");
const items = new Map(); // job id -> {li, key}
let info = null;

async function api(path, options = {}) {
  const response = await fetch(path, options);
  let body = null;
  try { body = await response.json(); } catch (e) { /* not JSON */ }
  if (!response.ok) {
    let detail = body && body.detail;
    if (Array.isArray(detail)) detail = detail.map((d) => d.msg).join("; ");
    throw new Error(detail || `${response.status} ${response.statusText}`);
  }
  return body;
}

function showError(el, message) {
  el.textContent = message || "";
  el.hidden = !message;
}

// ----------------------------------------------------------------------------------- the form

function fillForm() {
  const d = info.defaults;
  $("#model").textContent = `${info.model} · preset ${info.preset} · ${info.device}` +
    (info.camera_head ? " · reads camera moves in prompts" : "") + (info.text ? "" : " · image only (prompts are ignored)");
  for (const name of ["num_frames", "num_inference_steps", "motion_bucket_id", "seed"]) $("#" + name).value = d[name];
  for (const name of ["height", "width", "fps", "noise_aug_strength", "min_guidance_scale", "max_guidance_scale",
                      "camera_prior"]) $("#" + name).placeholder = d[name];
  $("#text_guidance_scale").placeholder = "model's";
  const lim = info.limits;
  $("#num_frames").max = lim.max_frames;
  $("#num_inference_steps").max = lim.max_steps;
  for (const name of ["height", "width"]) { $("#" + name).max = lim.max_side; $("#" + name).step = info.size_multiple; }
  $("#fps").max = lim.max_fps;
  for (const [name, choices] of Object.entries(info.choices)) {
    const select = $("#" + name);
    for (const choice of choices) select.append(new Option(choice.replace(/_/g, " "), choice));
  }
  $("#sampler").value = d.sampler;
  $("#guidance_ramp").value = d.guidance_ramp;
  for (const select of document.querySelectorAll("select.tristate")) {
    const dflt = select.id in d ? (d[select.id] ? "on" : "off") : "on";
    select.append(new Option(`default (${dflt})`, ""), new Option("on", "true"), new Option("off", "false"));
  }
  updateMotion();
}

function updateMotion() { $("#motion-value").textContent = $("#motion_bucket_id").value; }

$("#motion_bucket_id").addEventListener("input", updateMotion);
$("#random-seed").addEventListener("click", () => { $("#seed").value = Math.floor(Math.random() * 2 ** 31); });
$("#image").addEventListener("change", () => {
  const file = $("#image").files[0];
  const preview = $("#preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.hidden = !file;
  if (file) preview.src = URL.createObjectURL(file);
  showError($("#form-error"), "");
  if (file && info && file.size > info.limits.max_upload_bytes) {
    showError($("#form-error"), `This image is ${(file.size / 2 ** 20).toFixed(1)} MB; the server takes up to ` +
      `${(info.limits.max_upload_bytes / 2 ** 20).toFixed(0)} MB. Downscale it or save it as JPEG or WebP.`);
  }
});

$("#job-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const error = $("#form-error");
  if (!$("#image").files.length) { showError(error, "Choose an image first."); return; }
  const data = new FormData();
  for (const el of form.elements) {
    if (!el.name || el.type === "file") continue;
    if (el.value.trim() !== "") data.append(el.name, el.value.trim());
  }
  data.append("image", $("#image").files[0]);
  const button = $("#submit");
  button.disabled = true;
  button.textContent = "Uploading…";
  try {
    const job = await api("/api/jobs", { method: "POST", body: data });
    showError(error, "");
    render([job, ...currentJobs]);
    poll();
  } catch (e) {
    showError(error, e.message);
  } finally {
    button.disabled = false;
    button.textContent = "Generate";
  }
});

// ------------------------------------------------------------------------------------ the jobs

let currentJobs = [];

function duration(seconds) {
  seconds = Math.round(seconds);
  return seconds >= 60 ? `${Math.floor(seconds / 60)} min ${seconds % 60} s` : `${seconds} s`;
}

function progressText(job) {
  const { step, total } = job.progress;
  if (job.state === "queued") return job.queue_position === 1 ? "next in line" : `#${job.queue_position} in line`;
  if (job.state === "running") {
    if (job.cancel_requested) return "cancelling…";
    if (!total) return "preparing…";
    if (step >= total) return `step ${step} of ${total} · decoding…`;
    return `step ${step} of ${total}` + (job.eta_seconds != null ? ` · about ${duration(job.eta_seconds)} left` : "");
  }
  if (job.state === "done" && job.finished && job.started) return `took ${duration(job.finished - job.started)}`;
  return "";
}

function makeItem(job) {
  const li = $("#job-template").content.firstElementChild.cloneNode(true);
  li.dataset.id = job.id;
  $(".cancel", li).addEventListener("click", () => act(job.id, "cancel"));
  $(".delete", li).addEventListener("click", () => act(job.id, "delete"));
  return li;
}

function update(li, job) {
  const p = job.params;
  $(".state", li).textContent = job.state;
  $(".state", li).className = `state state-${job.state}`;
  $(".title", li).textContent = job.image_name || "image";
  $(".when", li).textContent = new Date(job.created * 1000).toLocaleString();
  $(".prompt", li).textContent = (p.prompt ? `“${p.prompt}” · ` : "") +
    `${p.num_frames} frames · ${p.width}×${p.height} · ${p.num_inference_steps} steps · motion ${p.motion_bucket_id} · seed ${p.seed}`;
  const bar = $("progress", li);
  const { step, total } = job.progress;
  bar.hidden = job.state !== "running" && job.state !== "queued";
  if (job.state === "running" && total) { bar.max = total; bar.value = step; } else bar.removeAttribute("value");
  if (job.state === "queued") { bar.max = 1; bar.value = 0; }
  bar.setAttribute("aria-label", `progress of ${job.image_name || "job"}`);
  $(".progress-text", li).textContent = progressText(job);
  const notes = $(".notes", li);
  notes.replaceChildren(...[...job.camera, ...job.warnings.map((w) => `warning: ${w}`)].map((text) => {
    const item = document.createElement("li");
    item.textContent = text;
    return item;
  }));
  const err = $(".job-error", li);
  showError(err, job.state === "failed" ? job.error : "");
  const player = $(".player", li);
  const link = $(".download", li);
  if (job.video_url && !player.firstChild) {
    const video = document.createElement("video");
    video.controls = true; video.loop = true; video.muted = true; video.playsInline = true;
    video.preload = "metadata";
    video.src = job.video_url;
    video.setAttribute("aria-label", `video of ${job.image_name || "job"}`);
    player.append(video);
    link.href = job.video_url;
    link.download = `kinetograph-${job.id.slice(0, 8)}.mp4`;
  }
  if (!job.video_url) player.replaceChildren();
  link.hidden = !job.video_url;
  $(".cancel", li).hidden = !(job.state === "queued" || job.state === "running");
  $(".cancel", li).disabled = job.state === "running" && job.cancel_requested;
  $(".delete", li).hidden = job.state === "running";
}

function render(jobs) {
  const seen = new Set();
  currentJobs = jobs.filter((j) => !seen.has(j.id) && seen.add(j.id));
  const keep = new Set(currentJobs.map((j) => j.id));
  for (const [id, entry] of items) if (!keep.has(id)) { entry.li.remove(); items.delete(id); }
  let previous = null;
  for (const job of currentJobs) { // newest first, in the server's order
    let entry = items.get(job.id);
    if (!entry) { entry = { li: makeItem(job), key: "" }; items.set(job.id, entry); }
    const key = JSON.stringify(job);
    if (key !== entry.key) { update(entry.li, job); entry.key = key; }
    const want = previous ? previous.nextSibling : jobsList.firstChild;
    if (want !== entry.li) jobsList.insertBefore(entry.li, want);
    previous = entry.li;
  }
  $("#no-jobs").hidden = currentJobs.length > 0;
}

async function act(id, action) {
  if (action === "delete" && !confirm("Delete this job and its files?")) return;
  try {
    if (action === "cancel") await api(`/api/jobs/${id}/cancel`, { method: "POST" });
    else await api(`/api/jobs/${id}`, { method: "DELETE" });
    showError($("#jobs-error"), "");
  } catch (e) {
    showError($("#jobs-error"), e.message);
  }
  poll();
}

let polling = null;
async function poll() {
  clearTimeout(polling);
  try {
    const { jobs } = await api("/api/jobs");
    render(jobs);
    showError($("#jobs-error"), "");
  } catch (e) {
    showError($("#jobs-error"), `Cannot reach the server (${e.message}); retrying…`);
  }
  polling = setTimeout(poll, document.hidden ? 5000 : 1000);
}

async function start() {
  try {
    info = await api("/api/info");
    fillForm();
  } catch (e) {
    $("#model").textContent = "";
    showError($("#form-error"), `The model is not available: ${e.message}`);
    $("#submit").disabled = true;
  }
  poll();
}

document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
start();
