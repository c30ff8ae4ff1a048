// The jobs page: a gallery of ImageJobs kept live by the facade's event stream, a page per job,
// a submit form and cancel buttons. Every user-provided string goes through textContent, and
// only http(s) URLs become image sources or links.
"use strict";

const PAGE = 24;
const STATUSES = ["processing", "completed", "failed", "cancelled"];
const state = { jobs: new Map(), next: null, filter: "", tag: "", config: { auth_required: false }, token: null };
const $ = (selector) => document.querySelector(selector);

// ---- small DOM helpers -------------------------------------------------------------------
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "text") node.textContent = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}
const httpUrl = (value) => typeof value === "string" && /^https?:\/\//i.test(value) ? value : null;
function image(src, alt, className) {
  const safe = httpUrl(src);
  return safe ? el("img", { src: safe, alt: alt || "", class: className, loading: "lazy", referrerpolicy: "no-referrer" })
              : el("div", { class: className, role: "img", "aria-label": "no image" });
}
function age(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.floor(seconds)}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86400)}d ago`;
}
const shownStatus = (job) => job.cancelling ? "cancelling" : job.retrying ? "retrying" : job.state.status;
// A failed or cancelled job can be retried from the step that did not finish.
const retryable = (job) => (job.state.status === "failed" || job.state.status === "cancelled") && !job.retrying;
function badge(job) {
  const status = shownStatus(job);
  return el("span", { class: `badge ${status}`, text: status });
}
function notice(message) {
  const box = $("#notice");
  box.textContent = message || "";
  box.hidden = !message;
}

// ---- the API, with the bearer token when the server wants one -----------------------------
class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.field = body?.error?.field;
  }
}
function headers(extra) {
  const h = Object.assign({}, extra);
  if (state.token) h.Authorization = `Bearer ${state.token}`;
  return h;
}
async function api(path, options = {}) {
  const response = await fetch(path, Object.assign({}, options, { headers: headers(options.headers) }));
  if (response.status === 401 || response.status === 403) {
    await askToken(response.status === 403 ? "That token was not accepted. Try another one." : "This server needs an access token.");
    return api(path, options);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new ApiError(response.status, body);
  return body;
}
let tokenAsked = null;
function askToken(message) {
  if (tokenAsked) return tokenAsked;
  tokenAsked = new Promise((resolve) => {
    const dialog = $("#token-dialog");
    $("#token-message").textContent = message;
    const form = $("#token-form");
    form.reset();
    form.onsubmit = (event) => {
      event.preventDefault();
      state.token = form.elements.token.value.trim();
      sessionStorage.setItem("imagejob-token", state.token);
      dialog.close();
      tokenAsked = null;
      resolve();
    };
    dialog.showModal();
  });
  return tokenAsked;
}

// ---- live updates: Server-Sent Events read through fetch (so the token can be sent) -------
async function listen() {
  for (;;) {
    try {
      const response = await fetch("/images/events", { headers: headers({ Accept: "text/event-stream" }) });
      if (response.status === 401 || response.status === 403) {
        await askToken(response.status === 403 ? "That token was not accepted. Try another one." : "This server needs an access token.");
        continue;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      notice("");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          dispatch(block);
        }
      }
    } catch (error) {
      notice(`Live updates interrupted (${error.message}); reconnecting…`);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}
function dispatch(block) {
  let type = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith("event:")) type = line.slice(6).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (type === "hello" || type === "reload") loadList();
  else if (type === "job") upsert(JSON.parse(data.join("\n")));
  else if (type === "deleted") remove(data.join("\n"));
}
function upsert(job) {
  const known = state.jobs.has(job.workflow_id);
  state.jobs.set(job.workflow_id, job);
  const route = currentRoute();
  if (route.job === job.workflow_id) renderJob(job.workflow_id);
  if (route.job) return;
  // A known card is replaced where it is (the rest of the gallery and its focus stay).
  const shown = document.querySelector(`.card[data-workflow-id="${CSS.escape(job.workflow_id)}"]`);
  const visible = !state.filter || job.state.status === state.filter;
  if (known && shown && visible) shown.replaceWith(card(job));
  else renderGallery();
}
function remove(workflowId) {
  state.jobs.delete(workflowId);
  if (!currentRoute().job) renderGallery();
}

// ---- the gallery ---------------------------------------------------------------------------
async function loadList(more) {
  const params = new URLSearchParams({ limit: PAGE, order: "newest" });
  if (state.filter) params.set("status", state.filter);
  if (state.tag) params.set("tag", state.tag);
  if (more && state.next) params.set("continue", state.next);
  try {
    const page = await api(`/images/workflows?${params}`);
    if (!more) state.jobs.clear();
    for (const job of page.items) state.jobs.set(job.workflow_id, job);
    state.next = page.continue || null;
    route();
  } catch (error) {
    showError(`Cannot load the jobs: ${error.message}`, () => loadList(more));
  }
}
function showError(message, retry) {
  $("#main").replaceChildren(el("div", { class: "error", role: "alert" },
    el("p", { text: message }), el("button", { type: "button", onclick: retry, text: "Retry" })));
}
function visibleJobs() {
  return [...state.jobs.values()]
    .filter((job) => !state.filter || job.state.status === state.filter)
    .filter((job) => !state.tag || job.tags.includes(state.tag))
    .sort((a, b) => (b.created_at || "").localeCompare(a.created_at || "") || b.name.localeCompare(a.name));
}
function progress(job) {
  const s = job.state;
  if (s.status !== "processing") return job.similarity_summary ? `similarity: ${job.similarity_summary}` : "";
  if (!s.metadata_stored) return "storing metadata…";
  return job.similarity_search ? "metadata stored · searching similar products…" : "metadata stored";
}
function card(job) {
  const title = job.title || job.name;
  const running = job.state.status === "processing" && !job.cancelling;
  return el("li", { class: "card", "data-workflow-id": job.workflow_id, "data-status": shownStatus(job) },
    el("a", { href: `#/job/${encodeURIComponent(job.workflow_id)}`, "aria-label": `Open ${title}` },
      image(job.url, title, "thumb")),
    el("div", { class: "body" },
      el("h3", { class: "title", text: title }),
      el("div", { class: "meta" }, badge(job), el("span", { text: age(job.created_at) })),
      el("div", { class: "meta progress", text: progress(job) }),
      job.tags.length ? el("ul", { class: "tags" }, job.tags.map((t) => el("li", { text: t }))) : null,
      running ? el("button", { type: "button", class: "danger cancel", onclick: () => cancel(job.workflow_id), text: "Cancel" }) : null,
      retryable(job) ? el("button", { type: "button", class: "retry", onclick: () => retry(job.workflow_id), text: "Retry" }) : null));
}
function renderGallery() {
  const jobs = visibleJobs();
  $("#cancel-shown").hidden = !jobs.some((job) => job.state.status === "processing" && !job.cancelling);
  const main = $("#main");
  if (!jobs.length) {
    main.replaceChildren(el("p", { class: "empty", text: state.filter ? `No ${state.filter} jobs.` : "No jobs yet. Submit an image with “New job”." }));
    return;
  }
  const more = state.next ? [el("button", { type: "button", class: "more", onclick: () => loadList(true), text: "Load more" })] : [];
  main.replaceChildren(el("ul", { class: "grid", id: "gallery" }, jobs.map(card)), ...more);
}

