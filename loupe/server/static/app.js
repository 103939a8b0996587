// Loupe's search page: plain JS over the JSON API, no build step.
"use strict";

const PAGE = 30;
const $ = (id) => document.getElementById(id);

// What is being searched. One of: text, an uploaded image (Blob), an indexed image (id).
// `text` is kept while an image is the query: removing the image searches it again.
const state = {
  text: "", image: null, imageKey: null, likeId: null, likeName: "", offset: 0, hasMore: false,
  loading: false, generation: 0, previewUrl: null, pendingEdit: "",
  // Answers: relevance feedback (image ids), and "show all" (no cut-off, no grouping).
  liked: [], unliked: [], showAll: false,
};
const DEFAULT_PLACEHOLDER = $("q").placeholder;

// --- talking to the server -----------------------------------------------------------------
async function api(url, options = {}) {
  const res = await fetch(url, options);
  let body = null;
  try { body = await res.json(); } catch { /* not JSON: handled below */ }
  if (!res.ok) {
    const error = new Error((body && body.error) || `${res.status} ${res.statusText}`);
    error.status = res.status;
    throw error;
  }
  return body;
}

function filterParams(params) {
  const folder = $("f-folder").value.trim();
  const since = $("f-since").value;
  const until = $("f-until").value;
  const type = $("f-type").value;
  const rerank = $("f-rerank").value;
  if (folder) params.set("folder", folder);
  if (since) params.set("since", since);
  if (until) params.set("until", until);
  if (type) params.set("type", type);
  if (rerank) params.set("rerank", rerank);
  return params;
}

function answerParams(params) {
  for (const id of state.liked) params.append("liked", id);
  for (const id of state.unliked) params.append("unliked", id);
  if (state.showAll) params.set("all", "true");
  return params;
}

// A new query starts without the previous one's feedback and "show all".
function resetAnswers() {
  state.liked = [];
  state.unliked = [];
  state.showAll = false;
}

function searchRequest(offset) {
  const params = answerParams(filterParams(new URLSearchParams({ k: PAGE, offset })));
  const edit = $("edit").value.trim();
  const weight = $("weight").value;
  if (state.image) {
    if (edit) { params.set("q", edit); params.set("weight", weight); }
    const form = new FormData();
    form.append("image", state.image, state.image.name || "query-image");
    return [`/api/search/image?${params}`, { method: "POST", body: form }];
  }
  if (state.likeId !== null) {
    params.set("like", state.likeId);
    if (edit) { params.set("q", edit); params.set("weight", weight); }
    return [`/api/search?${params}`, {}];
  }
  params.set("q", state.text);
  const channels = $("f-channels").value;
  if (channels) params.set("channels", channels);
  return [`/api/search?${params}`, {}];
}

function hasQuery() {
  return Boolean(state.image || state.likeId !== null || state.text);
}

// `record`: a new search the user asked for gets its own entry in the browser's history
// (Back returns to the one before); a search restored from the address does not.
async function runSearch(reset = true, { record = true } = {}) {
  if (!hasQuery()) return;
  if (reset) {
    if (record) remember();
    state.offset = 0;
    state.generation += 1;
    $("results").replaceChildren();
    $("summary").textContent = "Searching…";
  } else if (state.loading || !state.hasMore) {
    return;
  }
  const generation = state.generation;
  state.loading = true;
  showError(null);
  try {
    const [url, options] = searchRequest(state.offset);
    const data = await api(url, options);
    if (generation !== state.generation) return; // a newer search replaced this one
    renderResults(data.results);
    state.offset += data.results.length;
    state.hasMore = data.has_more;
    $("summary").textContent = data.confident === false
      ? "No confident match." : summaryText(state.offset, data.has_more, data.took_ms);
    if (reset) showAnswer(data);
  } catch (err) {
    if (generation !== state.generation) return;
    state.hasMore = false;
    $("summary").textContent = "";
    showError(err.message);
    // An image the server cannot use (not an image, too large) is dropped from the query.
    if (state.image && (err.status === 413 || err.status === 415 || err.status === 400)) {
      setQueryImage(null);
      remember(true);
    }
  } finally {
    if (generation === state.generation) {
      state.loading = false;
      $("more").hidden = !state.hasMore;
      watchSentinel();
    }
  }
}

