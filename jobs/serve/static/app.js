"use strict";
// The maskdex page: search by words and/or an example (an uploaded image, a box drawn on it, or a region
// of a result), a results grid with each match's mask on hover, a detail view of a result's regions,
// few-shot segmentation, and support sets. No libraries: COCO RLE is decoded here.

const MATCH_RGBA = [255, 40, 40, 150];
const REGION_COLOURS = [[230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48], [145, 30, 180],
                        [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212], [0, 128, 128]];
const $ = (id) => document.getElementById(id);

const state = {
  example: null,     // {kind: "file", file, image, box, name} or {kind: "like", like, label}
  lastRequest: null, // what the last search sent, for the COCO download
  picked: null,      // the image to segment: {imageId, name} or {file, name}
  sets: {},
};

// ---- COCO RLE ----------------------------------------------------------------------------------

// COCO's compressed RLE string -> run lengths (pycocotools' rleFrString, in JS).
function rleCounts(text) {
  const counts = [];
  let p = 0;
  while (p < text.length) {
    let x = 0, k = 0, more = 1;
    while (more) {
      const c = text.charCodeAt(p) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = c & 0x20;
      p++; k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// A mask as a Uint8Array in row-major order; RLE runs go down the columns, starting with zeros.
function decodeRle(rle) {
  const [h, w] = rle.size;
  const counts = typeof rle.counts === "string" ? rleCounts(rle.counts) : rle.counts;
  const mask = new Uint8Array(h * w);
  let index = 0, value = 0;
  for (const run of counts) {
    if (value) {
      for (let i = index; i < index + run; i++) mask[(i % h) * w + Math.floor(i / h)] = 1;
    }
    index += run;
    value = 1 - value;
  }
  return mask;
}

// Paints masks (each [rle, rgba]) into one transparent layer the size of the image.
function maskLayer(masks, width, height) {
  const canvas = document.createElement("canvas");
  canvas.width = width; canvas.height = height;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(width, height);
  for (const [rle, rgba] of masks) {
    const mask = decodeRle(rle);
    for (let i = 0; i < mask.length; i++) if (mask[i]) pixels.data.set(rgba, 4 * i);
  }
  context.putImageData(pixels, 0, 0);
  return canvas;
}

// ---- small helpers -----------------------------------------------------------------------------

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("That file could not be shown as an image."));
    image.src = src;
  });
}

function fileName(uri) { return uri.split(/[\\/]/).pop(); }

// A server error in words for people: the service's own message (it names the problem, never a path), or
// what a status means when there is none.
async function readResponse(response) {
  let data = null;
  try { data = await response.json(); } catch (error) { data = null; }
  if (response.ok) return data;
  const said = data && data.error ? data.error : "";
  const meaning = {401: "The service asks for its token: enter it under Support sets.",
                   413: "That file is too large for this service.",
                   500: "Something went wrong on the service; try again."}[response.status];
  const message = response.status === 401 || response.status >= 500 || !said ? meaning || response.statusText : said;
  throw new Error(message.charAt(0).toUpperCase() + message.slice(1));
}

async function call(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (error) {
    throw new Error("The service did not answer. Check that it is running and try again.");
  }
  return readResponse(response);
}