// ---- one job -------------------------------------------------------------------------------
async function renderJob(workflowId) {
  let job = state.jobs.get(workflowId);
  if (!job) {
    try {
      job = await api(`/images/workflow/${encodeURIComponent(workflowId)}`);
      state.jobs.set(workflowId, job);
    } catch (error) {
      showError(error.status === 404 ? "No such job." : `Cannot load the job: ${error.message}`, () => renderJob(workflowId));
      return;
    }
  }
  const path = `/images/workflow/${encodeURIComponent(workflowId)}`;
  const [timeline, result] = await Promise.all([
    api(`${path}/timeline`).catch(() => null),
    job.state.status === "processing" ? null : api(`${path}/result?timeout=0`).catch(() => null),
  ]);
  if (currentRoute().job !== workflowId) return;
  const title = job.title || job.name;
  const running = job.state.status === "processing" && !job.cancelling;
  const temporal = state.config.temporal_ui_url
    ? `${state.config.temporal_ui_url.replace(/\/$/, "")}/namespaces/${encodeURIComponent(state.config.temporal_namespace)}/workflows/${encodeURIComponent(workflowId)}`
    : null;
  const products = result?.similarity?.products || [];
  $("#main").replaceChildren(el("article", { class: "job", "data-workflow-id": workflowId, "data-status": shownStatus(job) },
    el("div", {}, image(job.url, title, "hero")),
    el("div", { class: "details" },
      el("p", {}, el("a", { href: "#/", text: "← All jobs" })),
      el("h1", { class: "title", text: title }),
      el("p", { class: "meta" }, badge(job), el("span", { text: age(job.created_at) })),
      job.state.error ? el("p", { class: "error", role: "alert", text: job.state.error }) : null,
      el("dl", {},
        el("dt", { text: "Description" }), el("dd", { class: "description", text: job.description || "—" }),
        el("dt", { text: "Tags" }), el("dd", {}, job.tags.length ? el("ul", { class: "tags" }, job.tags.map((t) => el("li", { text: t }))) : "—"),
        el("dt", { text: "Image" }), el("dd", {}, httpUrl(job.url) ? el("a", { href: job.url, rel: "noopener noreferrer", target: "_blank", text: job.url }) : job.url),
        el("dt", { text: "Image id" }), el("dd", { text: job.state.image_id || "—" }),
        el("dt", { text: "Workflow" }), el("dd", {}, temporal ? el("a", { href: temporal, class: "temporal-link", rel: "noopener noreferrer", target: "_blank", text: workflowId }) : workflowId)),
      running ? el("button", { type: "button", class: "danger cancel", onclick: () => cancel(workflowId), text: "Cancel job" }) : null,
      retryable(job) ? el("button", { type: "button", class: "retry", onclick: () => retry(workflowId), text: "Retry from the failed step" }) : null,
      el("h2", { text: "Steps" }),
      el("ol", { class: "timeline" }, (timeline?.steps || []).map((step) =>
        el("li", { "data-step": step.step }, el("span", { text: step.step.replaceAll("_", " ") }),
          el("time", { datetime: step.at, text: new Date(step.at).toLocaleTimeString() })))),
      job.similarity_search ? el("h2", { text: "Similar products" }) : null,
      job.similarity_search && !products.length
        ? el("p", { class: "empty", text: result?.similarity_skipped ? `Search skipped: ${result.similarity_skipped}` : (job.state.status === "processing" ? "Searching…" : "No similar products.") })
        : null,
      products.length ? el("ul", { class: "products" }, products.map(product)) : null)));
}
function product(p) {
  const shop = httpUrl(p.url);
  const name = el("strong", { text: p.name });
  return el("li", { class: "product" },
    image(p.matching_image, p.name),
    el("div", {},
      shop ? el("a", { href: shop, rel: "noopener noreferrer", target: "_blank" }, name) : name,
      p.brand_name || p.vendor ? el("span", { class: "meta", text: p.brand_name || p.vendor }) : null,
      p.price ? el("span", { class: "price" }, p.reduced_price || p.price, p.reduced_price ? el("s", { text: p.price }) : null) : null));
}
async function cancel(workflowId) {
  try {
    await api(`/images/workflow/${encodeURIComponent(workflowId)}/cancel`, { method: "POST" });
    const job = state.jobs.get(workflowId);
    if (job) upsert(Object.assign({}, job, { cancelling: true }));
  } catch (error) {
    notice(`Cannot cancel: ${error.message}`);
  }
}