// What the answer stages said: nothing clears the cut-off, or everything is shown.
function showAnswer(data) {
  const note = $("answer-note");
  if (state.showAll) {
    $("answer-text").textContent = "Showing every result: no confidence cut-off, near-duplicates not grouped.";
    $("show-all").textContent = "Only confident results";
    note.hidden = false;
  } else if (data.confident === false) {
    $("answer-text").textContent = "No confident match: nothing in your library is a clear answer to this search.";
    $("show-all").textContent = "Show all results";
    note.hidden = false;
  } else {
    note.hidden = true;
  }
  const judged = state.liked.length + state.unliked.length;
  $("feedback").hidden = judged === 0;
  $("feedback-text").textContent = `Your feedback: ${state.liked.length} liked (more like these), `
    + `${state.unliked.length} disliked (fewer like these); judged images are left out of the results.`;
}

$("show-all").addEventListener("click", () => {
  state.showAll = !state.showAll;
  runSearch();
});
$("clear-feedback").addEventListener("click", () => {
  state.liked = [];
  state.unliked = [];
  runSearch();
});

function judge(hit, liked) {
  const [add, other] = liked ? [state.liked, state.unliked] : [state.unliked, state.liked];
  const at = other.indexOf(hit.id);
  if (at >= 0) other.splice(at, 1);
  if (!add.includes(hit.id)) add.push(hit.id);
  runSearch();
  $("results").focus();
}

function summaryText(count, more, tookMs) {
  if (count === 0) return "No results.";
  const edit = $("edit").value.trim();
  const liked = state.likeName ? `images like ${state.likeName}` : "the chosen image";
  let what = state.image ? "your image" : state.likeId !== null ? liked : `“${state.text}”`;
  if ((state.image || state.likeId !== null) && edit) what += ` + “${edit}”`;
  return `${count}${more ? "+" : ""} results for ${what} (${Math.round(tookMs)} ms).`;
}

// --- results -----------------------------------------------------------------------------------
function renderResults(results) {
  const list = $("results");
  for (const hit of results) {
    const li = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = "hit";
    button.dataset.id = hit.id;
    const img = document.createElement("img");
    img.src = hit.thumb;
    img.alt = hit.rel_path;
    img.loading = "lazy";
    img.decoding = "async";
    const thumb = document.createElement("span");
    thumb.className = "thumb";
    thumb.append(img, ...thumbMarks(hit));
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = baseName(hit.rel_path);
    name.title = hit.rel_path;
    const caption = document.createElement("span");
    caption.className = "score";
    caption.textContent = `#${hit.rank} · ${hit.score.toFixed(3)}`;
    button.append(thumb, name, caption);
    const matched = whyText(hit.why);
    if (matched) {
      const line = document.createElement("span");
      line.className = "matched";
      line.textContent = matched;
      line.title = matched;
      button.append(line);
    }
    button.addEventListener("click", () => openViewer(hit, button));
    li.append(button, cardActions(hit, li));
    list.append(li);
  }
}

