// bagnet explorer: upload an image or pick a sample, then click through classes.
// All state lives in this page; the server keeps each analysis under its upload id.
"use strict";

const $ = (sel) => document.querySelector(sel);
let config = null;
let current = null; // {id, summary, cls, res, views: Map}
let request = 0; // the latest view request; older answers are ignored
let analysing = 0; // the latest upload or sample; older answers are ignored

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) { $("#status").textContent = text; }

function size(bytes) {
  return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MB" : Math.round(bytes / 1024) + " kB";
}

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error("the server cannot be reached (" + err.message + ")");
  }
  const type = response.headers.get("Content-Type") || "";
  const body = type.startsWith("application/json") ? await response.json() : null;
  if (!response.ok) throw new Error((body && body.error) || "the server answered " + response.status);
  return body;
}

async function init() {
  try {
    config = await api("/api/config");
  } catch (err) {
    showError(err.message);
    return;
  }
  $("#model-info").textContent = config.model + ": " + config.classes.length + " classes, " +
    config.receptive_field + "×" + config.receptive_field + " px patches every " + config.patch_stride +
    " px; images are resized so their short side is " + config.img_size + " px" +
    (config.map_dtype === "float32" ? "" : "; evidence maps computed in " + config.map_dtype + " (approximate)");
  $("#limit").textContent = "up to " + size(config.max_upload_bytes);
  document.querySelectorAll(".stride").forEach((el) => { el.textContent = config.patch_stride; });
  for (const name of config.samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = name;
    button.dataset.sample = name;
    const img = document.createElement("img");
    img.src = "/api/samples/" + name + ".jpg";
    img.alt = name;
    button.append(img);
    button.addEventListener("click", () => analyse("/api/samples/" + name, {method: "POST"}, name));
    $("#samples").append(button);
  }
  const select = $("#class-select");
  config.classes.forEach((name, i) => select.add(new Option(i + ": " + name, String(i))));
  select.addEventListener("change", () => selectClass(Number(select.value)));

  $("#file").addEventListener("change", (e) => { if (e.target.files[0]) upload(e.target.files[0]); });
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) upload(e.dataTransfer.files[0]);
  });
  document.querySelectorAll("input[name=res]").forEach((el) => el.addEventListener("change", () => {
    if (current) { current.res = el.value; showView(); }
  }));
  $("#opacity").addEventListener("input", (e) => { $("#heatmap").style.opacity = e.target.value / 100; });
  $("#show-patches").addEventListener("change", (e) => { $("#patches").style.display = e.target.checked ? "" : "none"; });
  document.body.dataset.ready = "true";
}

function upload(file) {
  // The server enforces the same limit; checking here saves sending a file it would refuse.
  if (file.size > config.max_upload_bytes) {
    showError(file.name + " is " + size(file.size) + ", over the upload limit of " + size(config.max_upload_bytes));
    return;
  }
  const url = "/api/uploads?name=" + encodeURIComponent(file.name);
  analyse(url, {method: "POST", body: file, headers: {"Content-Type": "application/octet-stream"}}, file.name);
}

async function analyse(url, options, name) {
  const mine = ++analysing;
  showError("");
  setStatus("analysing " + name + "…");
  document.body.dataset.busy = "true";
  try {
    const summary = await api(url, options);
    if (mine !== analysing) return; // the user has picked another image meanwhile
    const res = document.querySelector("input[name=res]:checked").value;
    current = {id: summary.id, summary, cls: summary.top_class, res, views: new Map()};
    render(summary);
    await showView();
  } catch (err) {
    if (mine === analysing) { showError(err.message); setStatus(""); }
  } finally {
    if (mine === analysing) delete document.body.dataset.busy;
  }
}

function render(summary) {
  $("#result").hidden = false;
  $("#photo").src = summary.image;
  $("#note").textContent = summary.note || "";
  $("#note").hidden = !summary.note;
  // The previous image's heatmap must not sit on the new photo while its own is computed.
  const heat = $("#heatmap");
  heat.removeAttribute("src");
  delete heat.dataset.class;
  delete heat.dataset.res;
  $("#patches").replaceChildren();
  $("#patches").setAttribute("viewBox", "0 0 " + summary.width + " " + summary.height);
  const list = $("#classes");
  list.replaceChildren();
  for (const p of summary.predictions) {
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.class = p.index;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = p.name;
    const prob = document.createElement("span");
    prob.className = "prob";
    prob.textContent = (100 * p.probability).toFixed(1) + "%";
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.style.width = (100 * p.probability).toFixed(1) + "%";
    bar.append(fill);
    button.append(name, prob, bar);
    button.addEventListener("click", () => selectClass(p.index));
    const item = document.createElement("li");
    item.append(button);
    list.append(item);
  }
  $("#other-class").hidden = config.classes.length <= summary.predictions.length;
}

function selectClass(cls) {
  if (!current) return;
  current.cls = cls;
  showView();
}

async function showView() {
  const state = current;
  const key = state.cls + "/" + state.res;
  const mine = ++request;
  document.querySelectorAll("#classes button").forEach((b) => {
    b.setAttribute("aria-pressed", String(Number(b.dataset.class) === state.cls));
  });
  $("#class-select").value = String(state.cls);
  let view = state.views.get(key);
  if (!view) {
    setStatus("computing the " + state.res + " resolution evidence of " + config.classes[state.cls] + "…");
    document.body.dataset.busy = "true";
    try {
      view = await api("/api/uploads/" + state.id + "/view?class=" + state.cls + "&res=" + state.res);
    } catch (err) {
      if (mine === request) { showError(err.message); setStatus(""); delete document.body.dataset.busy; }
      return;
    }
    state.views.set(key, view);
  }
  if (mine !== request || state !== current) return; // a newer click won
  setStatus(view.ms !== undefined && !view.shown ? "computed in " + (view.ms / 1000).toFixed(2) + " s" : "");
  view.shown = true;
  delete document.body.dataset.busy;
  applyView(state, view);
}

function applyView(state, view) {
  const heat = $("#heatmap");
  heat.src = view.heatmap;
  heat.className = state.res;
  heat.dataset.class = view.class;
  heat.dataset.res = state.res;
  const svg = $("#patches");
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  view.patches.forEach((p, i) => {
    const [x0, y0, x1, y1] = p.box;
    const rect = document.createElementNS(ns, "rect");
    rect.setAttribute("x", x0);
    rect.setAttribute("y", y0);
    rect.setAttribute("width", x1 - x0);
    rect.setAttribute("height", y1 - y0);
    const title = document.createElementNS(ns, "title");
    title.textContent = "#" + (i + 1) + ": evidence " + p.score.toFixed(2);
    rect.append(title);
    // Labels are sized in image pixels, which the page scales up or down with the image.
    const font = Math.max(5, state.summary.width / 40);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", x0 + font / 5);
    label.setAttribute("y", y0 + font);
    label.setAttribute("font-size", font);
    label.setAttribute("stroke-width", font / 6);
    label.textContent = String(i + 1);
    svg.append(rect, label);
  });
  $("#legend-class").textContent = view.name;
  $("#legend-range").textContent = "±" + view.vmax.toFixed(2);
  const q = "?class=" + view.class + "&res=" + state.res;
  $("#download-png").href = "/api/uploads/" + state.id + "/figure.png" + q;
  $("#download-json").href = "/api/uploads/" + state.id + "/result.json?res=" + state.res;
}

init();
