// secondread viewer: upload a study, show its slices with window/level and overlays, list the report.
// Plain JavaScript, no build. Every API call carries the bearer token (kept in sessionStorage only);
// pixels come as PNGs fetched with that header and shown through blob: URLs. Report text is put into
// the page with textContent only, so nothing from a report or a note can inject markup.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "secondread-token";
const state = { view: null, z: 0, center: 0, width: 1, wanted: null, busy: false, urls: {} };

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").classList.toggle("error", !!isError);
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {}, { Authorization: "Bearer " + token() });
  const response = await fetch(path, Object.assign({}, options, { headers }));
  if (!response.ok) {
    let detail = response.statusText;
    try { detail = (await response.json()).detail || detail; } catch (e) { /* not JSON */ }
    const error = new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    error.status = response.status;
    throw error;
  }
  return response;
}

// ---- token ---------------------------------------------------------------------------------
function initToken() {
  $("token-state").textContent = token() ? "token set for this tab" : "no token yet";
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token").value = "";
    $("token-state").textContent = "token set for this tab";
  });
}

// ---- analysing -------------------------------------------------------------------------------
async function analyseUpload(event) {
  event.preventDefault();
  const files = $("files").files;
  if (!files.length) { setStatus("Choose a file first.", true); return; }
  const form = new FormData();
  for (const file of files) form.append("files", file, file.name);
  const notes = $("notes").value.trim();
  if (notes) form.append("notes", new Blob([notes], { type: "text/plain" }), "notes.txt");
  if ($("fhir").files.length) form.append("fhir", $("fhir").files[0], "fhir.json");
  await runAnalysis(files.length === 1 ? files[0].name : `${files.length} files`,
                    () => api("/v1/analyze?view=true", { method: "POST", body: form }));
}

async function runAnalysis(label, request) {
  $("analyse").disabled = true;
  setStatus(`Analysing ${label}…`);
  const started = performance.now();
  try {
    const report = await (await request()).json();
    showReport(report);
    if (report.view) openView(report.view);
    setStatus(`Analysed ${label} in ${((performance.now() - started) / 1000).toFixed(1)} s.`);
  } catch (error) {
    setStatus(error.status === 401 ? "401: the token is missing or wrong (enter it above)." : error.message, true);
  } finally {
    $("analyse").disabled = false;
  }
}

// ---- the report --------------------------------------------------------------------------------
function prob(p) {
  if (p === null || p === undefined) return "–";
  if (p > 0.9995) return "> 0.999";
  if (p < 0.0005) return "< 0.001";
  return p.toFixed(3);
}

function cell(row, content) {
  const td = document.createElement("td");
  if (content instanceof Node) td.appendChild(content); else td.textContent = content;
  row.appendChild(td);
  return td;
}

function tag(text, cls) {
  const span = document.createElement("span");
  span.className = "tag " + (cls || "");
  span.textContent = text;
  return span;
}

function measurements(finding) {
  if (finding.kind === "nodule candidate") {
    const parts = [`diameter ${finding.diameter_mm} mm (long ${finding.long_axis_mm}, short ${finding.short_axis_mm})`];
    if (finding.volume_mm3 !== undefined) parts.push(`volume ${finding.volume_mm3} mm³`);
    if (finding.axial_slice !== undefined) parts.push(`slice ${finding.axial_slice + 1}`);
    return parts.join(", ");
  }
  if (finding.kind === "calcification cluster candidate") {
    return finding.diameter_mm !== null && finding.diameter_mm !== undefined
      ? `${finding.diameter_mm} mm across` : `radius ${finding.radius_px} px`;
  }
  if (finding.kind === "lesion candidate") {
    return `centre ${Math.round(finding.centroid.x)}, ${Math.round(finding.centroid.y)} px`;
  }
  if (finding.kind === "segmented lesion") {
    const area = finding.area_mm2 !== null && finding.area_mm2 !== undefined ? `${finding.area_mm2} mm²` : `${finding.area_px} px`;
    const d = finding.longest_diameter_mm !== null && finding.longest_diameter_mm !== undefined
      ? `${finding.longest_diameter_mm} mm` : `${finding.longest_diameter_px} px`;
    return `area ${area}, longest diameter ${d}`;
  }
  const m = finding.measurements || {};
  const units = { area_px: "px", area_mm2: "mm²", volume_mm3: "mm³", diameter_mm: "mm" };
  const parts = Object.entries(m).map(([k, v]) => `${k.replace(/_(px|mm2|mm3|mm)$/, "")} ${v} ${units[k] || ""}`.trim());
  return parts.length ? parts.join(", ") : "–";
}

