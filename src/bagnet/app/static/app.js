// bagnet explorer: upload an image or pick a sample, then click through classes.
// All state lives in this page; the server keeps each analysis under its upload id.
"use strict";

const $ = (sel) => document.querySelector(sel);
let config = null;
let current = null; // {id, summary, label, cls, res, views: Map, certs: Map}
let request = 0; // the latest view request; older answers are ignored
let analysing = 0; // the latest upload or sample; older answers are ignored
let locked = null; // {vmax, from}: the colour scale kept across images, or null
let progressTimer = null;
let certRequest = 0; // the latest certificate request; older answers are ignored
let cleanserRequest = 0; // the latest PatchCleanser verdict shown; older answers are ignored

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

function setStatus(text) { $("#status").textContent = text; }

// A visible progress line with the seconds waited so far (a big model takes a while).
function startProgress(text) {
  stopProgress();
  const started = performance.now();
  const tick = () => {
    $("#progress-text").textContent = text + " (" + ((performance.now() - started) / 1000).toFixed(0) + " s)";
  };
  tick();
  progressTimer = setInterval(tick, 500);
  $("#progress").hidden = false;
  $("#stage").classList.add("busy");
  document.body.dataset.busy = "true";
}

function stopProgress() {
  if (progressTimer !== null) clearInterval(progressTimer);
  progressTimer = null;
  $("#progress").hidden = true;
  $("#stage").classList.remove("busy");
  delete document.body.dataset.busy;
}

function size(bytes) {
  return bytes >= 1048576 ? (bytes / 1048576).toFixed(1) + " MB" : Math.round(bytes / 1024) + " kB";
}

function num(x) { return Math.abs(x) >= 100 ? x.toFixed(0) : x.toPrecision(3); }

async function api(url, options) {
  let response;
  try {
    response = await fetch(url, options);
  } catch (err) {
    throw new Error("the server cannot be reached (" + err.message + ")");
  }
  const type = response.headers.get("Content-Type") || "";
  const body = type.startsWith("application/json") ? await response.json() : null;
  if (!response.ok) {
    const err = new Error((body && body.error) || "the server answered " + response.status);
    err.status = response.status;
    throw err;
  }
  return body;
}

function showModel() {
  const n = config.classes.length;
  $("#model-info").textContent = config.model + ": " + config.receptive_field + "×" + config.receptive_field +
    " px patches every " + config.patch_stride + " px; images are resized so their short side is " +
    config.img_size + " px (the photo is shown at its own resolution)" +
    (config.map_dtype === "float32" ? "" : "; evidence maps computed in " + config.map_dtype + " (approximate)");
  // The classes the model knows, always in view: it answers with one of them for any photo.
  const known = $("#known");
  const names = config.classes.join(", ");
  if (n <= 20) {
    const p = document.createElement("p");
    p.textContent = "This model knows " + n + " classes: " + names + ".";
    known.replaceChildren(p);
  } else {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "This model knows " + n + " classes (show them)";
    const list = document.createElement("p");
    list.className = "names";
    list.textContent = names;
    details.append(summary, list);
    known.replaceChildren(details);
  }
  $("#unknown-setting").textContent = config.unknown
    ? "Photos that are probably none of these classes are flagged (" + config.unknown.method +
      " below " + num(config.unknown.threshold) + ", calibrated on images of its classes and of others)."
    : "No threshold is calibrated for this model, so it cannot flag photos of other things: " +
      "it always answers with one of its " + n + " classes.";
}

