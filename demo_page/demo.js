// The demo page: upload or record, send the audio to /api/predict, draw the answer.
// Plain DOM and SVG, no library: the page works on a machine without internet.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const $ = (id) => document.getElementById(id);
let run = null; // GET /api/run
let recorder = null; // the recording in progress

function element(name, attributes = {}, parent = null, namespace = null) {
  const node = namespace ? document.createElementNS(namespace, name) : document.createElement(name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  if (parent) parent.appendChild(node);
  return node;
}

function svgText(parent, x, y, text, anchor = "start") {
  const node = element("text", { x, y, "text-anchor": anchor }, parent, SVG);
  node.textContent = text;
  return node;
}

function percent(p) {
  return `${(100 * p).toFixed(1)} %`;
}

function describeRun(info) {
  const recipe = info.recipe || {};
  const parts = [];
  if (recipe.backbone) parts.push(`${recipe.backbone}${recipe.weights && recipe.weights !== "none" ? ` (${recipe.weights})` : ""}${recipe.image_size ? ` at ${recipe.image_size}×${recipe.image_size}` : ""}`);
  if (recipe.backbone_mode) parts.push(recipe.backbone_mode);
  if (recipe.head) parts.push(`${recipe.head} head`);
  if (recipe.speaker_norm) parts.push("speaker-normalised training");
  const score = info.test_uar == null
    ? "no test score recorded"
    : `test UAR ${info.test_uar.toFixed(3)}${info.test_speakers ? ` on speakers ${info.test_speakers.join(", ")}` : ""}`;
  return `Run ${info.name}: ${parts.join(", ") || "recipe not recorded"}; ${score}.`;
}

async function loadRun() {
  const response = await fetch("/api/run");
  run = await response.json();
  $("run").textContent = describeRun(run);
  $("run").dataset.state = "ready";
}

function setBusy(message) {
  $("status").textContent = message || "";
  $("file").disabled = Boolean(message);
  $("record").disabled = Boolean(message) && !recorder;
  document.querySelector("label.button").setAttribute("aria-disabled", message ? "true" : "false");
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("result").hidden = true;
}

async function analyse(blob, name) {
  $("error").hidden = true;
  setBusy(`Analysing ${name}…`);
  try {
    const response = await fetch(`/api/predict?filename=${encodeURIComponent(name)}`, { method: "POST", body: blob });
    let answer;
    try {
      answer = await response.json();
    } catch {
      answer = { error: `${name}: the server answered ${response.status} ${response.statusText}` };
    }
    if (response.ok) render(answer);
    else showError(answer.error || `${name}: the server answered ${response.status}`);
  } catch (error) {
    showError(`${name}: the demo server did not answer (${error.message}); is python demo.py still running?`);
  } finally {
    setBusy("");
  }
}

function render(answer) {
  const labels = run.labels;
  $("emotion").textContent = answer.emotion;
  $("confidence").textContent = percent(answer.confidence);
  $("source").textContent = `${answer.name}, ${answer.duration.toFixed(1)} s`;
  $("warnings").hidden = answer.warnings.length === 0;
  $("warnings").textContent = answer.warnings.length ? `Less reliable: ${answer.warnings.join(", ")}.` : "";
  const bars = $("bars");
  bars.replaceChildren();
  for (const label of labels) {
    const p = answer.probabilities[label];
    const row = element("div", { class: label === answer.emotion ? "bar top" : "bar", role: "listitem", "data-label": label }, bars);
    element("span", { class: "label" }, row).textContent = label;
    element("div", { class: "fill", style: `width: ${100 * p}%` }, element("div", { class: "track" }, row));
    element("span", { class: "value" }, row).textContent = percent(p);
  }
  $("timeline-block").hidden = answer.windows.length < 2;
  if (answer.windows.length >= 2) drawTimeline(answer, labels);
  drawWaveform(answer);
  $("result").hidden = false;
}

function timeAxis(svg, left, width, top, duration) {
  const step = [1, 2, 5, 10, 20, 30, 60, 120].find((s) => duration / s <= 8) || 300;
  for (let t = 0; t <= duration + 1e-9; t += step) {
    const x = left + (width * t) / duration;
    element("line", { x1: x, x2: x, y1: top, y2: top + 4, stroke: "#8a93a5" }, svg, SVG);
    svgText(svg, x, top + 16, `${t} s`, "middle");
  }
}

function drawTimeline(answer, labels) {
  const svg = $("timeline");
  svg.replaceChildren();
  const left = 90, width = 640, row = 18, top = 4;
  const height = top + row * labels.length;
  svg.setAttribute("viewBox", `0 0 ${left + width + 10} ${height + 24}`);
  labels.forEach((label, r) => svgText(svg, left - 6, top + r * row + row * 0.7, label, "end"));
  for (const window of answer.windows) {
    const x = left + (width * window.start) / answer.duration;
    const w = (width * (window.end - window.start)) / answer.duration;
    const best = window.probabilities.indexOf(Math.max(...window.probabilities));
    window.probabilities.forEach((p, r) => {
      const cell = element("rect", { x, y: top + r * row, width: Math.max(w - 1, 1), height: row - 2, fill: "#2f6fdb", "fill-opacity": p.toFixed(3) }, svg, SVG);
      element("title", {}, cell, SVG).textContent = `${window.start.toFixed(1)}–${window.end.toFixed(1)} s: ${labels[r]} ${percent(p)}`;
      if (r === best) element("rect", { x, y: top + r * row, width: Math.max(w - 1, 1), height: row - 2, fill: "none", stroke: "#1d2330", "stroke-width": 1.5 }, svg, SVG);
    });
  }
  timeAxis(svg, left, width, height, answer.duration);
}

function drawWaveform(answer) {
  const svg = $("waveform");
  svg.replaceChildren();
  const left = 90, width = 640, height = 120, middle = height / 2;
  svg.setAttribute("viewBox", `0 0 ${left + width + 10} ${height + 24}`);
  const attention = answer.attention;
  $("waveform-title").textContent = attention ? "Attention over the waveform" : "Waveform";
  $("waveform-note").textContent = attention
    ? `Orange bars: the attention weight of each segment (${run.segment_seconds.toFixed(2)} s), relative to the largest in its window: what the BLSTM head listened to most.`
    : "This run's head pools the segments' statistics and weighs every segment equally, so there is no attention to show.";
  if (attention) {
    const largest = {}; // per window: its weights sum to 1, so windows of more segments have smaller ones
    for (const segment of attention) largest[segment.window] = Math.max(largest[segment.window] || 0, segment.weight);
    for (const segment of attention) {
      const centre = (segment.start + segment.end) / 2;
      const half = Math.max((segment.end - segment.start) / 4, 0.01);
      const x = left + (width * (centre - half)) / answer.duration;
      const h = (height * segment.weight) / largest[segment.window];
      const bar = element("rect", { class: "attention", x, y: height - h, width: Math.max((width * 2 * half) / answer.duration - 1, 1), height: h, fill: "#e8882a", "fill-opacity": 0.55 }, svg, SVG);
      element("title", {}, bar, SVG).textContent = `${segment.start.toFixed(2)}–${segment.end.toFixed(2)} s: weight ${segment.weight.toFixed(3)}`;
    }
  }
  const peaks = answer.envelope;
  const scale = Math.max(...peaks, 1e-6);
  const points = peaks.map((p, i) => `${left + (width * i) / Math.max(peaks.length - 1, 1)},${middle - (middle * 0.95 * p) / scale}`);
  const back = peaks.map((p, i) => `${left + (width * i) / Math.max(peaks.length - 1, 1)},${middle + (middle * 0.95 * p) / scale}`).reverse();
  element("polygon", { points: points.concat(back).join(" "), fill: "#1d2330", "fill-opacity": 0.75 }, svg, SVG);
  svgText(svg, left - 6, middle + 4, "audio", "end");
  timeAxis(svg, left, width, height, answer.duration);
}

function wavBlob(samples, rate) {
  const data = new DataView(new ArrayBuffer(44 + 2 * samples.length));
  const text = (offset, value) => [...value].forEach((c, i) => data.setUint8(offset + i, c.charCodeAt(0)));
  text(0, "RIFF");
  data.setUint32(4, 36 + 2 * samples.length, true);
  text(8, "WAVEfmt ");
  data.setUint32(16, 16, true);
  data.setUint16(20, 1, true); // PCM
  data.setUint16(22, 1, true); // mono
  data.setUint32(24, rate, true);
  data.setUint32(28, 2 * rate, true);
  data.setUint16(32, 2, true);
  data.setUint16(34, 16, true);
  text(36, "data");
  data.setUint32(40, 2 * samples.length, true);
  samples.forEach((s, i) => data.setInt16(44 + 2 * i, Math.max(-1, Math.min(1, s)) * 0x7fff, true));
  return new Blob([data], { type: "audio/wav" });
}

async function startRecording() {
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    showError("This browser cannot record here: recording needs https or a page on localhost (python demo.py --host 127.0.0.1).");
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  } catch (error) {
    showError(`No microphone to record from (${error.message}); allow the page to use it, or upload a file.`);
    return;
  }
  const context = new AudioContext();
  await context.audioWorklet.addModule("/static/recorder.js");
  const node = new AudioWorkletNode(context, "recorder");
  const chunks = [];
  node.port.onmessage = (event) => chunks.push(event.data);
  context.createMediaStreamSource(stream).connect(node).connect(context.destination); // the node outputs silence
  const started = performance.now();
  recorder = { stream, context, chunks, timer: null };
  recorder.timer = setInterval(() => {
    const seconds = (performance.now() - started) / 1000;
    $("status").textContent = `Recording… ${seconds.toFixed(0)} s`;
    if (seconds >= run.max_seconds) stopRecording();
  }, 250);
  $("error").hidden = true;
  $("record").textContent = "Stop";
  $("record").dataset.recording = "true";
  setBusy("Recording… 0 s");
}

async function stopRecording() {
  const { stream, context, chunks, timer } = recorder;
  recorder = null;
  clearInterval(timer);
  stream.getTracks().forEach((track) => track.stop());
  const rate = context.sampleRate;
  await context.close();
  $("record").textContent = "Record";
  $("record").dataset.recording = "false";
  const samples = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    samples.set(chunk, offset);
    offset += chunk.length;
  }
  await analyse(wavBlob(samples, rate), "recording.wav");
}

$("file").addEventListener("change", async (event) => {
  const file = event.target.files[0];
  event.target.value = ""; // choosing the same file again analyses it again
  if (!file) return;
  if (file.size > run.max_bytes) {
    showError(`${file.name}: over the demo's upload limit of ${(run.max_bytes / 2 ** 20).toFixed(0)} MiB`);
    return;
  }
  await analyse(file, file.name);
});

$("record").addEventListener("click", () => (recorder ? stopRecording() : startRecording()));

loadRun().catch((error) => showError(`The demo server did not describe its run (${error.message}).`));