function postJson(url, body) {
  return call(url, {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
}

function setStatus(id, text, kind) {
  const element = $(id);
  element.textContent = text;
  element.className = kind || "";
}

function busy(progressId, buttonId, on) {
  $(progressId).hidden = !on;
  if (buttonId) $(buttonId).disabled = on;
}

function token() { return $("set-token").value.trim(); }

function authHeaders() { return token() ? {Authorization: "Bearer " + token()} : {}; }

// ---- tabs --------------------------------------------------------------------------------------

function selectTab(tabId) {
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const chosen = tab.id === tabId;
    tab.setAttribute("aria-selected", chosen ? "true" : "false");
    tab.tabIndex = chosen ? 0 : -1;
    $(tab.getAttribute("aria-controls")).hidden = !chosen;
  }
}

// ---- the example -------------------------------------------------------------------------------

async function setExampleFile(file) {
  if (!file) return;
  if (!file.type.startsWith("image/")) {
    setStatus("search-status", "That file is not an image; drop or choose a photo.", "error");
    return;
  }
  let image;
  try {
    image = await loadImage(URL.createObjectURL(file));
  } catch (error) {
    setStatus("search-status", error.message, "error");
    return;
  }
  state.example = {kind: "file", file, image, box: null, name: file.name || "pasted image"};
  showExample();
}

function setExampleLike(like, label) {
  state.example = {kind: "like", like, label};
  showExample();
}

function removeExample() {
  state.example = null;
  $("example-file").value = "";
  showExample();
}

function showExample() {
  const example = state.example;
  $("example").hidden = !example;
  const canvas = $("example-canvas");
  $("example-clear-box").hidden = true;
  $("example-box-label").textContent = "";
  if (example && example.kind === "file") {
    $("example-label").textContent = "Searching like " + example.name + ".";
    canvas.hidden = false;
    drawExample();
  } else if (example) {
    $("example-label").textContent = "Searching like " + example.label + ".";
    canvas.hidden = true;
  }
  updateWeight();
}

function drawExample(box) {
  const example = state.example;
  const canvas = $("example-canvas");
  canvas.width = example.image.naturalWidth; canvas.height = example.image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(example.image, 0, 0);
  const shown = box || example.box;
  if (shown) {
    context.fillStyle = "rgba(0, 0, 0, 0.35)";  // dim what the box leaves out
    context.fillRect(0, 0, canvas.width, canvas.height);
    if (shown[2] && shown[3]) context.drawImage(example.image, ...shown, ...shown);
    context.strokeStyle = "#ffd400";
    context.lineWidth = Math.max(2, Math.round(canvas.width / 200));
    context.strokeRect(...shown);
  }
  const fixed = example.box;
  $("example-box-label").textContent = fixed ? "Box: x " + fixed[0] + ", y " + fixed[1] + ", " + fixed[2] + " by " +
    fixed[3] + " pixels." : "Drag on the image to search for just one part of it.";
  $("example-clear-box").hidden = !fixed;
}

// Image pixel under a pointer event on the example canvas (the canvas is scaled by CSS).
function canvasPoint(event) {
  const canvas = $("example-canvas");
  const rect = canvas.getBoundingClientRect();
  const x = Math.round((event.clientX - rect.left) * canvas.width / rect.width);
  const y = Math.round((event.clientY - rect.top) * canvas.height / rect.height);
  return [Math.min(Math.max(x, 0), canvas.width), Math.min(Math.max(y, 0), canvas.height)];
}

function boxBetween(a, b) {
  return [Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(a[0] - b[0]), Math.abs(a[1] - b[1])];
}

function setupBoxDrawing() {
  const canvas = $("example-canvas");
  let start = null;
  canvas.addEventListener("pointerdown", (event) => {
    if (!state.example || state.example.kind !== "file") return;
    start = canvasPoint(event);
    canvas.setPointerCapture(event.pointerId);
  });
  canvas.addEventListener("pointermove", (event) => {
    if (start) drawExample(boxBetween(start, canvasPoint(event)));
  });
  canvas.addEventListener("pointerup", (event) => {
    if (!start) return;
    const box = boxBetween(start, canvasPoint(event));
    start = null;
    state.example.box = box[2] >= 2 && box[3] >= 2 ? box : null;  // a click is not a box
    drawExample();
  });
}

function updateWeight() {
  const both = Boolean(state.example) && $("search-text").value.trim() !== "";
  $("weight-row").hidden = !both;
  $("weight-hint").hidden = !both;
  const share = Math.round(100 * parseFloat($("search-weight").value));
  $("weight-value").textContent = share + "% example";
}

// ---- search ------------------------------------------------------------------------------------

function searchRequest() {
  const text = $("search-text").value.trim();
  const k = parseInt($("search-k").value, 10);
  const example = state.example;
  if (!text && !example) return null;
  const weight = parseFloat($("search-weight").value);
  const exclude = $("search-exclude").checked && Boolean(example);
  if (example && example.kind === "file") {
    return (url) => {
      const form = new FormData();
      form.append("image", example.file);
      if (example.box) form.append("box", example.box.join(","));
      if (text) form.append("text", text);
      form.append("k", String(k));
      form.append("weight", String(weight));
      form.append("exclude_self", exclude ? "true" : "false");
      return call(url, {method: "POST", body: form});
    };
  }
  const body = {k};
  if (text) body.text = text;
  if (example) Object.assign(body, {like: example.like, weight, exclude_self: exclude});
  if ($("search-rerank").checked && text) body.rerank = true;
  return (url) => postJson(url, body);
}

function describeQuery() {
  const text = $("search-text").value.trim();
  const example = state.example;
  const parts = [];
  if (text) parts.push("\u201c" + text + "\u201d");
  if (example) parts.push("like " + (example.kind === "file" ? example.name + (example.box ? " (the box)" : "")
                                                                : example.label));
  return parts.join(" and ");
}

async function search(event) {
  if (event) event.preventDefault();
  const request = searchRequest();
  const grid = $("results");
  if (!request) {
    setStatus("search-status", "Type some words or add an example image to search with.", "error");
    $("search-text").focus();
    return;
  }
  grid.replaceChildren();
  $("search-export").disabled = true;
  setStatus("search-status", "Searching " + describeQuery() + "\u2026");
  busy("search-progress", "search-submit", true);
  grid.setAttribute("aria-busy", "true");
  try {
    const results = await request("/search");
    state.lastRequest = request;
    await Promise.all(results.map((result, rank) => showResult(result, rank, grid)));
    if (!results.length) {
      setStatus("search-status", "Nothing matched " + describeQuery() + ". Try other words or another example.");
    } else {
      setStatus("search-status", results.length + " results for " + describeQuery() + ".");
      $("search-export").disabled = false;
    }
  } catch (error) {
    setStatus("search-status", error.message, "error");
  } finally {
    busy("search-progress", "search-submit", false);
    grid.removeAttribute("aria-busy");
  }
}

function scoreWords(score) {
  return "match " + score.toFixed(2);
}

const SCORE_HELP = "How close this image's best-matching region is to your query: the cosine similarity of " +
  "their embeddings (1 is identical; only the order among results matters).";

async function showResult(result, rank, grid) {
  const name = fileName(result.uri);
  const item = document.createElement("li");
  item.className = "result";
  item.dataset.imageId = result.image_id;
  const open = document.createElement("button");
  open.type = "button";
  open.className = "open";
  open.setAttribute("aria-label", "Result " + (rank + 1) + ": " + name + ", " + scoreWords(result.score) +
                    ". Open its regions.");
  const stack = document.createElement("div");
  stack.className = "stack";
  const photo = document.createElement("img");
  photo.alt = "";
  const mask = document.createElement("canvas");
  mask.className = "mask";
  stack.append(photo, mask);
  open.append(stack);
  const caption = document.createElement("div");
  caption.className = "caption";
  const score = document.createElement("span");
  score.className = "score";
  score.title = SCORE_HELP;
  score.textContent = scoreWords(result.score);
  const meter = document.createElement("meter");
  meter.min = 0; meter.max = 1; meter.value = Math.max(0, result.score);
  meter.setAttribute("aria-label", "match of result " + (rank + 1));
  const file = document.createElement("span");
  file.className = "file";
  file.textContent = name;
  caption.append(score, meter, file);
  item.append(open, caption);
  if (result.rerank) {
    item.dataset.rerank = result.rerank.status;
    item.dataset.moved = result.rerank.moved ? "true" : "false";
    item.append(rerankNote(result));
  }
  open.addEventListener("click", () => openDetail(result));
  grid.append(item);
  const image = await loadImage("/images/" + result.image_id).catch(() => null);
  if (!image) { caption.append(" (the image could not be loaded)"); return; }
  photo.src = image.src;
  const layer = maskLayer([[result.region.rle, MATCH_RGBA]], image.naturalWidth, image.naturalHeight);
  mask.width = layer.width; mask.height = layer.height;
  mask.getContext("2d").drawImage(layer, 0, 0);
}

// What the re-ranker did to a result: its verdict, how far it moved, and whether the mask is the one
// its box pointed at (the first stage's region otherwise).
function rerankText(result) {
  const r = result.rerank;
  const shift = r.first_stage_rank - r.rank;
  const verdict = {confirmed: "the model sees it", rejected: "the model does not see it",
                   unparsed: "the model's answer was unclear", error: "the model could not check it"}[r.status] || r.status;
  let text = "Double-check: " + verdict;
  if (r.moved) text += (shift > 0 ? ", moved up " + shift : ", moved down " + (-shift)) + " (was #" + (r.first_stage_rank + 1) + ")";
  if (r.region_changed) text += ", mask from its box";
  return text;
}

function rerankNote(result) {
  const note = document.createElement("p");
  note.textContent = rerankText(result);
  note.className = "rerank " + result.rerank.status + (result.rerank.moved ? " moved" : "");
  return note;
}

function drawBox(context, box) {
  const [x, y, w, h] = box;
  context.strokeStyle = "#0a0";
  context.lineWidth = Math.max(2, Math.round(context.canvas.width / 150));
  context.strokeRect(x, y, w, h);
}

async function exportCoco() {
  if (!state.lastRequest) return;
  setStatus("search-status", "Preparing the download\u2026");
  try {
    const coco = await state.lastRequest("/search/coco");
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([JSON.stringify(coco)], {type: "application/json"}));
    link.download = "maskdex-results-coco.json";
    link.click();
    setStatus("search-status", "Downloaded " + coco.annotations.length + " results as COCO instances (for CVAT, FiftyOne or Label Studio).");
  } catch (error) {
    setStatus("search-status", error.message, "error");
  }
}

