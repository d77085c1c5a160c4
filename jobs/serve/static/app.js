"use strict";
// The maskdex page: text search with each result's matched mask drawn over it, and few-shot
// segmentation of an upload or a search result. No libraries: COCO RLE is decoded here.

const MASK_RGBA = [255, 40, 40, 140];
let pickedImageId = null;

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

function drawMask(canvas, rle) {
  const [h, w] = rle.size;
  canvas.width = w; canvas.height = h;
  const context = canvas.getContext("2d");
  const pixels = context.createImageData(w, h);
  const mask = decodeRle(rle);
  for (let i = 0; i < mask.length; i++) {
    if (mask[i]) pixels.data.set(MASK_RGBA, 4 * i);
  }
  context.putImageData(pixels, 0, 0);
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("cannot load " + src));
    image.src = src;
  });
}

async function postJson(url, body) {
  const response = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                     body: JSON.stringify(body)});
  return readResponse(response);
}

async function readResponse(response) {
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function setStatus(id, text, isError) {
  const element = document.getElementById(id);
  element.textContent = text;
  element.className = isError ? "error" : "";
}

async function showResult(result, grid) {
  const card = document.createElement("div");
  card.className = "result";
  card.dataset.imageId = result.image_id;
  const base = document.createElement("canvas");
  base.className = "photo";
  const mask = document.createElement("canvas");
  mask.className = "mask";
  const caption = document.createElement("div");
  caption.className = "caption";
  caption.textContent = result.score.toFixed(3) + "  " + result.uri.split("/").pop();
  const pick = document.createElement("button");
  pick.textContent = "Segment this";
  pick.type = "button";
  pick.onclick = () => {
    pickedImageId = result.image_id;
    document.getElementById("segment-picked").textContent = "picked " + result.image_id.slice(0, 12);
    document.getElementById("segment-file").value = "";
  };
  const stored = document.createElement("button");
  stored.textContent = "Stored segmentation";
  stored.type = "button";
  stored.onclick = () => showStoredSegmentation(result.image_id);
  const stack = document.createElement("div");
  stack.className = "stack";
  stack.append(base, mask);
  card.append(stack, caption);
  if (result.rerank) card.append(rerankNote(result, card));
  card.append(pick, stored);
  grid.append(card);
  const image = await loadImage("/images/" + result.image_id);
  base.width = image.naturalWidth; base.height = image.naturalHeight;
  const context = base.getContext("2d");
  context.drawImage(image, 0, 0);
  drawMask(mask, result.region.rle);
  context.drawImage(mask, 0, 0);  // the photo with its matched region tinted
  if (result.rerank && result.rerank.box) drawBox(context, result.rerank.box);
}

// What the re-ranker did to a result: its verdict, how far it moved, and whether the mask is the one
// its box pointed at (the first stage's region otherwise).
function rerankNote(result, card) {
  const r = result.rerank;
  const note = document.createElement("div");
  const shift = r.first_stage_rank - r.rank;
  card.dataset.rerank = r.status;
  card.dataset.moved = r.moved ? "true" : "false";
  let text = "re-rank: " + r.status;
  if (r.moved) text += (shift > 0 ? " \u2191" + shift : " \u2193" + (-shift)) + " (was #" + (r.first_stage_rank + 1) + ")";
  if (r.region_changed) text += ", mask from its box";
  if (r.reason) text += " \u2014 " + r.reason;
  note.textContent = text;
  note.className = "rerank " + r.status + (r.moved ? " moved" : "");
  return note;
}

function drawBox(context, box) {
  const [x, y, w, h] = box;
  context.strokeStyle = "#0a0";
  context.lineWidth = Math.max(2, Math.round(context.canvas.width / 150));
  context.strokeRect(x, y, w, h);
}

async function search(event) {
  event.preventDefault();
  const grid = document.getElementById("results");
  grid.replaceChildren();
  setStatus("search-status", "searching...");
  try {
    const k = parseInt(document.getElementById("search-k").value, 10) || 12;
    const body = {text: document.getElementById("search-text").value, k};
    if (document.getElementById("search-rerank").checked) body.rerank = true;
    const results = await postJson("/search", body);
    await Promise.all(results.map((result) => showResult(result, grid)));
    setStatus("search-status", results.length + " results");
  } catch (error) {
    setStatus("search-status", error.message, true);
  }
}

async function loadSets() {
  const select = document.getElementById("segment-set");
  try {
    const data = await (await fetch("/supports")).json();
    select.replaceChildren(...Object.entries(data.sets || {}).map(([name, classes]) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = name + " (" + Object.keys(classes).join(", ") + ")";
      return option;
    }));
  } catch (error) {
    setStatus("segment-status", "cannot list support sets: " + error.message, true);
  }
}

