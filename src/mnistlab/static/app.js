// mnistlab's draw-a-digit page: pointer strokes on a canvas, live predictions from
// POST /api/predict (one request in flight at a time; the newest drawing goes next),
// probability bars, the 28x28 image the network saw, undo/clear and uploads.
"use strict";

const LINE_WIDTH = 18; // px on the 280 px pad: after scaling to 20 px, MNIST-like strokes
// The drawing is sent at half size: the server decodes a 140x140 PNG in ~0.45 ms, a
// 280x280 one in ~1.5 ms, and the digit ends up 20 px tall either way.
const SEND_SIZE = 140;

const pad = document.getElementById("pad");
const ctx = pad.getContext("2d");
const seen = document.getElementById("seen");
const seenCtx = seen.getContext("2d");
const barsEl = document.getElementById("bars");
const labelEl = document.getElementById("label");
const confidenceEl = document.getElementById("confidence");
const errorEl = document.getElementById("error");
const modelEl = document.getElementById("model");
const uploadEl = document.getElementById("upload");

let classes = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
let maxBodyBytes = 1000000; // the server's limit, from GET /api/model
let strokes = [];        // finished and current strokes: arrays of [x, y] in pad pixels
let current = null;      // the stroke being drawn
let uploaded = null;     // an uploaded image shown on the pad (ImageBitmap)
let inFlight = false;    // a drawing prediction is on its way
let dirty = false;       // the drawing changed since the last request was sent
let generation = 0;      // bumped by clear/undo/upload: late answers for old drawings are dropped

const sendCanvas = document.createElement("canvas");
sendCanvas.width = sendCanvas.height = SEND_SIZE;
const sendCtx = sendCanvas.getContext("2d");
sendCtx.imageSmoothingQuality = "high";

// ------------------------------------------------------------------ drawing

function point(e) {
  const r = pad.getBoundingClientRect();
  return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height];
}

function drawStroke(s) {
  ctx.beginPath();
  ctx.moveTo(s[0][0], s[0][1]);
  if (s.length === 1) ctx.lineTo(s[0][0] + 0.01, s[0][1]); // a dot
  for (let i = 1; i < s.length; i++) ctx.lineTo(s[i][0], s[i][1]);
  ctx.stroke();
}

function redraw() {
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, pad.width, pad.height);
  if (uploaded) {
    const k = Math.min(pad.width / uploaded.width, pad.height / uploaded.height);
    const w = uploaded.width * k, h = uploaded.height * k;
    ctx.drawImage(uploaded, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
  }
  ctx.strokeStyle = "#000";
  ctx.lineWidth = LINE_WIDTH;
  ctx.lineCap = "round";
  ctx.lineJoin = "round";
  strokes.forEach(drawStroke);
}

pad.addEventListener("pointerdown", (e) => {
  if (e.button !== 0) return;
  e.preventDefault();
  try { pad.setPointerCapture(e.pointerId); } catch { /* a synthetic event: nothing to capture */ }
  if (uploaded) { uploaded = null; strokes = []; generation++; } // a new drawing replaces the upload
  current = [point(e)];
  strokes.push(current);
  hideError();
  redraw();
  changed();
});

pad.addEventListener("pointermove", (e) => {
  if (!current) return;
  e.preventDefault();
  const events = e.getCoalescedEvents ? e.getCoalescedEvents() : [e];
  for (const ev of (events.length ? events : [e])) current.push(point(ev));
  redraw();
  changed();
});

function endStroke() {
  if (!current) return;
  current = null;
  changed();
}
pad.addEventListener("pointerup", endStroke);
pad.addEventListener("pointercancel", endStroke);

function undo() {
  if (uploaded) { uploaded = null; }
  else { strokes.pop(); }
  current = null;
  generation++;
  redraw();
  hideError();
  if (strokes.length) changed(); else resetResult();
}

function clearAll() {
  strokes = [];
  current = null;
  uploaded = null;
  generation++;
  redraw();
  hideError();
  resetResult();
}

document.getElementById("undo").addEventListener("click", undo);
document.getElementById("clear").addEventListener("click", clearAll);
document.addEventListener("keydown", (e) => {
  if ((e.ctrlKey || e.metaKey) && e.key === "z") { e.preventDefault(); undo(); }
  else if (e.key === "Escape") clearAll();
});

// ------------------------------------------------------------------ predictions

function changed() {
  dirty = true;
  if (!inFlight) sendDrawing();
}

function busy(on) {
  // data-busy: a request is on its way (tests wait for it to go)
  if (on) document.body.dataset.busy = "1"; else delete document.body.dataset.busy;
}

function sendDrawing() {
  if (!strokes.length) { dirty = false; return; }
  dirty = false;
  inFlight = true;
  busy(true);
  const gen = generation;
  sendCtx.drawImage(pad, 0, 0, SEND_SIZE, SEND_SIZE);
  sendCanvas.toBlob(async (blob) => {
    try {
      const answer = await post(blob);
      if (gen === generation) show(answer);
    } catch (err) {
      if (gen === generation) showError(err.message);
    } finally {
      inFlight = false;
      if (dirty) sendDrawing(); else busy(false);
    }
  }, "image/png");
}