// ---- the detail view ---------------------------------------------------------------------------

async function openDetail(result) {
  const dialog = $("detail");
  const name = fileName(result.uri);
  $("detail-title").textContent = name;
  $("detail-score").textContent = "Best region: " + scoreWords(result.score) + ". " + SCORE_HELP;
  $("detail-rerank").textContent = result.rerank ? rerankText(result) : "";
  $("detail-regions").replaceChildren();
  $("detail-segment").onclick = () => { dialog.close(); pickForSegment({imageId: result.image_id, name}); };
  dialog.showModal();
  try {
    const [image, stored] = await Promise.all([loadImage("/images/" + result.image_id),
                                               call("/images/" + result.image_id + "/regions")]);
    const matched = result.region.region_id;
    const regions = [...stored.regions].sort((a, b) => (b.region_id === matched) - (a.region_id === matched));
    const shown = new Set([matched]);
    const box = result.rerank && result.rerank.box;
    const redraw = () => drawDetail(image, regions.filter((r) => shown.has(r.region_id)), regions, box);
    $("detail-regions").replaceChildren(...regions.map((region) => {
      const number = region.region_id.split(":").pop();
      const item = document.createElement("li");
      const toggle = document.createElement("input");
      toggle.type = "checkbox";
      toggle.checked = shown.has(region.region_id);
      toggle.id = "toggle-" + number;
      const label = document.createElement("label");
      label.htmlFor = toggle.id;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = "rgb(" + regionColour(regions, region).join(",") + ")";
      label.append(swatch, "Region " + number + (region.region_id === matched ? " (the match)" : ""));
      toggle.addEventListener("change", () => {
        if (toggle.checked) shown.add(region.region_id); else shown.delete(region.region_id);
        redraw();
      });
      const more = document.createElement("button");
      more.type = "button";
      more.className = "secondary";
      more.textContent = "More like this";
      more.setAttribute("aria-label", "More like region " + number);
      more.addEventListener("click", () => {
        dialog.close();
        $("search-text").value = "";
        setExampleLike(region.region_id, "region " + number + " of " + name);
        search();
      });
      item.append(toggle, label, more);
      return item;
    }));
    redraw();
  } catch (error) {
    $("detail-score").textContent = error.message;
  }
}