// a candidate's row: [what, its score in words, what the score is when the report does not say]
function candidateCells(f) {
  switch (f.kind) {
    case "nodule candidate":
      return [`nodule candidate #${f.rank}`, `score ${Number(f.score).toFixed(2)}`, "a ranking score, not a probability"];
    case "calcification cluster candidate":
      return [`calcification cluster candidate #${f.rank}`, `${f.specks} specks`, "a count, not a probability"];
    case "lesion candidate":
      return [`lesion candidate #${f.rank}`, `map ${Number(f.score).toFixed(2)}`, "a ranking score, not a probability"];
    case "segmented lesion":
      return [`outlined ${f.label}`, `mean probability ${Number(f.mean_probability).toFixed(2)}`, ""];
    default:
      return null;
  }
}

function showReport(report) {
  const s = report.suggestion || {};
  $("statement").textContent = s.statement || "–";
  $("statement").classList.remove("muted");
  $("summary").textContent = s.summary && s.summary.text ? `Summary: ${s.summary.text}` : "";
  const u = s.uncertainty || {};
  $("uncertainty").textContent = "";
  if (u.level) {
    $("uncertainty").append("Confidence: ");
    const strong = document.createElement("strong");
    strong.className = "level-" + u.level;
    strong.textContent = u.level;
    $("uncertainty").append(strong, (u.reasons && u.reasons.length) ? ` (${u.reasons.join("; ")})` : "");
  }
  const body = $("findings").querySelector("tbody");
  body.replaceChildren();
  for (const f of report.findings || []) {
    const row = document.createElement("tr");
    const candidate = candidateCells(f);
    if (candidate) {
      cell(row, candidate[0]);
      cell(row, candidate[1]).title = f.score_meaning || candidate[2];
      cell(row, "–");
      row.className = "candidate";
      if (f.kind === "nodule candidate") row.addEventListener("click", () => setSlice(f.axial_slice));
    } else {
      cell(row, f.label + (f.positive ? " (suggested)" : ""));
      cell(row, prob(f.probability)).className = "probability";
      cell(row, f.operating_point_crossed || "none crossed");
    }
    cell(row, measurements(f));
    body.appendChild(row);
  }
  showRecord(report.record);
  const m = report.model || {};
  $("model").textContent = `${m.name || "?"} ${m.version || ""} (${m.architecture || ""}); input ${report.input ? report.input.name : ""}, ${report.input ? report.input.modality : ""} ${report.input ? report.input.shape.join(" × ") : ""}`;
  $("disclaimer").textContent = report.disclaimer || $("disclaimer").textContent;
}

function showRecord(record) {
  const body = $("facts").querySelector("tbody");
  body.replaceChildren();
  $("contradictions").replaceChildren();
  $("no-record").hidden = !!record;
  if (!record) return;
  for (const c of record.contradictions || []) {
    const p = document.createElement("p");
    p.textContent = `Note and record disagree on ${c.concept}: note says ${c.note_says}, record says ${c.record_says}.`;
    $("contradictions").appendChild(p);
  }
  for (const fact of record.facts || []) {
    const row = document.createElement("tr");
    cell(row, fact.concept);
    const context = document.createElement("span");
    const flags = ["negated", "uncertain", "historical", "hypothetical", "family"].filter((k) => fact[k]);
    if (!flags.length) context.appendChild(tag("affirmed"));
    for (const flag of flags) context.appendChild(tag(flag, flag));
    for (const [k, v] of Object.entries(fact.attributes || {})) context.appendChild(tag(`${k}: ${v}`));
    cell(row, context);
    const where = document.createElement("span");
    where.textContent = `${fact.origin || ""} ${fact.section || ""}`.trim();
    if (fact.sentence) {
      const sentence = document.createElement("div");
      sentence.className = "sentence";
      sentence.textContent = `“${fact.sentence}”`;
      where.appendChild(sentence);
    }
    cell(row, where);
    body.appendChild(row);
  }
}