// Thumbs up / down (relevance feedback), and the "+N similar" badge of a collapsed group.
function cardActions(hit, li) {
  const bar = document.createElement("div");
  bar.className = "card-actions";
  const name = baseName(hit.rel_path);
  for (const [liked, label] of [[true, "More like"], [false, "Fewer like"]]) {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `secondary ${liked ? "like" : "unlike"}`;
    b.append(thumbIcon());
    b.setAttribute("aria-label", `${label} ${name}`);
    b.title = `${label} this`;
    b.addEventListener("click", () => judge(hit, liked));
    bar.append(b);
  }
  const group = hit.group;
  if (group && group.size > 1) {
    const badge = document.createElement("button");
    badge.type = "button";
    badge.className = "secondary group-badge";
    badge.textContent = `+${group.size - 1} similar`;
    badge.setAttribute("aria-expanded", "false");
    badge.setAttribute("aria-label", `${group.size - 1} near-duplicates of ${name}: show them`);
    badge.addEventListener("click", () => toggleGroup(hit, li, badge));
    bar.append(badge);
  }
  return bar;
}

// A thumb (drawn here, no icon font needed); CSS turns it down for "fewer like this".
function thumbIcon() {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("width", "16");
  svg.setAttribute("height", "16");
  svg.setAttribute("aria-hidden", "true");
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", "M2 10h4v11H2z M8 21h9.5a2 2 0 0 0 2-1.6l1.4-7A2 2 0 0 0 19 10h-5.5"
    + "l.9-4.3A2 2 0 0 0 12.5 3.3L8 9z");
  path.setAttribute("fill", "currentColor");
  svg.append(path);
  return svg;
}

function toggleGroup(hit, li, badge) {
  const open = badge.getAttribute("aria-expanded") === "true";
  badge.setAttribute("aria-expanded", String(!open));
  if (open) {
    for (const m of li.memberItems || []) m.remove();
    li.memberItems = [];
    return;
  }
  let after = li;
  li.memberItems = hit.group.members.map((m) => {
    const item = document.createElement("li");
    item.className = "member";
    const button = document.createElement("button");
    button.type = "button";
    button.className = "hit";
    button.dataset.id = m.id;
    const img = document.createElement("img");
    img.src = m.thumb;
    img.alt = m.rel_path;
    img.loading = "lazy";
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = baseName(m.rel_path);
    label.title = m.rel_path;
    const caption = document.createElement("span");
    caption.className = "score";
    caption.textContent = `similar to #${hit.rank}`;
    button.append(img, label, caption);
    const asHit = { ...m, score: null, large: `${m.url}/thumb?size=1024`, file: `${m.url}/file` };
    button.addEventListener("click", () => openViewer(asHit, button));
    item.append(button);
    after.after(item);
    after = item;
    return item;
  });
}

function baseName(relPath) {
  return relPath.split("/").pop();
}

// --- why a text hit matched: its words, outlined where they were read ----------------------------
const FIELD_NAMES = { ocr: "in the image", name: "file name", folders: "folder", camera: "camera", date: "date" };

function whyText(why) {
  if (!why || !why.fields) return "";
  return Object.entries(why.fields)
    .map(([field, terms]) => `${terms.join(", ")} (${FIELD_NAMES[field] || field})`).join("; ");
}

function mark(left, top, width, height, title) {
  const el = document.createElement("span");
  el.className = "mark";
  el.title = title;
  Object.assign(el.style, { left: `${left}%`, top: `${top}%`, width: `${width}%`, height: `${height}%` });
  return el;
}

// Thumbnails are square crops of the image's centre (object-fit: cover): boxes in image pixels
// are shifted by the crop and scaled by its side.
function thumbMarks(hit) {
  const words = (hit.why && hit.why.words) || [];
  if (!words.length || !hit.width || !hit.height) return [];
  const side = Math.min(hit.width, hit.height);
  const dx = (hit.width - side) / 2;
  const dy = (hit.height - side) / 2;
  return words.map((w) => {
    const [x0, y0, x1, y1] = w.box;
    return mark(((x0 - dx) / side) * 100, ((y0 - dy) / side) * 100,
      ((x1 - x0) / side) * 100, ((y1 - y0) / side) * 100, w.text);
  });
}