function regionColour(regions, region) {
  return REGION_COLOURS[regions.indexOf(region) % REGION_COLOURS.length];
}

function drawDetail(image, shown, regions, box) {
  const canvas = $("detail-canvas");
  canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0);
  const layer = maskLayer(shown.map((r) => [r.rle, [...regionColour(regions, r), 140]]), canvas.width, canvas.height);
  context.drawImage(layer, 0, 0);
  if (box) drawBox(context, box);  // where the re-ranker pointed
  canvas.dataset.regionsShown = String(shown.length);
}

// ---- segmentation ------------------------------------------------------------------------------

async function pickForSegment(picked) {
  state.picked = picked;
  selectTab("tab-segment");
  if (!picked.file) $("segment-file").value = "";  // the file box must not name an upload no longer in use
  $("segment-picked").textContent = "Segmenting " + picked.name + ".";
  setStatus("segment-status", "");
  $("legend").replaceChildren();
  const source = picked.file ? URL.createObjectURL(picked.file) : "/images/" + picked.imageId;
  try {
    const image = await loadImage(source);
    const canvas = $("segment-canvas");
    canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
    canvas.getContext("2d").drawImage(image, 0, 0);
  } catch (error) {
    setStatus("segment-status", error.message, "error");
  }
  updateSegmentButton();
  $("segment-set").focus();
}

function updateSegmentButton() {
  const hasSets = Object.keys(state.sets).length > 0;
  $("segment-sets-empty").hidden = hasSets;
  $("segment-submit").disabled = !(state.picked && hasSets);
  $("segment-stored").disabled = !(state.picked && state.picked.imageId && hasSets);
  $("segment-submit").title = !hasSets ? "Make a support set first" : (!state.picked ? "Pick or upload an image first" : "");
}