function classesField() {
  const text = document.getElementById("segment-classes").value.trim();
  return text ? text.split(",").map((name) => name.trim()) : null;
}

async function segment(event) {
  event.preventDefault();
  const file = document.getElementById("segment-file").files[0];
  const set = document.getElementById("segment-set").value;
  const mode = document.getElementById("segment-mode").value;
  setStatus("segment-status", "segmenting...");
  try {
    let result, source;
    if (file) {
      const form = new FormData();
      form.append("image", file);
      form.append("set", set);
      form.append("mode", mode);
      const classes = classesField();
      if (classes) form.append("classes", JSON.stringify(classes));
      result = await readResponse(await fetch("/segment", {method: "POST", body: form}));
      source = URL.createObjectURL(file);
    } else if (pickedImageId) {
      result = await postJson("/segment", {image_id: pickedImageId, set, mode, classes: classesField()});
      source = "/images/" + pickedImageId;
    } else {
      throw new Error("upload an image or pick a search result first");
    }
    await drawSegmentation(result, source);
    setStatus("segment-status", result.used_fallback ? "no class had examples: zero-shot" : "done");
  } catch (error) {
    setStatus("segment-status", error.message, true);
  }
}

async function drawSegmentation(result, source) {
  const canvas = document.getElementById("segment-canvas");
  const [image, labels] = await Promise.all([loadImage(source), loadImage("data:image/png;base64," + result.labels_png)]);
  canvas.width = result.width; canvas.height = result.height;
  const context = canvas.getContext("2d");
  context.drawImage(image, 0, 0, result.width, result.height);
  context.globalAlpha = 0.5;  // the labels PNG carries the class colours in its palette
  context.drawImage(labels, 0, 0);
  context.globalAlpha = 1;
  const legend = document.getElementById("legend");
  legend.replaceChildren(...result.classes.map((name, index) => {
    const item = document.createElement("li");
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.style.background = "rgb(" + result.colours[index].join(",") + ")";
    const support = [result.visual_support.includes(name) ? "examples" : null,
                     result.text_support.includes(name) ? "text" : null].filter(Boolean).join(", ");
    const share = (100 * (result.pixel_fractions[name] || 0)).toFixed(1);
    item.append(swatch, name + "  " + share + "%  (" + (support || "no support") + ")");
    return item;
  }));
}

// What `maskdex segment-index` stored for an indexed image, with the set (and classes, mode) chosen above.
async function showStoredSegmentation(imageId) {
  const params = new URLSearchParams({set: document.getElementById("segment-set").value,
                                      mode: document.getElementById("segment-mode").value});
  const classes = classesField();
  if (classes) params.set("classes", JSON.stringify(classes));
  setStatus("segment-status", "loading the stored segmentation...");
  try {
    const url = "/images/" + imageId + "/segmentation?" + params;
    const result = await readResponse(await fetch(url));
    await drawSegmentation(result, "/images/" + imageId);
    setStatus("segment-status", "stored segmentation of " + imageId.slice(0, 12) + " (" + result.mode +
              ", seed " + result.seed + ", " + result.segmented_at + ")");
  } catch (error) {
    setStatus("segment-status", error.message, true);
  }
}

document.getElementById("search-form").addEventListener("submit", search);
document.getElementById("segment-form").addEventListener("submit", segment);
document.getElementById("segment-file").addEventListener("change", () => {
  pickedImageId = null;
  document.getElementById("segment-picked").textContent = "";
});
loadSets();