async function retry(workflowId) {
  try {
    const done = await api(`/images/workflow/${encodeURIComponent(workflowId)}/retry`, { method: "POST" });
    // Unless the job's new state already arrived on the event stream.
    const job = state.jobs.get(workflowId);
    if (job && retryable(job)) upsert(Object.assign({}, job, { retrying: true }));
    notice(`Attempt ${done.attempt} started`);
  } catch (error) {
    notice(`Cannot retry: ${error.message}`);
  }
}

// Cancels every running job the filters show, page by page, as the bulk endpoint does.
async function cancelShown() {
  const params = new URLSearchParams({ status: "processing", limit: 500 });
  if (state.tag) params.set("tag", state.tag);
  let cancelled = 0;
  try {
    for (;;) {
      const done = await api(`/images/workflows/cancel?${params}`, { method: "POST" });
      cancelled += done.count;
      for (const id of done.workflow_ids) {
        const job = state.jobs.get(id);
        if (job) upsert(Object.assign({}, job, { cancelling: true }));
      }
      if (!done.continue) break;
      params.set("continue", done.continue);
    }
    notice(`${cancelled} job${cancelled === 1 ? "" : "s"} cancelling`);
  } catch (error) {
    notice(`Cannot cancel: ${error.message}`);
  }
}