function classesField() {
  const text = $("segment-classes").value.trim();
  return text ? text.split(",").map((name) => name.trim()).filter(Boolean) : null;
}

async function segment(event) {
  event.preventDefault();
  const picked = state.picked;
  if (!picked) return;
  const set = $("segment-set").value;
  const mode = $("segment-mode").value;
  setStatus("segment-status", "Segmenting " + picked.name + " with \u201c" + set + "\u201d\u2026");
  busy("segment-progress", "segment-submit", true);
  try {
    let result;
    const classes = classesField();
    if (picked.file) {
      const form = new FormData();
      form.append("image", picked.file);
      form.append("set", set);
      form.append("mode", mode);
      if (classes) form.append("classes", JSON.stringify(classes));
      result = await call("/segment", {method: "POST", body: form});
    } else {
      result = await postJson("/segment", {image_id: picked.imageId, set, mode, classes});
    }
    await drawSegmentation(result, picked.file ? URL.createObjectURL(picked.file) : "/images/" + picked.imageId);
    setStatus("segment-status", result.used_fallback ? "No class had examples, so this is from the class names alone." : "Done.");
  } catch (error) {
    setStatus("segment-status", error.message, "error");
  } finally {
    busy("segment-progress", null, false);
    updateSegmentButton();
  }
}

async function drawSegmentation(result, source) {
  const canvas = $("segment-canvas");
  const [image, labels] = await Promise.all([loadImage(source), loadImage("data:image/png;base64," + result.labels_png)]);
  canvas.width = result.width; canvas.height = result.height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0, result.width, result.height);
  context.globalAlpha = 0.5;  // the labels PNG carries the class colours in its palette
  context.drawImage(labels, 0, 0);
  context.globalAlpha = 1;
  $("legend").replaceChildren(...result.classes.map((name, index) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = "rgb(" + result.colours[index].join(",") + ")";
    const support = [result.visual_support.includes(name) ? "examples" : null,
                     result.text_support.includes(name) ? "its name" : null].filter(Boolean).join(" and ");
    const share = (100 * (result.pixel_fractions[name] || 0)).toFixed(1);
    item.append(swatch, name + ": " + share + "% of the image (from " + (support || "nothing") + ")");
    return item;
  }));
}

// What `maskdex segment-index` stored for the picked indexed image, with the set and detail chosen.
async function showStoredSegmentation() {
  const picked = state.picked;
  const params = new URLSearchParams({set: $("segment-set").value, mode: $("segment-mode").value});
  const classes = classesField();
  if (classes) params.set("classes", JSON.stringify(classes));
  setStatus("segment-status", "Loading the stored segmentation\u2026");
  try {
    const result = await call("/images/" + picked.imageId + "/segmentation?" + params);
    await drawSegmentation(result, "/images/" + picked.imageId);
    setStatus("segment-status", "Stored segmentation of " + picked.name + " (" + result.mode + ", seed " + result.seed +
              ", made " + result.segmented_at + ").");
  } catch (error) {
    const none = /^No segmentation/.test(error.message);
    setStatus("segment-status", none ? "No stored segmentation of " + picked.name + " with \u201c" + params.get("set") +
              "\u201d: the corpus has not been segmented with it yet." : error.message, "error");
  }
}

// ---- support sets ------------------------------------------------------------------------------

async function loadSets() {
  try {
    state.sets = (await call("/supports")).sets || {};
  } catch (error) {
    setStatus("set-status", "The support sets could not be listed: " + error.message, "error");
    state.sets = {};
  }
  const names = Object.keys(state.sets);
  const chosen = $("segment-set").value;
  $("segment-set").replaceChildren(...names.map((name) => {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name + " (" + Object.keys(state.sets[name]).join(", ") + ")";
    return option;
  }));
  if (names.includes(chosen)) $("segment-set").value = chosen;
  $("set-names").replaceChildren(...names.map((name) => Object.assign(document.createElement("option"), {value: name})));
  $("sets-empty").hidden = names.length > 0;
  $("sets").replaceChildren(...names.map(setItem));
  updateSegmentButton();
}

