// Loupe's search page: plain JS over the JSON API, no build step.
"use strict";

const PAGE = 30;
const $ = (id) => document.getElementById(id);

// What is being searched. One of: text, an uploaded image (Blob), an indexed image (id).
const state = {
  text: "", image: null, likeId: null, offset: 0, hasMore: false,
  loading: false, generation: 0, previewUrl: null,
};

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

function searchRequest(offset) {
  const params = filterParams(new URLSearchParams({ k: PAGE, offset }));
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
  return [`/api/search?${params}`, {}];
}

function hasQuery() {
  return Boolean(state.image || state.likeId !== null || state.text);
}

async function runSearch(reset = true) {
  if (!hasQuery()) return;
  if (reset) {
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
    $("summary").textContent = summaryText(state.offset, data.has_more, data.took_ms);
  } catch (err) {
    if (generation !== state.generation) return;
    state.hasMore = false;
    $("summary").textContent = "";
    showError(err.message);
    // An image the server cannot use (not an image, too large) is dropped from the query.
    if (state.image && (err.status === 413 || err.status === 415 || err.status === 400)) setQueryImage(null);
  } finally {
    if (generation === state.generation) {
      state.loading = false;
      $("more").hidden = !state.hasMore;
      watchSentinel();
    }
  }
}

function summaryText(count, more, tookMs) {
  if (count === 0) return "No results.";
  const edit = $("edit").value.trim();
  let what = state.image ? "your image" : state.likeId !== null ? "the chosen image" : `“${state.text}”`;
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
    const caption = document.createElement("span");
    caption.className = "score";
    caption.textContent = `#${hit.rank} · ${hit.score.toFixed(3)}`;
    button.append(img, caption);
    button.addEventListener("click", () => openViewer(hit, button));
    li.append(button);
    list.append(li);
  }
}

// --- the large view ------------------------------------------------------------------------------
let viewerHit = null;
let viewerOpener = null;

async function openViewer(hit, opener) {
  viewerHit = hit;
  viewerOpener = opener;
  $("viewer-img").src = hit.large;
  $("viewer-img").alt = hit.rel_path;
  $("viewer-title").textContent = hit.rel_path.split("/").pop();
  $("viewer-original").href = hit.file;
  fillMeta({ path: hit.rel_path, score: hit.score.toFixed(4) });
  $("viewer").showModal();
  $("more-like").focus();
  try {
    const meta = await api(hit.url);
    if (viewerHit !== hit) return;
    fillMeta({
      path: meta.rel_path,
      score: hit.score.toFixed(4),
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
  setQueryImage(null, hit);
  runSearch();
  $("results").focus();
});

// --- the query image (uploaded, or an indexed one for "more like this") ---------------------
function setQueryImage(blob, hit = null) {
  if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
  state.previewUrl = null;
  state.image = blob;
  state.likeId = hit ? hit.id : null;
  const panel = $("query-image");
  if (!blob && !hit) {
    panel.hidden = true;
    $("query-preview").removeAttribute("src");
    return;
  }
  if (blob) {
    state.previewUrl = URL.createObjectURL(blob);
    $("query-preview").src = state.previewUrl;
    $("query-preview").alt = `Your query image${blob.name ? `: ${blob.name}` : ""}`;
  } else {
    $("query-preview").src = hit.thumb;
    $("query-preview").alt = `Query image: ${hit.rel_path}`;
  }
  $("edit").value = "";
  panel.hidden = false;
}

function searchWithFile(file) {
  if (!file) return;
  setQueryImage(file);
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
  else { $("results").replaceChildren(); $("summary").textContent = ""; $("more").hidden = true; }
});
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