// The large view shows the whole image: boxes are fractions of its width and height, laid over
// the picture wherever the layout put it.
function viewerMarks(hit) {
  const layer = $("viewer-marks");
  const words = (hit && hit.why && hit.why.words) || [];
  layer.replaceChildren(...(hit && hit.width && hit.height ? words.map((w) => {
    const [x0, y0, x1, y1] = w.box;
    return mark((x0 / hit.width) * 100, (y0 / hit.height) * 100,
      ((x1 - x0) / hit.width) * 100, ((y1 - y0) / hit.height) * 100, w.text);
  }) : []));
  placeViewerMarks();
}

function placeViewerMarks() {
  const img = $("viewer-img");
  Object.assign($("viewer-marks").style, {
    left: `${img.offsetLeft}px`, top: `${img.offsetTop}px`,
    width: `${img.offsetWidth}px`, height: `${img.offsetHeight}px`,
  });
}
$("viewer-img").addEventListener("load", placeViewerMarks);
if ("ResizeObserver" in window) new ResizeObserver(placeViewerMarks).observe($("viewer-img"));

// --- the large view ------------------------------------------------------------------------------
let viewerHit = null;
let viewerOpener = null;

async function openViewer(hit, opener) {
  viewerHit = hit;
  viewerOpener = opener;
  $("viewer-img").src = hit.large;
  $("viewer-img").alt = hit.rel_path;
  $("viewer-title").textContent = baseName(hit.rel_path);
  $("viewer-original").href = hit.file;
  const score = hit.score === null ? null : hit.score.toFixed(4);
  fillMeta({ path: hit.rel_path, score, confidence: hit.confidence,
    matched: whyText(hit.why) });
  $("viewer").showModal();
  viewerMarks(hit);
  $("more-like").focus();
  try {
    const meta = await api(hit.url);
    if (viewerHit !== hit) return;
    fillMeta({
      path: meta.rel_path,
      score,
      confidence: hit.confidence,
      matched: whyText(hit.why),
      size: meta.width ? `${meta.width} × ${meta.height}` : null,
      format: meta.format,
      taken: meta.taken_at,
      date: meta.date,
      camera: meta.camera,
      bytes: meta.size ? `${(meta.size / 1024).toFixed(0)} KiB` : null,
      id: String(meta.id),
    });
  } catch (err) {
    showError(err.message);
  }
}

function fillMeta(fields) {
  const dl = $("viewer-meta");
  dl.replaceChildren();
  for (const [key, value] of Object.entries(fields)) {
    if (value === null || value === undefined || value === "") continue;
    const dt = document.createElement("dt");
    dt.textContent = key;
    const dd = document.createElement("dd");
    dd.textContent = value;
    dl.append(dt, dd);
  }
}

function closeViewer() {
  $("viewer").close();
}

$("viewer").addEventListener("close", () => {
  if (viewerOpener && viewerOpener.isConnected) viewerOpener.focus();
});
$("viewer").addEventListener("click", (event) => {
  if (event.target === $("viewer")) closeViewer(); // a click on the backdrop
});
$("viewer-close").addEventListener("click", closeViewer);
$("more-like").addEventListener("click", () => {
  const hit = viewerHit;
  closeViewer();
  resetAnswers();
  setQueryImage(null, hit);
  runSearch();
  $("results").focus();
});

// --- the query image (uploaded, or an indexed one for "more like this") ---------------------
// Uploaded images of this tab, by the key their history entries carry: Back returns to an
// image search while the tab is open; the address itself cannot hold an image.
const uploads = new Map();
let uploadCount = 0;
const KEEP_UPLOADS = 8;

