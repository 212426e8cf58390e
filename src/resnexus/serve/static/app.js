// resnexus serve: the page talks to the same API as every other client (/v1/predict, /v1/explain, /v1/model).
"use strict";

const $ = (id) => document.getElementById(id);

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function errorText(response) {
  try {
    return (await response.json()).error || response.statusText;
  } catch (_) {
    return response.statusText;
  }
}

function percent(p) {
  return (100 * p).toFixed(1) + " %";
}

function wholePercent(p) {
  return Math.round(100 * p) + " %";
}

// "A", "A or B", "A, B or C"
function either(names) {
  return names.length < 2 ? names.join("") : names.slice(0, -1).join(", ") + " or " + names[names.length - 1];
}

// the prediction set in words: one class is a confident answer, more are the classes it cannot tell apart
function setInWords(set, coverage) {
  if (set.length === 1) return set[0] + " (the only class at " + wholePercent(coverage) + " coverage)";
  const which = set.length === 2 ? "could be either: " : "could be any of: ";
  return which + either(set) + " (the model cannot tell these apart at " + wholePercent(coverage) + " coverage)";
}

function cvAccuracy(cv) {
  let text = wholePercent(cv.mean);
  if (cv.ci) text += " (95 % CI " + Math.round(100 * cv.ci[0]) + "–" + wholePercent(cv.ci[1]) + ")";
  else if (cv.se != null) text += " ± " + percent(cv.se) + " (standard error)";
  return text + (cv.folds ? ", " + cv.folds + " folds" : "");
}

function addCalibration(card, c) {
  const ece = c.before.ece != null && c.after.ece != null;
  const fit = ece ? ", calibration error (ECE) " + c.before.ece.toFixed(3) + " → " + c.after.ece.toFixed(3) : "";
  addRow(card, "calibration", "temperature " + c.temperature.toFixed(2) + " from " + c.images + " out-of-fold predictions" + fit);
  addRow(card, "prediction sets", "hold the true class for " + wholePercent(c.coverage) + " of images like the training ones");
  const point = c.operating_point;
  if (point) {
    const target = Object.entries(point.target).map(([k, v]) => k + " " + wholePercent(v)).join(", ");
    addRow(card, "operating point", point.positive_class + " from a calibrated probability of " + point.threshold.toFixed(3) + (target ? " (chosen for " + target + ")" : ""));
  }
}

function addRow(list, term, value) {
  const dt = document.createElement("dt");
  dt.textContent = term;
  const dd = document.createElement("dd");
  dd.textContent = value;
  list.append(dt, dd);
}

async function loadCard() {
  const response = await fetch("/v1/model");
  if (!response.ok) return showError(await errorText(response));
  const m = await response.json();
  const card = $("card");
  card.replaceChildren();
  addRow(card, "model", m.model + " (" + m.runtime + ")");
  addRow(card, "classes", m.classes.join(", "));
  const t = m.trained_on || {};
  if (t.data || t.images) {
    // the folder's name only: the server's paths are not the visitor's business
    const folder = t.data ? "from " + t.data.replace(/[\\/]+$/, "").split(/[\\/]/).pop() : "";
    const sizes = t.images || {};
    const total = Object.values(sizes).reduce((a, b) => a + b, 0);
    let text = (sizes.train != null ? sizes.train + " images " : "") + folder;
    if (sizes.train != null && total > sizes.train) text += " (" + (total - sizes.train) + " more held back for validation and test)";
    addRow(card, "trained on", text.trim());
  }
  if (m.cv_accuracy) {
    addRow(card, "cross-validated accuracy", cvAccuracy(m.cv_accuracy));
  } else if (m.metrics && m.metrics.accuracy != null) {
    addRow(card, "accuracy on its run's evaluation images", percent(m.metrics.accuracy));
  }
  if (m.calibration) addCalibration(card, m.calibration);
  else addRow(card, "probabilities", "the model's own (no calibration: no prediction sets)");
  addRow(card, "input", m.preprocessing.image_size + " px centre crop");
  addRow(card, "checkpoint SHA-256", m.sha256.slice(0, 16) + "…");
  addRow(card, "use", m.notice);
  $("notice").textContent = m.notice.charAt(0).toUpperCase() + m.notice.slice(1) + ".";
}

function showBars(probabilities, label) {
  const bars = $("bars");
  bars.replaceChildren();
  for (const [name, p] of Object.entries(probabilities)) {
    const row = document.createElement("div");
    row.className = "bar" + (name === label ? " top" : "");
    const title = document.createElement("span");
    title.className = "name";
    title.textContent = name;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = (100 * p).toFixed(1) + "%";
    track.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = percent(p);
    row.append(title, track, value);
    bars.append(row);
  }
}

async function classify(file) {
  showError("");
  $("result").hidden = true;
  $("overlay").removeAttribute("src");
  $("photo").src = URL.createObjectURL(file);
  const form = () => {
    const data = new FormData();
    data.append("files", file, file.name || "photo");
    return data;
  };
  const response = await fetch("/v1/predict", { method: "POST", body: form() });
  if (!response.ok) return showError(await errorText(response));
  const result = await response.json();
  const prediction = result.predictions[0];
  $("label").textContent = prediction.label;
  $("timing").textContent = result.model + ", " + result.time_ms.toFixed(0) + " ms";
  $("set").textContent = prediction.set ? setInWords(prediction.set, result.coverage) : "";
  $("set").hidden = !prediction.set;
  $("set").className = prediction.set && prediction.set.length > 1 ? "set unsure" : "set";
  $("bars-caption").textContent = result.calibrated
    ? "calibrated probabilities" + (result.threshold == null ? "" : " (the operating threshold decides the prediction)")
    : "probabilities (not calibrated)";
  showBars(prediction.probabilities, prediction.label);
  $("result").hidden = false;
  const cam = await fetch("/v1/explain", { method: "POST", body: form() });
  if (!cam.ok) {
    $("overlay-caption").textContent = "Grad-CAM: " + (await errorText(cam));
    return;
  }
  $("overlay").src = URL.createObjectURL(await cam.blob());
  document.body.dataset.state = "done";
}

$("file").addEventListener("change", (event) => {
  if (event.target.files.length) classify(event.target.files[0]);
});
const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
});
loadCard();