// ---- submitting ----------------------------------------------------------------------------
function openSubmit() {
  $("#submit-error").hidden = true;
  $("#submit-dialog").showModal();
}
async function submit(event) {
  event.preventDefault();
  const form = event.target;
  for (const input of form.elements) input.removeAttribute("aria-invalid");
  const tags = form.elements.tags.value.split(",").map((t) => t.trim()).filter(Boolean);
  const body = { url: form.elements.url.value.trim(), similarity_search: form.elements.similarity_search.checked, tags };
  if (form.elements.title.value.trim()) body.title = form.elements.title.value.trim();
  if (form.elements.description.value.trim()) body.description = form.elements.description.value.trim();
  try {
    await api("/images/process", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    form.reset();
    $("#submit-dialog").close();
    location.hash = "#/";
  } catch (error) {
    const box = $("#submit-error");
    box.textContent = error.message;
    box.hidden = false;
    const field = (error.field || "").split(/[.[]/)[0];
    if (form.elements[field]) form.elements[field].setAttribute("aria-invalid", "true");
  }
}

// ---- routing and start ---------------------------------------------------------------------
function currentRoute() {
  const match = location.hash.match(/^#\/job\/(.+)$/);
  return { job: match ? decodeURIComponent(match[1]) : null };
}
function route() {
  const { job } = currentRoute();
  if (job) renderJob(job);
  else renderGallery();
}
async function start() {
  state.token = sessionStorage.getItem("imagejob-token");
  state.config = await fetch("config.json").then((r) => r.json()).catch(() => state.config);
  $("#filter").addEventListener("change", (event) => {
    state.filter = STATUSES.includes(event.target.value) ? event.target.value : "";
    location.hash = "#/";
    loadList();
  });
  $("#tag-filter").addEventListener("change", (event) => {
    state.tag = event.target.value.trim();
    location.hash = "#/";
    loadList();
  });
  $("#cancel-shown").addEventListener("click", cancelShown);
  $("#new-job").addEventListener("click", openSubmit);
  $("#submit-cancel").addEventListener("click", () => $("#submit-dialog").close());
  $("#submit-form").addEventListener("submit", submit);
  window.addEventListener("hashchange", route);
  setInterval(() => { if (!currentRoute().job) renderGallery(); }, 30000); // ages only; data is pushed
  listen();
}
start();