// `key`: the upload's key when it comes back from history; `edit`: the "this, but" text.
function setQueryImage(blob, hit = null, { key = null, edit = "" } = {}) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
  state.image = blob;
  state.imageKey = null;
  state.likeId = hit ? hit.id : null;
  state.likeName = hit ? hit.rel_path : "";
  const panel = $("query-image");
  $("bookmark-note").hidden = !blob;
  if (!blob && !hit) {
    panel.hidden = true;
    $("query-preview").removeAttribute("src");
    showQueryInBox();
    return;
  }
  if (blob) {
    state.imageKey = key || `upload-${Date.now()}-${++uploadCount}`;
    uploads.delete(state.imageKey);
    uploads.set(state.imageKey, blob);
    while (uploads.size > KEEP_UPLOADS) uploads.delete(uploads.keys().next().value);
    state.previewUrl = URL.createObjectURL(blob);
    $("query-preview").src = state.previewUrl;
    $("query-preview").alt = `Your query image${blob.name ? `: ${blob.name}` : ""}`;
  } else {
    $("query-preview").src = hit.thumb;
    $("query-preview").alt = `Query image: ${hit.rel_path}`;
  }
  $("edit").value = edit;
  panel.hidden = false;
  showQueryInBox();
}

// The search box shows what is being searched: the text, or which image.
function showQueryInBox() {
  const box = $("q");
  if (state.image) {
    const name = state.image.name ? ` (${state.image.name})` : "";
    box.value = "";
    box.placeholder = `Searching by your image${name}: type here to search by text instead`;
  } else if (state.likeId !== null) {
    box.value = "";
    const liked = state.likeName || `image ${state.likeId}`;
    box.placeholder = `More like ${liked}: type here to search by text instead`;
  } else {
    box.value = state.text;
    box.placeholder = DEFAULT_PLACEHOLDER;
  }
  box.classList.toggle("by-image", Boolean(state.image || state.likeId !== null));
}

function searchWithFile(file) {
  if (!file) return;
  // the edit text of a bookmarked image search, waiting for its image
  resetAnswers();
  setQueryImage(file, null, { edit: state.pendingEdit });
  state.pendingEdit = "";
  runSearch();
}

$("file").addEventListener("change", (event) => {
  searchWithFile(event.target.files[0]);
  event.target.value = ""; // choosing the same file again still searches
});
$("clear-image").addEventListener("click", () => {
  setQueryImage(null);
  $("q").focus();
  if (state.text) runSearch();
  else { remember(); clearResults(); }
});

function clearResults() {
  state.generation += 1; // a search still in flight no longer shows
  state.hasMore = false;
  $("results").replaceChildren();
  $("summary").textContent = "";
  $("more").hidden = true;
  $("answer-note").hidden = true;
  $("feedback").hidden = true;
}
$("edit-form").addEventListener("submit", (event) => { event.preventDefault(); runSearch(); });
$("weight").addEventListener("input", () => {
  $("weight-out").textContent = Number($("weight").value).toFixed(2);
});
$("weight").addEventListener("change", () => { if ($("edit").value.trim()) runSearch(); });

// Drag and drop anywhere on the page, and paste.
let dragDepth = 0;
function isFileDrag(event) {
  return event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
}
document.addEventListener("dragenter", (event) => {
  if (!isFileDrag(event)) return;
  dragDepth += 1;
  $("dropzone").hidden = false;
});
document.addEventListener("dragleave", () => {
  dragDepth = Math.max(0, dragDepth - 1);
  if (dragDepth === 0) $("dropzone").hidden = true;
});
document.addEventListener("dragover", (event) => { if (isFileDrag(event)) event.preventDefault(); });
document.addEventListener("drop", (event) => {
  event.preventDefault();
  dragDepth = 0;
  $("dropzone").hidden = true;
  const file = event.dataTransfer && event.dataTransfer.files[0];
  if (file) searchWithFile(file);
});
document.addEventListener("paste", (event) => {
  const items = Array.from((event.clipboardData && event.clipboardData.items) || []);
  const item = items.find((i) => i.kind === "file" && i.type.startsWith("image/"));
  if (!item) return; // ordinary text paste into a text box
  event.preventDefault();
  searchWithFile(item.getAsFile());
});