async function post(body) {
  const response = await fetch("/api/predict", { method: "POST", body });
  let answer;
  try { answer = await response.json(); } catch { answer = null; }
  if (!response.ok) {
    throw new Error((answer && answer.detail) || `the server answered ${response.status}`);
  }
  return answer;
}

uploadEl.addEventListener("change", async () => {
  const file = uploadEl.files[0];
  uploadEl.value = "";
  if (!file) return;
  generation++;
  const gen = generation;
  strokes = [];
  current = null;
  hideError();
  resetResult();
  if (file.size > maxBodyBytes) { // the server would refuse it (413): say so without sending it
    uploaded = null;
    redraw();
    showError(`${file.name}: the file is ${file.size.toLocaleString("en")} bytes; ` +
              `the limit is ${maxBodyBytes.toLocaleString("en")}. Choose a smaller image.`);
    return;
  }
  try { uploaded = await createImageBitmap(file); } catch { uploaded = null; }
  redraw();
  const form = new FormData();
  form.append("image", file, file.name); // multipart: the server's messages name the file
  busy(true);
  try {
    const answer = await post(form);
    if (gen === generation) show(answer);
  } catch (err) {
    if (gen === generation) {
      resetResult();
      showError(err.message.includes(file.name) ? err.message : `${file.name}: ${err.message}`);
    }
  } finally {
    busy(false);
  }
});

// ------------------------------------------------------------------ display

function buildBars() {
  barsEl.replaceChildren(...classes.map((name, k) => {
    const li = document.createElement("li");
    li.dataset.class = String(k);
    li.innerHTML = '<span class="cls"></span><span class="track"><span class="fill"></span></span><span class="pct"></span>';
    li.querySelector(".cls").textContent = name;
    return li;
  }));
  resetResult();
}

function resetResult() {
  labelEl.textContent = "–";
  confidenceEl.textContent = "";
  for (const li of barsEl.children) {
    li.classList.remove("top");
    li.dataset.probability = "0";
    li.querySelector(".fill").style.width = "0%";
    li.querySelector(".pct").textContent = "";
  }
  seenCtx.fillStyle = "#000";
  seenCtx.fillRect(0, 0, seen.width, seen.height);
}

function show(answer) {
  // Input that looks like no digit (a face, a scribble, a blob) gets no digit, only why;
  // the bars still show what the network made of it.
  labelEl.textContent = answer.not_a_digit ? "?" : answer.label;
  // Under the run's calibrated threshold the page says so and names the runner-up.
  confidenceEl.textContent = answer.not_a_digit
    ? `not a digit? (${answer.not_a_digit_reason})`
    : answer.unsure
      ? `${answer.label}? could be ${answer.runner_up.label}`
      : `${(answer.confidence * 100).toFixed(1)}% sure`;
  confidenceEl.classList.toggle("unsure", Boolean(answer.unsure || answer.not_a_digit));
  confidenceEl.classList.toggle("not-a-digit", Boolean(answer.not_a_digit));
  answer.probabilities.forEach((p, k) => {
    const li = barsEl.children[k];
    if (!li) return;
    li.classList.toggle("top", k === answer.class);
    li.dataset.probability = String(p);
    li.querySelector(".fill").style.width = `${(p * 100).toFixed(2)}%`;
    li.querySelector(".pct").textContent = `${(p * 100).toFixed(1)}%`;
  });
  const image = seenCtx.createImageData(seen.width, seen.height);
  answer.input.forEach((row, y) => row.forEach((v, x) => {
    const i = 4 * (y * seen.width + x);
    image.data[i] = image.data[i + 1] = image.data[i + 2] = v;
    image.data[i + 3] = 255;
  }));
  seenCtx.putImageData(image, 0, 0);
  document.body.dataset.predictions = String(Number(document.body.dataset.predictions || 0) + 1);
}

function showError(message) {
  errorEl.textContent = message;
  errorEl.hidden = false;
}

function hideError() {
  errorEl.hidden = true;
  errorEl.textContent = "";
}

async function loadModel() {
  try {
    const response = await fetch("/api/model");
    const m = await response.json();
    classes = m.classes;
    maxBodyBytes = m.limits.max_body_bytes;
    // 784-256-10 for a dense network; convolutions show as conv<filters> (784-conv32-conv64-10).
    const width = (l) => (l.type === "dense" ? l.units : l.type === "conv2d" ? `conv${l.filters}` : null);
    const shape = [m.input.shape.reduce((a, b) => a * b, 1),
                   ...m.layers.map(width).filter((w) => w !== null)].join("-");
    const accuracy = m.test_accuracy == null ? "" : `, test accuracy ${(m.test_accuracy * 100).toFixed(1)}%`;
    modelEl.textContent = `${m.name}: ${shape} network on ${m.dataset}${accuracy}`;
  } catch (err) {
    modelEl.textContent = `Could not load the model description: ${err.message}`;
  }
  buildBars();
  document.body.dataset.ready = "true";
}

redraw();
loadModel();