// ---- the image -------------------------------------------------------------------------------------
function openView(view) {
  state.view = view;
  state.z = Math.min(Math.max(view.start_slice || 0, 0), view.slices - 1);
  const [lo, hi] = view.range;
  const span = Math.max(hi - lo, 1);
  $("slice").max = view.slices - 1;
  $("slice").value = state.z;
  $("slice").disabled = view.slices < 2;
  $("center").min = lo - span / 2; $("center").max = hi + span / 2;
  $("width").min = span / 500; $("width").max = span * 2;
  state.center = view.window.center;  // not resetWindow(): one render, once the view is set up
  state.width = view.window.width;
  $("show-heat").disabled = !view.heatmap;
  $("show-contour").disabled = !view.mask;
  $("show-boxes").disabled = !view.boxes.length;
  $("stage-empty").hidden = true;
  const canvas = $("boxes");
  canvas.width = view.cols; canvas.height = view.rows;
  render();
}

function resetWindow() {
  if (!state.view) return;
  state.center = state.view.window.center;
  state.width = state.view.window.width;
  render();
}

function syncControls() {
  $("slice").value = state.z;
  $("slice-out").textContent = `${state.z + 1} / ${state.view.slices}`;
  $("center").value = state.center; $("width").value = state.width;
  $("center-out").textContent = state.center.toFixed(0);
  $("width-out").textContent = state.width.toFixed(0);
}

// Only one slice request in flight; the newest wish wins (dragging sends many).
function render() {
  if (!state.view) return;
  syncControls();
  drawBoxes();
  state.wanted = { id: state.view.id, z: state.z, center: state.center, width: state.width };
  if (!state.busy) fetchWanted();
}

async function fetchWanted() {
  state.busy = true;
  $("stage").dataset.pending = "1";  // for tests and scripts: a newer slice is on its way
  try {
    while (state.wanted) {
      const w = state.wanted;
      state.wanted = null;
      const base = `/v1/views/${w.id}`;
      const q = `?center=${encodeURIComponent(w.center)}&width=${encodeURIComponent(w.width)}`;
      await show("slice-img", `${base}/slice/${w.z}.png${q}`);
      await show("heat-img", state.view.heatmap && $("show-heat").checked ? `${base}/heatmap/${w.z}.png` : null);
      await show("contour-img", state.view.mask && $("show-contour").checked ? `${base}/contour/${w.z}.png` : null);
      $("stage").dataset.slice = String(w.z);
      $("stage").dataset.window = `${w.center.toFixed(1)}/${w.width.toFixed(1)}`;
    }
  } catch (error) {
    setStatus(error.status === 404 ? "This view has expired: analyse the study again." : error.message, true);
  } finally {
    state.busy = false;
    delete $("stage").dataset.pending;
  }
}

async function show(imgId, path) {
  const img = $(imgId);
  if (state.urls[imgId]) URL.revokeObjectURL(state.urls[imgId]);
  state.urls[imgId] = null;
  if (!path) { img.removeAttribute("src"); return; }
  const blob = await (await api(path)).blob();
  state.urls[imgId] = URL.createObjectURL(blob);
  img.src = state.urls[imgId];
  await img.decode().catch(() => {});
}

// candidates drawn apart from the model's region (green): nodules magenta, calcification clusters amber,
// a detector's lesion candidates cyan
const BOX_COLOURS = { "nodule candidate": "#ff40ff", "calcification cluster candidate": "#ffc000",
                      "lesion candidate": "#00e5ff" };

