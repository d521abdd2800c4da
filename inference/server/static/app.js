// The page is a client of /1.0/check.json and nothing else: every photo goes through the
// same API, limits, auth and errors as any other client. No build step, no dependencies.
"use strict";

(() => {
  const CHECK = "/1.0/check.json";
  // The server answers 503 once workers + queue are full; a small pool keeps a big drop
  // from tripping that for other clients, and 503s that still happen are retried.
  const PARALLEL = 2;
  // A photo refused as busy is retried (after Retry-After) for this long before it is
  // marked failed: a count of tries would give up early whenever scoring is slow.
  const MAX_BUSY_WAIT_MS = 60000;
  const BUCKET_LABELS = {
    very_poor: "very poor", poor: "poor", decent: "decent", good: "good", very_good: "very good",
  };
  // Short, human headlines for the API's stable error codes; the server's own message
  // follows each one, so nothing is hidden.
  const HEADLINES = [
    [[1], "API key needed"],
    [[13, 14], "Refused URL"],
    [[20, 26], "Unsupported file"],
    [[21], "Truncated image"],
    [[22], "Image too small"],
    [[23, 24, 25], "Too large"],
    [[27], "Empty file"],
    [[30, 31, 32, 33, 34], "Could not fetch the URL"],
    [[50, 51], "Server busy"],
  ];

  const $ = (id) => document.getElementById(id);
  const items = [];
  let sequence = 0;
  let active = 0;
  const queue = [];
  // The key lives in this closure only: never a cookie, storage or a URL.
  let key = null;

  // ------------------------------------------------------------------ adding photos
  function addFiles(files) {
    for (const file of files) {
      add({ name: file.name || "pasted image", source: "file", file,
            thumb: URL.createObjectURL(file) });
    }
  }

  function addUrl(url) {
    add({ name: url, source: "url", url, thumb: /^https?:\/\//i.test(url) ? url : "" });
  }

  function add(fields) {
    const item = { id: ++sequence, status: "queued", retries: 0, result: null, error: null,
                   ...fields };
    item.el = makeCard(item);
    items.push(item);
    $("grid").append(item.el);
    enqueue(item);
    render();
  }

  function enqueue(item) {
    item.status = "queued";
    item.error = null;
    queue.push(item);
    pump();
  }

  function pump() {
    while (active < PARALLEL && queue.length) {
      const item = queue.shift();
      if (!items.includes(item)) continue;  // cleared while waiting
      active += 1;
      score(item).finally(() => { active -= 1; pump(); });
    }
  }

  // ------------------------------------------------------------------ talking to the API
  async function score(item) {
    item.status = "scoring";
    updateCard(item);
    const form = new FormData();
    form.append("models", "quality");
    form.append("quality_details", "1");
    if (key) {
      // Form fields of a POST body: the secret never appears in a URL or a server log line.
      form.append("api_user", key.user);
      form.append("api_secret", key.secret);
    }
    if (item.file) form.append("media", item.file, item.name);
    else form.append("url", item.url);

    let response;
    let body = null;
    try {
      response = await fetch(CHECK, { method: "POST", body: form, credentials: "omit",
                                      cache: "no-store" });
      body = await response.json().catch(() => null);
    } catch (err) {
      return fail(item, { type: "network", code: null,
                          message: "the server could not be reached (" + err.message + ")" });
    }
    if (!items.includes(item)) return;
    if (response.status === 503 && !item.busySince) item.busySince = Date.now();
    if (response.status === 503 && Date.now() - item.busySince < MAX_BUSY_WAIT_MS) {
      item.retries += 1;
      const wait = Math.min(10, Number(response.headers.get("Retry-After")) || 1);
      item.status = "queued";
      updateCard(item);
      setTimeout(() => enqueue(item), wait * 1000);
      return;
    }
    if (body && body.status === "success" && body.quality) {
      item.status = "done";
      item.result = body.quality;
      item.response = body;
      updateCard(item);
      render();
      return;
    }
    const error = (body && body.error) || { type: "http", code: null,
                                             message: "HTTP " + response.status };
    if (error.code === 1) {
      item.status = "auth";
      item.error = error;
      showAuth(key ? "The server refused this key: " + error.message : null);
      updateCard(item);
      render();
      return;
    }
    fail(item, error);
  }

  function fail(item, error) {
    item.status = "failed";
    item.error = error;
    updateCard(item);
    render();
  }

  function headline(code) {
    for (const [codes, text] of HEADLINES) if (codes.includes(code)) return text;
    return "Failed";
  }

  // ------------------------------------------------------------------ cards
  function makeCard(item) {
    const card = $("card-template").content.firstElementChild.cloneNode(true);
    card.dataset.id = String(item.id);
    const img = card.querySelector("img");
    img.alt = "Photo " + item.name;
    img.addEventListener("error", () => {
      // Broken files and unreachable URLs have no preview; say so instead of a broken icon.
      img.remove();
      const none = document.createElement("span");
      none.className = "no-preview";
      none.textContent = "No preview";
      card.querySelector(".thumb").append(none);
    }, { once: true });
    if (item.thumb) img.src = item.thumb;
    else img.dispatchEvent(new Event("error"));
    card.querySelector(".name").textContent = item.name;
    card.querySelector(".name").title = item.name;
    return card;
  }

  function updateCard(item) {
    const card = item.el;
    card.dataset.status = item.status;
    card.setAttribute("aria-busy", String(item.status === "queued" || item.status === "scoring"));
    const scoreEl = card.querySelector(".score");
    const bucketEl = card.querySelector(".bucket");
    const errorEl = card.querySelector(".error");
    const factorsEl = card.querySelector(".factors");
    factorsEl.replaceChildren();
    errorEl.textContent = "";
    bucketEl.textContent = "";
    bucketEl.className = "bucket";
    delete card.dataset.score;
    if (item.status === "queued" || item.status === "scoring") {
      scoreEl.textContent = item.status === "queued" ? "Waiting…" : "Scoring…";
    } else if (item.status === "done") {
      const q = item.result;
      card.dataset.score = String(q.score);
      scoreEl.textContent = q.score.toFixed(2);
      if (q.bucket) {
        bucketEl.textContent = BUCKET_LABELS[q.bucket] || q.bucket;
        bucketEl.classList.add("bucket-" + q.bucket);
      }
      const img = card.querySelector("img");
      if (img) {
        img.alt = "Photo " + item.name + ", score " + q.score.toFixed(2) +
          (q.bucket ? " (" + (BUCKET_LABELS[q.bucket] || q.bucket) + ")" : "");
      }
      for (const [name, value] of Object.entries(q.factors || {})) {
        const dt = document.createElement("dt");
        dt.textContent = name.replace(/_/g, " ");
        const dd = document.createElement("dd");
        const bar = document.createElement("span");
        bar.className = "bar";
        bar.setAttribute("aria-hidden", "true");
        const fill = document.createElement("span");
        fill.style.width = Math.round(Math.max(0, Math.min(1, value)) * 100) + "%";
        bar.append(fill);
        const text = document.createElement("span");
        text.className = "value";
        text.textContent = value.toFixed(2);
        dd.append(bar, text);
        factorsEl.append(dt, dd);
      }
    } else {
      scoreEl.textContent = "—";
      const e = item.error || {};
      errorEl.textContent = headline(e.code) + ": " + e.message +
        (e.code != null ? " (error " + e.code + ")" : "");
    }
  }

  // ------------------------------------------------------------------ sort, filter, threshold
  function threshold() {
    return Number($("threshold").value);
  }

  // The threshold compares the two-decimal score the card shows, so what you see is
  // what is marked (0.50 is not "below 0.50").
  function isBelow(item) {
    return item.status === "done" && item.result.score < threshold();
  }

  function exact(item) {
    if (item.status !== "done") return null;
    return item.result.score_exact ?? item.result.score;
  }

  function sorted() {
    const mode = $("sort").value;
    const list = items.slice();
    const byScore = (sign) => (a, b) => {
      const x = exact(a);
      const y = exact(b);
      if (x === null || y === null) return (x === null) - (y === null) || a.id - b.id;
      return sign * (x - y) || a.id - b.id;
    };
    if (mode === "score-desc") list.sort(byScore(-1));
    else if (mode === "score-asc") list.sort(byScore(1));
    else if (mode === "name") list.sort((a, b) => a.name.localeCompare(b.name) || a.id - b.id);
    else list.sort((a, b) => a.id - b.id);
    return list;
  }

  function visible(item) {
    switch ($("filter").value) {
      case "below": return isBelow(item);
      case "above": return item.status === "done" && !isBelow(item);
      case "failed": return item.status === "failed" || item.status === "auth";
      default: return true;
    }
  }

  function render() {
    $("threshold-value").textContent = threshold().toFixed(2);
    const grid = $("grid");
    const order = sorted();
    for (const item of order) {
      item.el.classList.toggle("below", isBelow(item));
      item.el.hidden = !visible(item);
    }
    // Re-append (which moves nodes) only when the order changed: a drop of hundreds of
    // photos renders once per answer, and moving every card each time would be quadratic.
    const current = grid.children;
    if (order.length !== current.length || order.some((item, i) => current[i] !== item.el)) {
      grid.append(...order.map((item) => item.el));
    }
    const done = items.filter((i) => i.status === "done");
    const failed = items.filter((i) => i.status === "failed" || i.status === "auth");
    const pending = items.length - done.length - failed.length;
    const shown = items.filter((i) => !i.el.hidden).length;
    let text = items.length === 0 ? "No photos yet." :
      `${items.length} photo${items.length === 1 ? "" : "s"}: ${done.length} scored ` +
      `(${done.filter(isBelow).length} below ${threshold().toFixed(2)}), ` +
      `${failed.length} failed, ${pending} in progress.`;
    if (items.length && shown !== items.length) text += ` Showing ${shown}.`;
    $("summary").textContent = text;
    const any = items.length > 0;
    $("download-csv").disabled = !any;
    $("download-json").disabled = !any;
    $("clear").disabled = !any;
  }

  // ------------------------------------------------------------------ downloads
  function records() {
    return sorted().map((item) => {
      const q = item.result || {};
      return {
        name: item.name,
        source: item.source,
        status: item.status === "auth" ? "failed" : item.status,
        score: q.score ?? null,
        score_exact: q.score_exact ?? null,
        bucket: q.bucket ?? null,
        below_threshold: item.status === "done" ? isBelow(item) : null,
        factors: q.factors ?? null,
        model_version: q.model_version ?? null,
        error: item.error ? { type: item.error.type, code: item.error.code,
                              message: item.error.message } : null,
      };
    });
  }

  function csvCell(value) {
    if (value === null || value === undefined) return "";
    let text = String(value);
    // A leading =, +, - or @ makes spreadsheets run the cell as a formula (file names
    // and URLs come from users).
    if (/^[=+\-@\t\r]/.test(text) && typeof value === "string") text = "'" + text;
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function toCsv() {
    const rows = records();
    const factorNames = [];
    for (const r of rows) {
      for (const name of Object.keys(r.factors || {})) {
        if (!factorNames.includes(name)) factorNames.push(name);
      }
    }
    const header = ["name", "source", "status", "score", "score_exact", "bucket",
                    "below_threshold", ...factorNames, "model_version", "error_type",
                    "error_code", "error_message"];
    const lines = [header.join(",")];
    for (const r of rows) {
      const e = r.error || {};
      lines.push([r.name, r.source, r.status, r.score, r.score_exact, r.bucket,
                  r.below_threshold, ...factorNames.map((n) => (r.factors || {})[n]),
                  r.model_version, e.type, e.code, e.message].map(csvCell).join(","));
    }
    return lines.join("\r\n") + "\r\n";
  }

  function download(filename, type, text) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = document.createElement("a");
    a.href = url;
    a.download = filename;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  // ------------------------------------------------------------------ auth
  function showAuth(message) {
    $("auth").hidden = false;
    if (message) $("auth-message").textContent = message;
    if (!key || message) {
      $("auth-form").hidden = false;
      $("auth-state").hidden = true;
      const field = $("api-user").value ? $("api-secret") : $("api-user");
      if (!document.activeElement || document.activeElement === document.body) field.focus();
    }
  }

  function useKey(event) {
    event.preventDefault();
    const user = $("api-user").value.trim();
    const secret = $("api-secret").value;
    if (!user || !secret) return;
    key = { user, secret };
    // The input would otherwise keep the secret in the DOM for as long as the tab lives.
    $("api-secret").value = "";
    $("auth-user").textContent = user;
    $("auth-form").hidden = true;
    $("auth-state").hidden = false;
    for (const item of items) if (item.status === "auth") enqueue(item);
    render();
  }

  function forgetKey() {
    key = null;
    $("auth-state").hidden = true;
    $("auth-form").hidden = false;
    $("api-user").focus();
  }

  // ------------------------------------------------------------------ wiring
  function init() {
    $("files").addEventListener("change", (event) => {
      addFiles(event.target.files);
      event.target.value = "";  // picking the same file again should add it again
    });
    $("pick").addEventListener("click", () => $("files").click());
    const drop = $("drop");
    // The whole window accepts drops, so a near miss does not navigate away from the page.
    document.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("dragging");
    });
    document.addEventListener("dragleave", (event) => {
      if (!event.relatedTarget) drop.classList.remove("dragging");
    });
    document.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("dragging");
      const dt = event.dataTransfer;
      if (dt.files && dt.files.length) addFiles(dt.files);
      else {
        const url = (dt.getData("text/uri-list") || dt.getData("text/plain") || "").trim();
        if (url) addUrl(url.split(/\s+/)[0]);
      }
    });
    document.addEventListener("paste", (event) => {
      if (event.target.closest && event.target.closest("input")) return;
      const files = event.clipboardData && event.clipboardData.files;
      if (files && files.length) addFiles(files);
    });
    $("url-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const url = $("url").value.trim();
      if (!url) return;
      addUrl(url);
      $("url").value = "";
    });
    $("threshold").addEventListener("input", render);
    $("sort").addEventListener("change", render);
    $("filter").addEventListener("change", render);
    $("download-csv").addEventListener("click",
      () => download("iqa-results.csv", "text/csv;charset=utf-8", toCsv()));
    $("download-json").addEventListener("click",
      () => download("iqa-results.json", "application/json",
                     JSON.stringify({ threshold: threshold(), results: records() }, null, 2)));
    $("clear").addEventListener("click", () => {
      for (const item of items) if (item.file && item.thumb) URL.revokeObjectURL(item.thumb);
      items.length = 0;
      queue.length = 0;
      $("grid").replaceChildren();
      render();
    });
    $("auth-form").addEventListener("submit", useKey);
    $("auth-forget").addEventListener("click", forgetKey);
    render();
    // /health says whether keys are required, so the prompt can show before the first 401.
    fetch("/health", { cache: "no-store", credentials: "omit" })
      .then((r) => (r.ok ? r.json() : null))
      .then((health) => { if (health && health.auth === true) showAuth(null); })
      .catch(() => {});
    document.body.dataset.ready = "true";
  }

  init();
})();