// --- text search, filters, paging ---------------------------------------------------------
$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("q").value.trim();
  if (!text) { showError("Type something to search for, or drop an image."); return; }
  state.text = text;
  state.pendingEdit = "";
  resetAnswers();
  setQueryImage(null);
  runSearch();
});
$("filter-form").addEventListener("submit", (event) => { event.preventDefault(); runSearch(); });
$("filter-form").addEventListener("reset", () => setTimeout(() => runSearch(), 0));
$("more").addEventListener("click", () => runSearch(false));
// Infinite scroll: load the next page when the end of the list comes near.
const scrollObserver = "IntersectionObserver" in window
  ? new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting) && state.hasMore) runSearch(false);
  }, { rootMargin: "400px" })
  : null;

function watchSentinel() {
  // Observing afresh reports the current state at once: a page that did not fill the
  // screen (the end is still in view, so no change would ever be reported) loads the next.
  if (!scrollObserver) return;
  scrollObserver.unobserve($("sentinel"));
  scrollObserver.observe($("sentinel"));
}

// --- the address: the query and filters, so Back, reload and bookmarks work ---------------
function addressParams() {
  const params = new URLSearchParams();
  const edit = $("edit").value.trim();
  if (state.image) params.set("image", "upload"); // only a marker: the image stays in the tab
  else if (state.likeId !== null) params.set("like", state.likeId);
  else if (state.text) {
    params.set("q", state.text);
    if ($("f-channels").value) params.set("channels", $("f-channels").value);
  }
  if ((state.image || state.likeId !== null) && edit) {
    params.set("edit", edit);
    params.set("weight", $("weight").value);
  }
  return answerParams(filterParams(params));
}

// A new entry in the browser's history for what is searched now (or, with `replace`, the
// current entry corrected); the same search twice makes one entry.
function remember(replace = false) {
  const params = addressParams();
  const url = params.toString() ? `?${params}` : location.pathname;
  const entry = { imageKey: state.image ? state.imageKey : null };
  const same = url === (location.search || location.pathname)
    && (history.state ? history.state.imageKey : null) === entry.imageKey;
  if (same || replace) history.replaceState(entry, "", url);
  else history.pushState(entry, "", url);
}

function setSelect(select, value) {
  const known = Array.from(select.options).some((o) => o.value === value);
  select.value = known ? value : "";
}

// From the address to the page: on load, and on Back / Forward.
async function restore() {
  const params = new URLSearchParams(location.search);
  if ($("viewer").open) closeViewer();
  showError(null);
  $("f-folder").value = params.get("folder") || "";
  $("f-since").value = params.get("since") || "";
  $("f-until").value = params.get("until") || "";
  setSelect($("f-type"), params.get("type") || "");
  setSelect($("f-rerank"), params.get("rerank") || "");
  setSelect($("f-channels"), params.get("channels") || "");
  if (["folder", "since", "until", "type", "rerank", "channels"].some((k) => params.get(k))) $("filters").open = true;
  const weight = Number(params.get("weight"));
  $("weight").value = params.has("weight") && weight >= 0 && weight <= 1 ? weight : 0.5;
  $("weight-out").textContent = Number($("weight").value).toFixed(2);
  state.text = (params.get("q") || "").trim();
  state.pendingEdit = "";
  const ids = (key) => params.getAll(key).filter((v) => /^\d+$/.test(v)).map(Number);
  state.liked = ids("liked");
  state.unliked = ids("unliked");
  state.showAll = params.get("all") === "true";
  const edit = params.get("edit") || "";
  const like = params.get("like");
  if (params.get("image")) {
    const key = history.state && history.state.imageKey;
    const blob = key ? uploads.get(key) : null;
    if (blob) {
      setQueryImage(blob, null, { key, edit });
      runSearch(true, { record: false });
      return;
    }
    setQueryImage(null);
    state.pendingEdit = edit;
    clearResults();
    $("summary").textContent = "This address was a search by an uploaded image, and image "
      + "queries can't be bookmarked: drop, paste or choose the image again (its edit text and "
      + "the filters are kept).";
    return;
  }
  if (like && /^\d+$/.test(like)) {
    const generation = ++state.generation;
    try {
      const meta = await api(`/api/images/${like}`);
      if (generation !== state.generation) return; // another restore or search came first
      setQueryImage(null, meta, { edit });
      runSearch(true, { record: false });
    } catch (err) {
      if (generation !== state.generation) return;
      setQueryImage(null);
      clearResults();
      showError(err.message);
    }
    return;
  }
  setQueryImage(null);
  if (state.text) runSearch(true, { record: false });
  else clearResults();
}