function setItem(name) {
  const classes = state.sets[name];
  const item = document.createElement("li");
  const title = document.createElement("h3");
  title.textContent = name;
  const counts = document.createElement("ul");
  counts.setAttribute("aria-label", "Classes of " + name);
  counts.replaceChildren(...Object.entries(classes).map(([cls, n]) => {
    const li = document.createElement("li");
    li.append(cls + ": " + n + (n === 1 ? " example " : " examples "),
              removeButton("Remove class " + cls + " of " + name, "/supports/" + encodeURIComponent(name) +
                           "/classes/" + encodeURIComponent(cls), "Remove"));
    return li;
  }));
  item.append(title, counts, removeButton("Remove set " + name, "/supports/" + encodeURIComponent(name), "Remove set"));
  return item;
}

// Removing asks twice: the first press turns the button into a confirmation.
function removeButton(label, url, text) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "secondary danger";
  button.textContent = text;
  button.setAttribute("aria-label", label);
  button.addEventListener("click", async () => {
    if (button.dataset.armed !== "true") {
      button.dataset.armed = "true";
      button.textContent = "Press again to remove";
      button.setAttribute("aria-label", label + ": press again to confirm");
      return;
    }
    try {
      await call(url, {method: "DELETE", headers: authHeaders()});
      setStatus("set-status", label.replace(/^Remove/, "Removed") + ".");
    } catch (error) {
      setStatus("set-status", error.message, "error");
    }
    loadSets();
  });
  return button;
}

async function addExample(event) {
  event.preventDefault();
  const set = $("set-name").value.trim();
  const form = new FormData();
  form.append("set", set);
  form.append("image", $("set-image").files[0]);
  form.append("labels", $("set-labels").files[0]);
  form.append("classes", $("set-classes").value);
  sessionStorage.setItem("maskdex-token", token());
  setStatus("set-status", "Adding the example to \u201c" + set + "\u201d\u2026");
  busy("set-progress", "set-submit", true);
  try {
    const added = await call("/supports", {method: "POST", body: form, headers: authHeaders()});
    const classes = added && added.classes ? Object.keys(added.classes) : [];
    setStatus("set-status", "Added to \u201c" + set + "\u201d" + (classes.length ? ": " + classes.join(", ") : "") + ".");
    $("set-image").value = ""; $("set-labels").value = "";
  } catch (error) {
    setStatus("set-status", error.message, "error");
  } finally {
    busy("set-progress", "set-submit", false);
    loadSets();
  }
}

// ---- wiring ------------------------------------------------------------------------------------

function imageFrom(items) {
  for (const item of items || []) {
    const file = item.getAsFile ? (item.kind === "file" ? item.getAsFile() : null) : item;
    if (file && file.type.startsWith("image/")) return file;
  }
  return null;
}

function wire() {
  for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => selectTab(tab.id));
  $("search-form").addEventListener("submit", search);
  $("search-text").addEventListener("input", updateWeight);
  $("search-weight").addEventListener("input", updateWeight);
  $("example-add").addEventListener("click", () => $("example-file").click());
  $("example-file").addEventListener("change", () => setExampleFile($("example-file").files[0]));
  $("example-remove").addEventListener("click", removeExample);
  $("example-clear-box").addEventListener("click", () => { state.example.box = null; drawExample(); });
  $("search-export").addEventListener("click", exportCoco);
  const bar = $("search-form");
  bar.addEventListener("dragover", (event) => { event.preventDefault(); bar.classList.add("dropping"); });
  bar.addEventListener("dragleave", () => bar.classList.remove("dropping"));
  bar.addEventListener("drop", (event) => {
    event.preventDefault();
    bar.classList.remove("dropping");
    setExampleFile(imageFrom(event.dataTransfer.files));
  });
  document.addEventListener("paste", (event) => {
    const file = imageFrom(event.clipboardData && event.clipboardData.items);
    if (file) { event.preventDefault(); selectTab("tab-search"); setExampleFile(file); }
  });
  setupBoxDrawing();
  $("detail-close").addEventListener("click", () => $("detail").close());
  $("segment-form").addEventListener("submit", segment);
  $("segment-stored").addEventListener("click", showStoredSegmentation);
  $("segment-file").addEventListener("change", () => {
    const file = $("segment-file").files[0];
    if (file) pickForSegment({file, name: file.name});
  });
  for (const link of document.querySelectorAll("[data-tab]")) {
    link.addEventListener("click", (event) => { event.preventDefault(); selectTab(link.dataset.tab); });
  }
  $("example-form").addEventListener("submit", addExample);
  $("set-token").value = sessionStorage.getItem("maskdex-token") || "";
  loadSets();
  // The re-rank option only where the service has a re-ranker.
  call("/healthz").then((health) => { $("rerank-option").hidden = !health.rerank; }).catch(() => {});
}

wire();
