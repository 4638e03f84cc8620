// The page of seq2seq's server: sends the lines to :predict and shows the answers, the n-best
// lists and the attention heatmap of a translation (source pieces across, output pieces down).
"use strict";

const $ = (id) => document.getElementById(id);
const api = `/v1/models/${encodeURIComponent(document.body.dataset.model)}`;
let predictions = [];

async function getJSON(response) {
  const data = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
  if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
  return data;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function init() {
  try {
    const meta = await getJSON(await fetch(`${api}/metadata`));
    const options = meta.metadata.seq2seq;
    $("model-info").textContent = `model ${meta.model_spec.name}, version ${meta.model_spec.version}: ${options.source}`;
    $("n-best").max = options.max_n_best;
    $("n-best").disabled = options.max_n_best < 2;
    $("attention").disabled = !options.attention;
    $("attention").checked = options.attention;
    $("translate").disabled = false;
  } catch (error) {
    showError(`cannot read the model's metadata: ${error.message}`);
  }
}

async function translate() {
  const lines = $("source").value.split("\n").map((line) => line.trim()).filter((line) => line);
  if (!lines.length) return;
  const body = { instances: lines };
  const nBest = Math.max(1, Math.floor(Number($("n-best").value) || 1));
  if (nBest > 1) body.n_best = nBest;
  if ($("attention").checked) body.attention = true;
  $("translate").disabled = true;
  $("status").textContent = "translating…";
  showError("");
  const started = performance.now();
  try {
    const data = await getJSON(await fetch(`${api}:predict`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    }));
    render(lines, data.predictions);
    const ms = Math.round(performance.now() - started);
    $("status").textContent = `${lines.length} sentence${lines.length > 1 ? "s" : ""} in ${ms} ms`;
  } catch (error) {
    $("status").textContent = "";
    showError(error.message);
  } finally {
    $("translate").disabled = false;
  }
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function render(lines, answers) {
  predictions = answers;
  const list = $("results");
  list.replaceChildren();
  answers.forEach((prediction, i) => {
    const item = element("li", "result");
    item.append(element("div", "source", lines[i]));
    const line = element("div");
    line.append(element("span", "translation", prediction.translation),
                element("span", "score", prediction.score.toFixed(3)));
    item.append(line);
    if (prediction.n_best) {
      const others = element("ol", "n-best");
      prediction.n_best.forEach((h) => {
        const entry = element("li", null, h.translation);
        entry.append(element("span", "score", h.score.toFixed(3)));
        others.append(entry);
      });
      item.append(others);
    }
    if (prediction.attention) {
      item.classList.add("has-attention");
      item.addEventListener("click", () => select(i));
    }
    list.append(item);
  });
  if (answers.length && answers[0].attention) select(0);
  else $("heatmap-section").hidden = true;
}

function select(i) {
  document.querySelectorAll(".result").forEach((node, j) => node.classList.toggle("selected", i === j));
  $("heatmap-title").textContent = predictions[i].translation || "(empty)";
  $("heatmap-section").hidden = false;
  drawHeatmap($("heatmap"), predictions[i].attention);
}

function shade(weight) {  // white (0) to dark blue (1)
  const t = Math.max(0, Math.min(1, weight));
  const mix = (from, to) => Math.round(from + t * (to - from));
  return `rgb(${mix(255, 8)},${mix(255, 48)},${mix(255, 107)})`;
}

function drawHeatmap(canvas, attention) {
  const { source, target, weights } = attention;
  const font = "13px system-ui, sans-serif";
  let ctx = canvas.getContext("2d");
  ctx.font = font;
  const widest = (pieces) => Math.max(30, ...pieces.map((p) => ctx.measureText(p).width)) + 12;
  const left = widest(target), top = widest(source);
  const cell = Math.max(16, Math.min(36, Math.floor(640 / Math.max(1, source.length))));
  const width = left + cell * source.length + 8, height = top + cell * target.length + 8;
  const ratio = window.devicePixelRatio || 1;
  canvas.width = Math.ceil(width * ratio);
  canvas.height = Math.ceil(height * ratio);
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, width, height);
  ctx.font = font;
  ctx.fillStyle = "#1d2433";
  ctx.textBaseline = "middle";
  source.forEach((piece, j) => {  // across the top, written upwards over its column
    ctx.save();
    ctx.translate(left + j * cell + cell / 2, top - 6);
    ctx.rotate(-Math.PI / 2);
    ctx.textAlign = "left";
    ctx.fillText(piece, 0, 0);
    ctx.restore();
  });
  ctx.textAlign = "right";
  target.forEach((piece, i) => ctx.fillText(piece, left - 6, top + i * cell + cell / 2));
  weights.forEach((row, i) => row.forEach((weight, j) => {
    ctx.fillStyle = shade(weight);
    ctx.fillRect(left + j * cell, top + i * cell, cell - 1, cell - 1);
  }));
  canvas.dataset.cells = String(source.length * target.length);
  canvas.onmousemove = (event) => {
    const box = canvas.getBoundingClientRect();
    const j = Math.floor((event.clientX - box.left - left) / cell), i = Math.floor((event.clientY - box.top - top) / cell);
    canvas.title = i >= 0 && j >= 0 && i < target.length && j < source.length
      ? `${target[i]} → ${source[j]}: ${weights[i][j].toFixed(3)}` : "";
  };
}

$("translate").addEventListener("click", translate);
$("source").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) translate();
});
init();