async function init() {
  try {
    config = await api("/api/config");
  } catch (err) {
    showError(err.message);
    return;
  }
  showModel();
  $("#limit").textContent = "up to " + size(config.max_upload_bytes);
  document.querySelectorAll(".stride").forEach((el) => { el.textContent = config.patch_stride; });
  $("#colorbar .ramp").style.background = "linear-gradient(to right, " + config.colormap.join(", ") + ")";
  for (const name of config.samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = name;
    button.dataset.sample = name;
    const img = document.createElement("img");
    img.src = "/api/samples/" + name + ".jpg";
    img.alt = name;
    button.append(img);
    button.addEventListener("click", () => analyse("/api/samples/" + name, {method: "POST"},
      {name, sample: true}));
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
  $("#same-scale").addEventListener("change", (e) => {
    const view = current && current.shownView;
    locked = e.target.checked && view ? {vmax: view.vmax, from: current.label.name} : null;
    if (e.target.checked && !view) e.target.checked = false;
    if (current) showView();
  });
  $("#opacity").addEventListener("input", (e) => { $("#heatmap").style.opacity = e.target.value / 100; });
  $("#show-patches").addEventListener("change", (e) => {
    const display = e.target.checked ? "" : "none";
    $("#patches").style.display = display;
    $("#labels").style.display = display;
  });
  $("#certify-patch").addEventListener("change", () => { showCertificate(true); showCleanser(); });
  if (config.cleanser) $("#cleanser-model").textContent = config.cleanser.model + " (reference model)";
  $("#certify-defense").addEventListener("change", () => showCertificate(true));
  document.body.dataset.ready = "true";
}

function upload(file) {
  // The server enforces the same limit; checking here saves sending a file it would refuse.
  if (file.size > config.max_upload_bytes) {
    hideResult();
    showError(file.name + " is " + size(file.size) + ", over the upload limit of " + size(config.max_upload_bytes));
    return;
  }
  const url = "/api/uploads?name=" + encodeURIComponent(file.name);
  analyse(url, {method: "POST", body: file, headers: {"Content-Type": "application/octet-stream"}},
    {name: file.name, sample: false});
}

// On an error no earlier result stays on screen, where it could pass for this image's.
function hideResult() {
  current = null;
  cleanserRequest++; // stops the progress of a verdict being waited for
  $("#cleanser").hidden = true;
  $("#cleanser-mask").replaceChildren();
  $("#result").hidden = true;
  document.querySelectorAll("#samples button").forEach((b) => b.removeAttribute("aria-pressed"));
}

async function analyse(url, options, label) {
  const mine = ++analysing;
  showError("");
  hideResult();
  setStatus("");
  startProgress("analysing " + (label.sample ? "the sample " + config.sample_info[label.name].kind + " " : "your file ") +
    label.name + "…");
  try {
    const summary = await api(url, options);
    if (mine !== analysing) return; // the user has picked another image meanwhile
    const res = document.querySelector("input[name=res]:checked").value;
    current = {id: summary.id, summary, label, cls: summary.top_class, res, views: new Map(), certs: new Map(),
      verdicts: new Map(), announced: false};
    render(summary, label);
    // On a phone the result starts below the upload control: once the photo has its size
    // (the layout is then final), bring the prediction into view.
    const state = current;
    $("#photo").decode().catch(() => {}).then(() => { if (state === current) revealPrediction(); });
    showCertificate();
    showCleanser();
    await showView();
  } catch (err) {
    if (mine === analysing) { hideResult(); showError(err.message); }
  } finally {
    if (mine === analysing && !current) stopProgress();
  }
}

function showUnknown(summary) {
  const box = $("#unknown");
  const u = summary.unknown;
  const n = config.classes.length;
  // A sample's subject is known: when no class of the model fits it, say so whatever the check found.
  const outside = Boolean(summary.sample_note && summary.sample_note.includes("none of the"));
  if (u === null) {
    box.className = "unchecked";
    box.textContent = "Not checked whether this photo shows one of the " + n + " classes: no threshold is " +
      "calibrated for this model, and it always names one of them.";
  } else if (u.flag) {
    box.className = "flag";
    box.textContent = "⚠ " + u.message.charAt(0).toUpperCase() + u.message.slice(1) + " (" + u.method + " " +
      num(u.score) + ", below the threshold " + num(u.threshold) + "): the classes listed are only its closest " +
      "guesses, not what the photo shows.";
  } else {
    box.className = "known";
    box.textContent = (outside ? "The model's own check did not flag it" : "Looks like one of the " + n +
      " classes this model knows") + " (" + u.method + " " + num(u.score) + ", threshold " + num(u.threshold) + ").";
  }
  if (outside) {
    const fact = document.createElement("p");
    fact.id = "sample-note";
    fact.textContent = "⚠ This " + summary.sample_note + ".";
    box.prepend(fact);
    box.className = "flag";
  }
  box.hidden = false;
  box.dataset.flag = u === null ? "unchecked" : String(u.flag);
}

function render(summary, label) {
  $("#result").hidden = false;
  const shown = $("#shown");
  shown.replaceChildren("Showing " + (label.sample ? "the sample " + config.sample_info[label.name].kind + " " : "your file "));
  const name = document.createElement("strong");
  name.id = "shown-name";
  name.textContent = label.name;
  shown.append(name, label.sample ? " (" + config.sample_info[label.name].credit + ")" : "");
  document.querySelectorAll("#samples button").forEach((b) => {
    b.setAttribute("aria-pressed", String(label.sample && b.dataset.sample === label.name));
  });
  $("#photo").src = summary.image;
  $("#note").textContent = summary.note || "";
  $("#note").hidden = !summary.note;
  showUnknown(summary);
  // The previous image's heatmap must not sit on the new photo while its own is computed.
  const heat = $("#heatmap");
  heat.removeAttribute("src");
  delete heat.dataset.class;
  delete heat.dataset.res;
  $("#patches").replaceChildren();
  $("#labels").replaceChildren();
  $("#map-class").textContent = "";
  $("#patches").setAttribute("viewBox", "0 0 " + summary.width + " " + summary.height);
  $("#removed").setAttribute("viewBox", "0 0 " + summary.width + " " + summary.height);
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

function markClass(cls) {
  document.querySelectorAll("#classes button").forEach((b) => {
    b.setAttribute("aria-pressed", String(Number(b.dataset.class) === cls));
  });
  $("#class-select").value = String(cls);
}

function viewQuery(state) {
  return "?class=" + state.cls + "&res=" + state.res + (locked ? "&vmax=" + locked.vmax : "");
}

async function showView() {
  const state = current;
  const query = viewQuery(state);
  const mine = ++request;
  markClass(state.cls);
  let view = state.views.get(query);
  if (!view) {
    startProgress("computing the " + state.res + " resolution evidence of " + config.classes[state.cls] + "…");
    try {
      view = await api("/api/uploads/" + state.id + "/view" + query);
    } catch (err) {
      if (mine === request) {
        stopProgress();
        showError(err.message);
        setStatus("");
        // The list marks the class whose map is still on screen, not the one that failed.
        if (state.shownView) { state.cls = state.shownView.class; markClass(state.cls); }
      }
      return;
    }
    state.views.set(query, view);
  }
  if (mine !== request || state !== current) return; // a newer click won
  setStatus(timing(state, view));
  view.shown = true;
  stopProgress();
  applyView(state, view, query);
}

function seconds(ms) { return (ms / 1000).toFixed(2) + " s"; }

// Real times only: a map the server had computed before (the native maps come with the
// upload) or the page had shown before is said to be from cache, not "computed in 0.00 s".
function timing(state, view) {
  const parts = [];
  const first = !state.announced;
  if (first && state.summary.ms !== undefined) parts.push("image analysed in " + seconds(state.summary.ms));
  state.announced = true;
  if (!view.shown && view.cached === false) parts.push("map computed in " + seconds(view.ms));
  else if (!first || state.res !== "native") parts.push("map from cache");
  return parts.join("; ");
}

// Whether an element lies wholly in the window.
function inView(el) {
  const r = el.getBoundingClientRect();
  return r.height > 0 && r.top >= 0 && r.bottom <= window.innerHeight;
}

function scrollToY(y) {
  const smooth = !window.matchMedia("(prefers-reduced-motion: reduce)").matches;
  window.scrollTo({top: Math.max(0, y), behavior: smooth ? "smooth" : "auto"});
}

// After an upload: the top prediction in view, with as much of the result above it as fits.
function revealPrediction() {
  const first = document.querySelector("#classes button");
  if (!first || inView(first)) return;
  const top = window.scrollY + $("#shown").getBoundingClientRect().top - 8;
  const needed = window.scrollY + first.getBoundingClientRect().bottom + 8 - window.innerHeight;
  scrollToY(needed <= top ? top : needed);
}

// A result shown away from what the user changed (a phone's narrow column): scroll to it.
function reveal(el) {
  if (inView(el)) return;
  const r = el.getBoundingClientRect();
  scrollToY(window.scrollY + (r.top < 0 ? r.top - 8 : r.bottom + 8 - window.innerHeight));
}

function applyView(state, view, query) {
  state.shownView = view;
  state.figureQuery = query;
  const heat = $("#heatmap");
  heat.src = view.heatmap;
  heat.className = state.res;
  heat.dataset.class = view.class;
  heat.dataset.res = state.res;
  const svg = $("#patches");
  const labels = $("#labels");
  svg.replaceChildren();
  labels.replaceChildren();
  const {width, height} = state.summary;
  view.patches.forEach((p, i) => {
    const [x0, y0] = p.box;
    svg.append(boxRect(p.box, "#" + (i + 1) + ": evidence " + p.score.toFixed(2)));
    // Numbers in page pixels, so they stay readable however small the map is drawn.
    const label = document.createElement("span");
    label.textContent = String(i + 1);
    label.style.left = (100 * x0 / width) + "%";
    label.style.top = (100 * y0 / height) + "%";
    labels.append(label);
  });
  const pct = (100 * view.probability).toFixed(1) + "%";
  $("#map-class").textContent = "evidence for " + view.name + " (" + pct + ")";
  $("#bar-min").textContent = "−" + num(view.vmax);
  $("#bar-max").textContent = "+" + num(view.vmax);
  const k = config.top_k;
  $("#scale-note").textContent = "Colours: evidence for " + view.name + " (patch logits), from −" + num(view.vmax) +
    " (blue, against) to +" + num(view.vmax) + " (red, for); " +
    (locked ? "this scale is kept for every image (taken from " + locked.from + ")"
      : "the same scale for every class of this image (the " + config.scale_percentile + "th percentile of " +
        "|evidence| of its top " + k + " classes)") +
    (view.beyond_scale > 0 ? "; " + (100 * view.beyond_scale).toFixed(1) + "% of the values lie beyond it and " +
      "take the end colours." : ".");
  const q = config.receptive_field;
  const s = config.patch_stride;
  $("#full-note").hidden = state.res !== "full";
  $("#full-note").textContent = "Full resolution is exact: each pixel shows the evidence of the patch centred on it. " +
    "A fine lattice with a period of " + s + " px is the model's own: its patch values change when a patch moves " +
    "by less than its " + s + " px stride, so the model is not shift-stable (see docs/shift_sensitivity.md).";
  $("#mean-note").textContent = "The image logit for " + view.name + ", " + view.logit.toFixed(2) +
    ", is the mean of the model's own patch values (" + q + "×" + q + " px patches every " + config.patch_stride +
    " px inside the image). This map centres a patch on " +
    (state.res === "full" ? "every pixel" : "every " + config.patch_stride + "th pixel") +
    ", zero-padded at the borders; its mean is " + view.map_mean.toFixed(2) + ".";
  jsonLinks(state);
}

// The downloads carry the certificate the page shows, if any.
function certQuery() {
  const patch = $("#certify-patch").value;
  return patch ? "certify=" + encodeURIComponent(patch) + "&defense=" + $("#certify-defense").value : "";
}

function jsonLinks(state) {
  const cert = certQuery() ? "&" + certQuery() : "";
  const figure = "/api/uploads/" + state.id + "/figure";
  $("#download-png").href = figure + ".png" + state.figureQuery + cert;
  $("#download-svg").href = figure + ".svg" + state.figureQuery + cert;
  const base = "/api/uploads/" + state.id + "/result.json?res=" + state.res;
  $("#download-json").href = base + cert;
  $("#download-maps").href = base + "&maps=1" + cert;
}

// Whether the defended prediction is certified against the chosen sticker size: arithmetic on
// the patch logits the server kept from the upload's pass, so no progress bar is needed.
// asked: the user changed the control (then its answer is brought into view).
async function showCertificate(asked = false) {
  const state = current;
  const line = $("#certificate");
  const removed = $("#removed");
  const mine = ++certRequest;
  removed.replaceChildren();
  if (!state) return;
  if (state.shownView) jsonLinks(state);
  const patch = $("#certify-patch").value;
  const defense = $("#certify-defense").value;
  if (!patch) {
    line.hidden = true;
    line.textContent = "";
    delete line.dataset.certified;
    return;
  }
  const query = "?patch=" + encodeURIComponent(patch) + "&defense=" + defense;
  let cert = state.certs.get(query);
  if (!cert) {
    line.className = "busy";
    line.textContent = "certifying against a " + patch + " sticker…";
    line.hidden = false;
    delete line.dataset.certified;
    try {
      cert = await api("/api/uploads/" + state.id + "/certificate" + query);
    } catch (err) {
      if (mine === certRequest && state === current) { line.hidden = true; showError(err.message); }
      return;
    }
    state.certs.set(query, cert);
  }
  if (mine !== certRequest || state !== current) return; // a newer choice or image won
  const top = state.summary.top_class;
  const plain = cert.prediction.index === top ? "" : " (the undefended model says " + config.classes[top] + ")";
  line.className = cert.certified ? "yes" : "no";
  line.dataset.certified = String(cert.certified);
  line.textContent = (cert.certified ? "✔ " : "✘ ") + cert.defense + "-defended prediction " + cert.prediction.name +
    plain + ": " + cert.message + " (px of the " + state.summary.width + "×" + state.summary.height +
    " image the model sees; margin " + num(cert.margin) + ")." +
    (cert.removed_box_resized ? " The dashed box is the window the masking removed." : "");
  line.hidden = false;
  if (asked) reveal(line); // on a phone it may lie off screen, away from its control
  if (cert.removed_box_resized) {
    removed.append(boxRect(cert.removed_box_resized, "the window the masking removed for " + cert.prediction.name));
  }
}

// PatchCleanser's verdict for the reference model (bagnet serve --cleanser-model), next to the
// BagNet's certificate: hundreds of passes through the reference, so the server may take a
// while (the line counts the masked images it has classified); each (image, size) once.
async function showCleanser() {
  const state = current;
  const panel = $("#cleanser");
  const line = $("#cleanser-verdict");
  const mine = ++cleanserRequest;
  $("#cleanser-mask").replaceChildren();
  const patch = $("#certify-patch").value;
  if (!state || !config.cleanser || !patch) {
    panel.hidden = true;
    return;
  }
  panel.hidden = false;
  let verdict = state.verdicts.get(patch);
  if (!verdict) {
    const url = "/api/uploads/" + state.id + "/cleanser?patch=" + encodeURIComponent(patch);
    const started = performance.now();
    let progress = null;
    const tick = () => {
      if (mine !== cleanserRequest) return;
      const secs = " (" + ((performance.now() - started) / 1000).toFixed(0) + " s)";
      const model = config.cleanser.model;
      line.textContent = progress && progress.state === "waiting"
        ? "waiting for another PatchCleanser verdict to finish before " + model + "'s…" + secs
        : "PatchCleanser: classifying " + (progress ? progress.done + " of " + progress.total : "up to " +
          config.cleanser.passes) + " masked copies of the image with " + model + "…" + secs;
    };
    panel.dataset.state = "computing";
    delete panel.dataset.certified;
    line.className = "busy";
    $("#cleanser-body").hidden = true;
    tick();
    const ticker = setInterval(tick, 500);
    // How far the server is, once a second (wait=0 computes nothing).
    const poller = setInterval(async () => {
      if (mine !== cleanserRequest) return;
      try {
        const answer = await api(url + "&wait=0");
        if (answer && answer.state) progress = answer;
      } catch (err) { /* the verdict request itself reports errors */ }
    }, 1000);
    try {
      for (;;) {
        try {
          verdict = await api(url);
          break;
        } catch (err) {
          // Busy with other users' verdicts: try again while this one is still wanted.
          if (err.status !== 503 || mine !== cleanserRequest) throw err;
          progress = {state: "waiting"};
          await new Promise((resolve) => setTimeout(resolve, 3000));
          if (mine !== cleanserRequest) return;
        }
      }
    } catch (err) {
      if (mine === cleanserRequest && state === current) {
        panel.dataset.state = "error";
        line.className = "error";
        line.textContent = "no PatchCleanser verdict: " + err.message;
      }
      return;
    } finally {
      clearInterval(ticker);
      clearInterval(poller);
    }
    state.verdicts.set(patch, verdict);
  }
  if (mine !== cleanserRequest || state !== current) return; // a newer choice or image won
  renderCleanser(state, verdict);
}

function renderCleanser(state, v) {
  const panel = $("#cleanser");
  const line = $("#cleanser-verdict");
  const label = v.prediction.name;
  const n = v.masks.count;
  panel.dataset.state = "done";
  panel.dataset.certified = String(v.certified);
  line.className = v.certified ? "yes" : "no";
  line.textContent = (v.certified ? "✔ " : "✘ ") + v.model + " with PatchCleanser predicts " + label +
    (v.undefended.index === v.prediction.index ? "" : " (undefended, " + v.model + " says " + v.undefended.name + ")") +
    ": " + v.message + ".";
  // One cell per mask, where the mask lies: green where its one-mask prediction is the final one.
  const grid = $("#cleanser-grid");
  grid.style.gridTemplateColumns = "repeat(" + v.masks.cols + ", 20px)";
  grid.replaceChildren();
  const preds = v.two_mask.predictions;
  v.one_mask.forEach((cls, i) => {
    const cell = document.createElement("button");
    cell.type = "button";
    cell.dataset.mask = i;
    cell.dataset.agree = String(cls === v.prediction.index);
    if (v.recovered_by === i) cell.dataset.recovered = "true";
    const others = preds[i].filter((c, j) => j !== i && c !== v.prediction.index).length;
    if (others) cell.textContent = "•";
    const [x0, y0, x1, y1] = v.masks.boxes_resized[i];
    cell.title = "mask " + (i + 1) + " (row " + (Math.floor(i / v.masks.cols) + 1) + ", column " + (i % v.masks.cols + 1) +
      "; x " + x0 + "–" + x1 + ", y " + y0 + "–" + y1 + " px): " + config.classes[cls] +
      (others ? "; " + others + " of its " + (n - 1) + " two-mask predictions are not " + label + " (•)" : "") +
      (v.recovered_by === i ? "; the mask that decided (case II)" : "");
    cell.setAttribute("aria-label", cell.title);
    const show = () => {
      const svg = $("#cleanser-mask");
      svg.setAttribute("viewBox", "0 0 " + state.summary.width + " " + state.summary.height);
      svg.replaceChildren(boxRect(v.masks.boxes_resized[i], cell.title));
    };
    const hide = () => $("#cleanser-mask").replaceChildren();
    cell.addEventListener("mouseenter", show);
    cell.addEventListener("focus", show);
    cell.addEventListener("mouseleave", hide);
    cell.addEventListener("blur", hide);
    grid.append(cell);
  });
  const agreeing = v.one_mask.filter((c) => c === v.prediction.index).length;
  const caseText = {
    1: "Case I, all masks agree: every one of the " + n + " one-mask predictions is " + label + ".",
    2: "Case II, a disagreeing mask recovered: only " + agreeing + " of the " + n + " one-mask predictions are " +
      label + ", but mask " + (v.recovered_by + 1) + " (outlined) says " + label + " under every second mask too, " +
      "so " + label + " wins over the majority.",
    3: "Case III, majority: the one-mask predictions disagree, and no mask that disagrees with their majority keeps " +
      "its label under every second mask, so the majority " + label + " (" + agreeing + " of " + n + ") is the prediction.",
  }[v.case];
  $("#cleanser-case").textContent = caseText + " Cells: the " + v.masks.rows + " × " + v.masks.cols +
    " masks where they lie; green: one-mask prediction " + label + ", red: another class; • : a pair with this mask " +
    "predicts another class. Hover a cell to see its mask on the image.";
  $("#cleanser-pairs").textContent = "Two-mask check: " + v.two_mask.agree + " of " + v.two_mask.pairs +
    " pairs of masks (and " + agreeing + " of " + n + " single masks) predict " + label + "; certified only if all do" +
    (v.certified ? ", and they do." : ".");
  const [mw, mh] = v.masks.size_resized;
  const [sw, sh] = v.masks.stride_resized;
  $("#cleanser-about").textContent = n + " masks of " + mw + "×" + mh + " px (stride " + sw + "×" + sh + " px; filled " +
    "with the mean colour) against a " + v.patch_px_resized + "×" + v.patch_px_resized + " px sticker; " + v.passes +
    " passes of " + v.model + (v.ms !== undefined ? " in " + seconds(v.ms) : "") + "." +
    " Classes matched " + config.cleanser.classes_matched + "." +
    (config.cleanser.note ? " Note: " + config.cleanser.note + "." : "") +
    (config.cleanser.same_input ? "" : " " + v.model + " normalizes the same pixels with its own mean and std.");
  $("#cleanser-body").hidden = false;
}

// An SVG rectangle for a box [x0, y0, x1, y1] of the model input, with a tooltip.
function boxRect([x0, y0, x1, y1], tooltip) {
  const ns = "http://www.w3.org/2000/svg";
  const rect = document.createElementNS(ns, "rect");
  rect.setAttribute("x", x0);
  rect.setAttribute("y", y0);
  rect.setAttribute("width", x1 - x0);
  rect.setAttribute("height", y1 - y0);
  const title = document.createElementNS(ns, "title");
  title.textContent = tooltip;
  rect.append(title);
  return rect;
}

init();