window.addEventListener("popstate", restore);

// --- keyboard -------------------------------------------------------------------------------
document.addEventListener("keydown", (event) => {
  const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
  if (event.key === "/" && !typing && !$("viewer").open) {
    event.preventDefault();
    $("q").focus();
    $("q").select();
  }
});

// --- errors ---------------------------------------------------------------------------------
function showError(message) {
  const box = $("error");
  box.hidden = !message;
  box.textContent = message || "";
}

// --- indexing status and admin ------------------------------------------------------------------
const fmt = new Intl.NumberFormat();
let statusTimer = null;

async function pollStatus() {
  let delay = 15000;
  try {
    const s = await api("/api/index");
    const parts = [`${fmt.format(s.searchable)} images searchable`];
    if (s.errors) parts.push(`${fmt.format(s.errors)} unreadable`);
    if (s.running) {
      delay = 1500;
      const stopping = s.state === "stopping" ? ", stopping after this batch" : "";
      if (s.total === null) parts.push(`updating the index: looking for changes${stopping}…`);
      else parts.push(`updating the index: ${fmt.format(s.done)} of ${fmt.format(s.total)} files (${fmt.format(s.left)} left)${stopping}`);
    } else if (s.state === "stopped") {
      parts.push("index update stopped (finished batches kept)");
    } else if (s.state === "failed") {
      parts.push(`index update failed: ${s.error}`);
    } else if (s.state === "done" && s.report) {
      const r = s.report;
      parts.push(`index updated: ${r.added} added, ${r.updated} updated, ${r.removed} removed`);
    }
    if (s.switch) {   // a model switch: searches use the new model once its bridge is fitted
      delay = Math.min(delay, 1500);
      const w = s.switch;
      parts.push(`switching to ${w.name}: ${fmt.format(w.embedded)} of ${fmt.format(w.total)} images embedded` +
                 (w.bridge ? ` (searching with it through a ${w.bridge.method} bridge)` : ""));
    }
    $("status").textContent = parts.join(" · ");
  } catch (err) {
    $("status").textContent = `Server unreachable: ${err.message}`;
  }
  clearTimeout(statusTimer); // one polling chain, however often this is called
  statusTimer = setTimeout(pollStatus, delay);
}

function adminHeaders() {
  const token = $("token").value.trim();
  sessionStorage.setItem("loupe-token", token);
  return { Authorization: `Bearer ${token}` };
}

async function admin(url) {
  showError(null);
  try {
    await api(url, { method: "POST", headers: adminHeaders() });
  } catch (err) {
    showError(err.message);
  }
  pollStatus();
}

$("admin-form").addEventListener("submit", (event) => { event.preventDefault(); admin("/api/index"); });
$("stop").addEventListener("click", () => admin("/api/index/stop"));

// A token handed over in the address (http://host/#token=...) is kept for this tab only.
(function takeToken() {
  const match = location.hash.match(/^#token=(.+)$/);
  if (match) {
    sessionStorage.setItem("loupe-token", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  $("token").value = sessionStorage.getItem("loupe-token") || "";
})();

pollStatus();
restore();