function drawBoxes() {
  const canvas = $("boxes");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!$("show-boxes").checked) return;
  ctx.strokeStyle = "#00ff66";
  ctx.lineWidth = Math.max(1, canvas.width / 256);
  ctx.font = `${Math.max(8, canvas.width / 40)}px sans-serif`;
  ctx.fillStyle = "#00ff66";
  for (const b of state.view.boxes) {
    if (state.z < b.z_min || state.z >= b.z_max) continue;
    ctx.strokeStyle = ctx.fillStyle = BOX_COLOURS[b.kind] || "#00ff66";
    ctx.strokeRect(b.x_min, b.y_min, b.x_max - b.x_min, b.y_max - b.y_min);
    if (canvas.width >= 64) ctx.fillText(b.label || "", b.x_min + 2, b.y_min - 3 > 10 ? b.y_min - 3 : b.y_min + Math.max(8, canvas.width / 40));
  }
}

function setSlice(z) {
  if (!state.view) return;
  state.z = Math.min(Math.max(z, 0), state.view.slices - 1);
  render();
}

function initImageControls() {
  $("slice").addEventListener("input", () => setSlice(Number($("slice").value)));
  $("center").addEventListener("input", () => { state.center = Number($("center").value); render(); });
  $("width").addEventListener("input", () => { state.width = Number($("width").value); render(); });
  $("reset-window").addEventListener("click", resetWindow);
  for (const id of ["show-heat", "show-contour"]) $(id).addEventListener("change", render);
  $("show-boxes").addEventListener("change", drawBoxes);
  const stage = $("stage");
  stage.addEventListener("wheel", (event) => {
    if (!state.view || state.view.slices < 2) return;
    event.preventDefault();
    setSlice(state.z + (event.deltaY > 0 ? 1 : -1));
  }, { passive: false });
  stage.addEventListener("keydown", (event) => {
    if (event.key === "ArrowUp" || event.key === "PageUp") setSlice(state.z - 1);
    if (event.key === "ArrowDown" || event.key === "PageDown") setSlice(state.z + 1);
  });
  let drag = null;
  stage.addEventListener("mousedown", (event) => {
    if (!state.view) return;
    drag = { x: event.clientX, y: event.clientY, center: state.center, width: state.width };
  });
  window.addEventListener("mouseup", () => { drag = null; });
  window.addEventListener("mousemove", (event) => {
    if (!drag) return;
    const span = Math.max(state.view.range[1] - state.view.range[0], 1);
    const px = stage.clientWidth || 1;
    state.width = Math.max(span / 500, drag.width + (event.clientX - drag.x) / px * span);
    state.center = drag.center - (event.clientY - drag.y) / px * span;
    render();
  });
}

// ---- PACS -----------------------------------------------------------------------------------
function initPacs() {
  if (!$("pacs-load")) return;
  $("pacs-load").addEventListener("click", async () => {
    const list = $("pacs-studies");
    list.replaceChildren();
    try {
      const studies = await (await api("/v1/pacs/studies")).json();
      if (!studies.length) setStatus("The PACS holds no studies.");
      for (const study of studies) {
        const uid = study.uid || study.StudyInstanceUID || study.study_uid;
        const li = document.createElement("li");
        li.textContent = [study.date || study.StudyDate, study.modalities || study.ModalitiesInStudy,
                          study.description || study.StudyDescription].filter(Boolean).join(" · ") || uid;
        li.title = uid;
        li.addEventListener("click", () => runAnalysis("the PACS study",
          () => api(`/v1/pacs/studies/${encodeURIComponent(uid)}/analyze?view=true`, { method: "POST" })));
        list.appendChild(li);
      }
    } catch (error) {
      setStatus(error.message, true);
    }
  });
}

initToken();
initImageControls();
initPacs();
$("upload-form").addEventListener("submit", analyseUpload);
