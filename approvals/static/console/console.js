// The HIL console: the handover queue, a conversation, the approvals inbox. Reads and acts through the
// API (as the signed-in member); hears every change on one WebSocket and resumes from the last seq it saw.
"use strict";

const boot = JSON.parse(document.getElementById("boot").textContent);
const $ = (selector, root = document) => root.querySelector(selector);
const state = {
  tab: "queue",
  tickets: new Map(boot.tickets.map((t) => [t.id, t])),
  approvals: new Map(boot.approvals.map((a) => [a.id, a])),
  seq: boot.seq,            // the last desk event applied
  selected: null,           // the id under the cursor in the list
  open: null,               // {kind: "ticket"|"approval"|"ask"|"documents", id, watched: {conversation, run}}
  runSeq: 0,                // the last run event shown in the open conversation's timeline
  messages: new Map(),      // the open conversation's messages by id
  presence: {},             // socket -> {user, ticket, typing}: everyone online
  socket: null,
};

// ---------- the API ----------

function csrf() {
  return (document.cookie.match(/(?:^|; )csrftoken=([^;]+)/) || [])[1] || "";
}

async function api(method, path, body) {
  const form = body instanceof FormData;  // a file upload: multipart, its boundary set by the browser
  const response = await fetch(`/api/v1/${path}`, {
    method, credentials: "same-origin",
    headers: form ? {"X-CSRFToken": csrf()} : {"Content-Type": "application/json", "X-CSRFToken": csrf()},
    body: body === undefined || form ? body : JSON.stringify(body),
  });
  const data = response.status === 204 ? null : await response.json().catch(() => ({}));
  if (!response.ok) {
    const detail = data && (data.detail || JSON.stringify(data));
    throw new Error(detail || `${response.status} ${response.statusText}`);
  }
  return data;
}

function toast(text, kind = "info") {
  const el = $("#toast");
  el.textContent = text;
  el.className = `toast ${kind}`;
  el.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 5000);
}

async function act(what, fn) {
  try {
    return await fn();
  } catch (error) {
    toast(`${what}: ${error.message}`, "error");
    return null;
  }
}

// ---------- rendering helpers ----------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") el.className = value;
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function since(iso) {
  const s = Math.max(0, Math.floor((Date.now() - Date.parse(iso)) / 1000));
  const hours = Math.floor(s / 3600), minutes = Math.floor((s % 3600) / 60), seconds = s % 60;
  return hours ? `${hours}h ${String(minutes).padStart(2, "0")}m` : `${minutes}:${String(seconds).padStart(2, "0")}`;
}

function json(value) {
  return JSON.stringify(value, null, 2);
}

// ---------- results: SQL results as a table and a chart, passages with what the reply cited marked ----------

function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, value);
  for (const child of children) el.append(child instanceof Node ? child : String(child));
  return el;
}

function resultTable(result, max = 50) {
  return h("div", {class: "result"},
    h("table", {}, h("thead", {}, h("tr", {}, result.columns.map((c) => h("th", {}, c)))),
      h("tbody", {}, result.rows.slice(0, max).map((row) => h("tr", {}, row.map((v) => h("td", {}, v ?? "")))))),
    result.rows.length > max ? h("p", {class: "hint"}, `First ${max} of ${result.rows.length} rows.`) : null);
}

// The chart the server chose for a result (core/charts.py draws the same for the admin): bars or a line.
function resultChart(spec, columns, rows) {
  return plot(rows.map((r) => String(r[spec.x])), {[columns[spec.y]]: rows.map((r) => Number(r[spec.y]) || 0)},
    {kind: spec.type, title: `${columns[spec.y]} by ${columns[spec.x]}`});
}

// A chart of one or more series over `labels`, as core/charts.py's plot(): bars (of the first series) or a line per
// series with a legend when there are several; a null leaves a gap; `rule` draws a dashed line at that value.
function plot(labels, series, {kind = "line", title, rule = null, width = 520, height = 220}) {
  const all = Object.values(series).flat().filter((v) => v !== null);
  const top = Math.max(...all, rule || 0, 0) || 1, left = 48, base = height - 30, step = (width - 58) / labels.length;
  const y = (v) => base - (base - 40) * Math.max(v, 0) / top, x = (i) => left + (i + 0.5) * step;
  const names = Object.keys(series), marks = [];
  if (kind === "bar") {
    series[names[0]].forEach((v, i) => marks.push(svg("rect", {x: left + (i + 0.1) * step, y: y(v || 0),
      width: step * 0.8, height: base - y(v || 0)}, svg("title", {}, `${labels[i]}: ${v}`))));
  } else {
    names.forEach((name, n) => {
      let run = [];
      for (const [i, v] of [...series[name], null].entries()) {
        if (v !== null) { run.push([x(i), y(v)]); continue; }
        if (run.length > 1) marks.push(svg("polyline", {class: `s${n}`, points: run.map((p) => p.join(",")).join(" ")}));
        else if (run.length) marks.push(svg("circle", {class: `s${n}`, cx: run[0][0], cy: run[0][1], r: 2.5}));
        run = [];
      }
    });
  }
  const legend = names.length > 1 ? names.flatMap((name, n) => [
    svg("rect", {class: `s${n}`, x: left + 110 * n, y: 20, width: 9, height: 9}),
    svg("text", {x: left + 110 * n + 12, y: 28}, name.slice(0, 16))]) : [];
  if (rule !== null) legend.push(svg("line", {class: "rule", x1: left, y1: y(rule), x2: width - 10, y2: y(rule)}));
  const every = Math.max(1, Math.floor(labels.length / 8));
  return svg("svg", {class: `chart ${kind}`, role: "img", viewBox: `0 0 ${width} ${height}`, width, height},
    svg("title", {}, title), svg("text", {class: "title", x: 4, y: 12}, title),
    svg("text", {x: left - 4, y: 44, "text-anchor": "end"}, top.toLocaleString()),
    svg("line", {x1: left, y1: base, x2: width - 10, y2: base}), ...marks, ...legend,
    ...labels.map((label, i) => [label, i]).filter(([, i]) => i % every === 0).map(([label, i]) => svg("text",
      {x: x(i), y: base + 16, "text-anchor": "middle"}, label.slice(0, 12))));
}

// A passage, each cited quote in it marked.
function marked(text, quotes) {
  const spans = quotes.filter((q) => q && text.includes(q)).map((q) => [text.indexOf(q), text.indexOf(q) + q.length])
    .sort((a, b) => a[0] - b[0]);
  const parts = [];
  let at = 0;
  for (const [start, end] of spans) {
    if (start < at) continue;
    parts.push(text.slice(at, start), h("mark", {}, text.slice(start, end)));
    at = end;
  }
  parts.push(text.slice(at));
  return parts;
}

function renderArtifact(data) {
  const results = $("#results");
  if (!results) return;
  if (data.kind === "sql_result") {
    results.append(h("figure", {class: "sql"}, h("figcaption", {}, h("code", {}, data.sql),
      ` · ${data.row_count} row(s)${data.truncated ? ", more not fetched" : ""} · ${data.ms} ms`),
    data.chart ? resultChart(data.chart, data.columns, data.rows) : null, resultTable(data)));
  } else if (data.kind === "snippets") {
    results.append(h("ol", {class: "snippets"}, data.snippets.map((s) => h("li", {"data-chunk": s.chunk},
      h("b", {}, `${s.title}${s.heading ? " › " + s.heading : ""}`), h("p", {}, s.text)))));
  } else if (data.kind === "citations") {
    for (const li of results.querySelectorAll(".snippets li")) {
      const quotes = data.citations.filter((c) => String(c.chunk) === li.dataset.chunk).map((c) => c.quote);
      if (quotes.length) li.querySelector("p").replaceChildren(...marked(li.querySelector("p").textContent, quotes));
    }
  }
}

// ---------- the list: queue and approvals ----------

function visibleItems() {
  if (state.tab === "ask") return boot.workflows;
  if (state.tab === "documents") return boot.sources || [];
  if (state.tab === "dashboard") return [{id: "", name: "All workflows"}, ...boot.workflows];
  if (state.tab === "approvals") {
    return [...state.approvals.values()].filter(mayDecide).sort((a, b) => a.created_at.localeCompare(b.created_at));
  }
  const workflow = $("#f-workflow").value, reason = $("#f-reason").value.toLowerCase(), mine = $("#f-mine").checked;
  return [...state.tickets.values()]
    .filter((t) => (!workflow || t.workflow === workflow) && (!reason || t.reason.toLowerCase().includes(reason))
      && (!mine || t.assignee === boot.me))
    .sort((a, b) => a.created_at.localeCompare(b.created_at));  // the longest waiting first
}

function viewersOf(ticketId) {
  return Object.values(state.presence).filter((p) => p.ticket === ticketId && p.user !== boot.me);
}

function renderList() {
  $("#n-queue").textContent = [...state.tickets.values()].filter((t) => t.status === "open").length;
  $("#n-approvals").textContent = [...state.approvals.values()].filter(mayDecide).length;
  const workflows = new Set([...state.tickets.values()].map((t) => t.workflow));
  const select = $("#f-workflow");
  for (const workflow of workflows) {
    if (![...select.options].some((o) => o.value === workflow)) select.append(h("option", {value: workflow}, workflow));
  }
  const items = visibleItems();
  if (!items.some((item) => item.id === state.selected)) state.selected = items.length ? items[0].id : null;
  $("#filters").hidden = state.tab !== "queue";
  const row = {queue: ticketRow, approvals: approvalRow, ask: workflowRow, documents: sourceRow,
    dashboard: (w) => namedRow(w.id, w.name, w.id ? w.id : "the tenant as a whole")}[state.tab];
  $("#list").replaceChildren(...items.map(row));
  if (!items.length) {
    $("#list").append(h("li", {class: "empty"}, {queue: "No one is waiting.", approvals: "Nothing to decide.",
      ask: "No workflow is live.", documents: "No knowledge source yet (the admin makes them)."}[state.tab]));
  }
}

// A row of the list: selected under the cursor, marked when it is the one open; a click opens it.
function listRow(id, ...children) {
  return h("li", {
    class: `row ${id === state.selected ? "selected" : ""} ${state.open && state.open.id === id ? "opened" : ""}`,
    "data-id": id, onclick: () => { state.selected = id; openSelected(); },
  }, ...children);
}

function ticketRow(t) {
  const viewers = viewersOf(t.id);
  return listRow(t.id,
    h("div", {class: "row-top"},
      h("span", {class: "workflow"}, t.workflow),
      h("span", {class: "sla", "data-since": t.created_at, title: "Waiting since the handover"}, since(t.created_at))),
    h("div", {class: "reason"}, t.reason),
    h("div", {class: "row-bottom"},
      t.assignee ? h("span", {class: `badge ${t.assignee === boot.me ? "mine" : "taken"}`},
        t.assignee === boot.me ? "yours" : `${t.assignee} has it`) : h("span", {class: "badge open"}, "open"),
      viewers.length ? h("span", {class: "viewers"}, `👀 ${viewers.map((v) => v.user).join(", ")}`) : null));
}

function approvalRow(a) {
  return listRow(a.id,
    h("div", {class: "row-top"}, h("span", {class: "workflow"}, a.node),
      h("span", {class: "sla", "data-since": a.created_at}, since(a.created_at))),
    h("div", {class: "reason"}, a.title, a.quorum > 1 ? h("span", {class: "quorum"}, ` · ${quorum(a)}`) : null));
}

// A live workflow (Ask) or a knowledge source (Documents): a name and a line about it.
function namedRow(id, name, about) {
  return listRow(id, h("div", {class: "row-top"}, h("span", {class: "workflow"}, name)),
    h("div", {class: "reason"}, about));
}

const workflowRow = (w) => namedRow(w.id, w.id, w.name);
const sourceRow = (s) => namedRow(s.id, s.name, s.description);

// Whether the inbox lists it: what the member's role may decide (a viewer, who decides nothing, sees it all).
function mayDecide(a) {
  return !boot.may_act || !a.approver_role || boot.decides.includes(a.approver_role);
}

// "1 of 2 approvals (ann)": how far an approval that needs several people has come.
function quorum(a) {
  return `${a.votes.length} of ${a.quorum} approvals${a.votes.length ? ` (${a.votes.join(", ")})` : ""}`;
}

function move(step) {
  const items = visibleItems();
  if (!items.length) return;
  const at = items.findIndex((item) => item.id === state.selected);
  state.selected = items[Math.min(items.length - 1, Math.max(0, at + step))].id;
  renderList();
  const row = $(`#list [data-id="${state.selected}"]`);
  if (row) row.scrollIntoView({block: "nearest"});
}

function switchTab(tab) {
  state.tab = tab;
  for (const button of document.querySelectorAll("[data-tab]")) {
    button.setAttribute("aria-selected", button.dataset.tab === tab);
  }
  state.selected = null;
  renderList();
}

function openSelected() {
  if (state.selected === null) return;
  ({queue: openTicket, approvals: openApproval, ask: openAsk, documents: openSource, dashboard: openDashboard})[
    state.tab](state.selected);
  renderList();
}

// ---------- a conversation ----------

async function openTicket(id) {
  const ticket = await act("Opening the ticket", () => api("GET", `handovers/${id}/`));
  if (!ticket) return;
  state.open = {kind: "ticket", id, ticket, watched: {conversation: ticket.conversation, run: ticket.run}};
  state.messages = new Map();
  state.runSeq = 0;
  const cf = ticket.case_file || {};
  const canned = h("select", {id: "canned", "aria-label": "Canned reply", onchange: (e) => {
    const reply = $("#reply");
    reply.value = (reply.value ? reply.value + "\n" : "") + e.target.value;
    e.target.selectedIndex = 0;
    reply.focus();
  }}, h("option", {value: ""}, "Canned reply…"), boot.canned.map((c) => h("option", {value: c.text}, c.title)));
  $("#detail").replaceChildren(
    h("section", {class: "conversation"},
      h("div", {class: "actions"},
        h("h2", {}, ticket.reason),
        h("span", {id: "holder", class: "holder"}),
        h("button", {id: "claim", "data-action": "claim", title: "c"}, "Claim"),
        h("button", {id: "return", "data-action": "return", title: "t"}, "Return to AI")),
      h("ol", {id: "transcript", class: "transcript"}),
      h("div", {id: "typing", class: "typing"}),
      h("form", {id: "reply-form", class: "reply", onsubmit: (e) => { e.preventDefault(); sendReply(); }},
        h("textarea", {id: "reply", rows: 3, placeholder: "Reply to the customer (r, then Ctrl+Enter to send)",
          "aria-label": "Reply", oninput: typing}),
        h("div", {class: "reply-bar"}, canned, h("button", {type: "submit"}, "Send"))),
      h("h3", {}, "Private notes"),
      h("ol", {id: "notes", class: "notes"}),
      h("form", {class: "reply", onsubmit: (e) => { e.preventDefault(); addNote(); }},
        h("textarea", {id: "note", rows: 2, placeholder: "A note for the team (n; never sent to the customer)",
          "aria-label": "Private note"}),
        h("div", {class: "reply-bar"}, h("button", {type: "submit"}, "Add note")))),
    h("aside", {class: "casefile"},
      h("h3", {}, "Case file"),
      h("dl", {},
        h("dt", {}, "Goal"), h("dd", {}, cf.goal || "—"),
        h("dt", {}, "Reason for handover"), h("dd", {}, cf.reason || ticket.reason),
        h("dt", {}, "Promises made"), h("dd", {}, (cf.promises || []).length ? h("ul", {}, cf.promises.map((p) => h("li", {}, p))) : "none"),
        h("dt", {}, "Facts"), h("dd", {}, h("pre", {}, json(cf.facts || {}))),
        h("dt", {}, "Tool calls"), h("dd", {}, (cf.tool_calls || []).length
          ? h("ul", {}, cf.tool_calls.map((c) => h("li", {}, `${c.tool} (${c.status})`, h("pre", {}, json(c.args))))) : "none")),
      h("h3", {}, "Results"),
      h("div", {id: "results", class: "results"}),
      h("h3", {}, "Timeline"),
      h("ol", {id: "timeline", class: "timeline"})));
  renderHolder();
  watch();
  loadNotes();
  presence({ticket: id, typing: false});
}

function renderHolder() {
  if (!state.open || state.open.kind !== "ticket") return;
  const live = state.tickets.get(state.open.id);
  const status = live ? live.status : "closed", assignee = live ? live.assignee : null;
  $("#holder").textContent = status === "closed" ? "Back with the AI"
    : assignee ? (assignee === boot.me ? "You have it" : `${assignee} has it`) : "Waiting for someone";
  $("#claim").disabled = !boot.may_act || status !== "open";
  const mine = status === "claimed" && assignee === boot.me;
  $("#return").disabled = !mine;
  $("#reply").disabled = !mine;
  $("#reply-form button").disabled = !mine;
}

function renderMessages(messages) {
  for (const m of messages) state.messages.set(m.id, m);
  const transcript = $("#transcript");
  if (!transcript) return;
  transcript.replaceChildren(...[...state.messages.values()].map((m) => h("li", {class: `msg ${m.role}`},
    h("span", {class: "who"}, m.role === "user" ? "Customer" : m.role === "ai" ? "AI" : (m.author || "Human")),
    h("p", {}, m.text))));
  transcript.scrollTop = transcript.scrollHeight;
}

function renderRunEvent(event) {
  if (event.seq <= state.runSeq) return;  // seen already: never twice
  state.runSeq = event.seq;
  const timeline = $("#timeline");
  if (!timeline) return;
  const detail = event.data.node || event.data.reason || event.data.by || event.data.decision || "";
  timeline.append(h("li", {"data-seq": event.seq},
    h("span", {class: "seq"}, event.seq), h("span", {class: "type"}, event.type),
    h("span", {class: "data"}, typeof detail === "string" ? detail : "")));
  if (event.type === "artifact") renderArtifact(event.data);
}

async function claim() {
  if (!state.open || state.open.kind !== "ticket") return;
  const done = await act("Claim", () => api("POST", `handovers/${state.open.id}/claim/`, {lease: true}));
  if (!done) return;
  state.tickets.set(done.id, {...state.tickets.get(done.id), status: done.status, assignee: done.assignee});
  renderHolder();
  renderList();
  $("#reply").focus();
}

async function sendReply() {
  const text = $("#reply").value.trim();
  if (!text || !state.open) return;
  const sent = await act("Reply", () => api("POST", `handovers/${state.open.id}/reply/`, {text}));
  if (sent) { $("#reply").value = ""; renderMessages([sent]); presence({ticket: state.open.id, typing: false}); }
}

async function returnToAi() {
  if (!state.open || state.open.kind !== "ticket") return;
  const done = await act("Return to AI", () => api("POST", `handovers/${state.open.id}/return-to-ai/`));
  if (done) { state.tickets.delete(done.id); renderHolder(); renderList(); toast("Returned to the AI"); }
}

async function loadNotes() {
  const id = state.open.id;
  const notes = await act("Notes", () => api("GET", `handovers/${id}/notes/?limit=500`));
  if (!notes || !state.open || state.open.id !== id) return;
  $("#notes").replaceChildren(...notes.results.map((n) => h("li", {}, h("span", {class: "who"}, n.author), " ", n.text)));
}

async function addNote() {
  const text = $("#note").value.trim();
  if (!text || !state.open) return;
  if (await act("Note", () => api("POST", `handovers/${state.open.id}/notes/`, {text}))) {
    $("#note").value = "";
    loadNotes();
  }
}

function typing() {
  const now = Date.now();
  if (now - (typing.last || 0) < 2000) return;  // at most one signal every 2 s
  typing.last = now;
  presence({ticket: state.open.id, typing: true});
  clearTimeout(typing.stop);
  typing.stop = setTimeout(() => { typing.last = 0; presence({ticket: state.open && state.open.id, typing: false}); }, 4000);
}

function renderTyping() {
  const el = $("#typing");
  if (!el || !state.open) return;
  const others = viewersOf(state.open.id).filter((p) => p.typing).map((p) => p.user);
  el.textContent = others.length ? `${others.join(", ")} ${others.length > 1 ? "are" : "is"} typing…` : "";
}

// ---------- asking a workflow, as a customer would ----------

function openAsk(slug) {
  state.open = {kind: "ask", id: slug, conversation: null, watched: null};
  state.messages = new Map();
  $("#detail").replaceChildren(
    h("section", {class: "conversation"},
      h("div", {class: "actions"}, h("h2", {}, `Ask ${slug}`)),
      h("ol", {id: "transcript", class: "transcript"}),
      h("form", {class: "reply", onsubmit: (e) => { e.preventDefault(); ask(); }},
        h("textarea", {id: "question", rows: 2, "aria-label": "Question",
          placeholder: "Ask as a customer would (Ctrl+Enter to send)"}),
        h("div", {class: "reply-bar"}, h("button", {type: "submit", disabled: !boot.may_act}, "Ask")))),
    h("aside", {class: "casefile"},
      h("h3", {}, "Results"), h("div", {id: "results", class: "results"}),
      h("h3", {}, "Timeline"), h("ol", {id: "timeline", class: "timeline"})));
  $("#question").focus();
}

async function ask() {
  const open = state.open, text = $("#question").value.trim();
  if (!text || !open || open.kind !== "ask") return;
  if (!open.conversation) {
    const started = await act("Ask", () => api("POST", "conversations/", {workflow: open.id}));
    if (!started) return;
    open.conversation = started.id;
  }
  const turn = `console-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const posted = await act("Ask", () => api("POST", `conversations/${open.conversation}/messages/`, {text, turn_id: turn}));
  if (!posted || state.open !== open) return;
  $("#question").value = "";
  open.watched = {conversation: open.conversation, run: posted.run.id};  // each turn is a run of its own
  state.runSeq = 0;
  $("#results").replaceChildren();
  $("#timeline").replaceChildren();
  watch();
}

// ---------- a knowledge source's documents: upload, and each one's ingestion as it goes ----------

function openSource(id) {
  const source = (boot.sources || []).find((s) => s.id === id);
  if (!source) return;
  state.open = {kind: "documents", id, watched: null, shown: new Set()};
  const input = h("input", {type: "file", id: "upload", multiple: true, accept: ".txt,.md,.markdown,.html,.htm,.pdf",
    "aria-label": "Documents to upload", onchange: () => { upload(input.files); input.value = ""; }});
  const drop = h("label", {class: "drop", for: "upload",
    ondragover: (e) => { e.preventDefault(); drop.classList.add("over"); },
    ondragleave: () => drop.classList.remove("over"),
    ondrop: (e) => { e.preventDefault(); drop.classList.remove("over"); upload(e.dataTransfer.files); },
  }, input, "Drop text, Markdown, HTML or PDF files here, or press ", h("kbd", {}, "u"), " to choose them.");
  $("#detail").replaceChildren(h("section", {class: "documents"},
    h("div", {class: "actions"}, h("h2", {}, source.name)), drop,
    h("table", {class: "docs"}, h("thead", {}, h("tr", {}, ["Document", "Type", "Status", "Chunks", ""].map(
      (c) => h("th", {}, c)))), h("tbody", {id: "docs"}))));
  refreshDocuments(state.open);
}

async function upload(files) {
  const open = state.open;
  if (!open || open.kind !== "documents") return;
  for (const file of files) {
    const form = new FormData();
    form.append("file", file);
    const added = await act(`Uploading ${file.name}`, () => api("POST", `knowledge-sources/${open.id}/documents/`, form));
    if (added && open.shown.has(added.id)) toast(`${file.name}: already uploaded, as "${added.title}"`);
  }
  refreshDocuments(open);
}

// The documents as the API has them, again every second while one is still being ingested and the source is open.
async function refreshDocuments(open) {
  clearTimeout(refreshDocuments.timer);
  const documents = await act("Documents", () => api("GET", `knowledge-sources/${open.id}/documents/`));
  if (!documents || state.open !== open) return;
  open.shown = new Set(documents.map((d) => d.id));
  $("#docs").replaceChildren(...documents.map((d) => h("tr", {"data-document": d.id, class: d.status},
    h("td", {}, d.title), h("td", {}, d.media_type),
    h("td", {}, h("progress", {max: 100, value: d.progress, "aria-label": `${d.title}: ${d.progress}%`}),
      ` ${d.status === "ingesting" ? d.progress + "%" : d.status}`),
    h("td", {}, d.chunks_total ? `${d.chunks_done} / ${d.chunks_total}` : ""),
    h("td", {class: "error"}, d.error))));
  if (!documents.length) $("#docs").append(h("tr", {}, h("td", {colspan: 5, class: "empty"}, "No document yet.")));
  if (documents.some((d) => d.status === "queued" || d.status === "ingesting")) {
    refreshDocuments.timer = setTimeout(() => refreshDocuments(open), 1000);
  }
}

// ---------- an approval ----------

function openApproval(id) {
  const a = state.approvals.get(id);
  if (!a) return;
  state.open = {kind: "approval", id};
  presence({ticket: null, typing: false});
  const form = schemaForm(a.schema || {}, a.payload);  // without a schema: the payload as JSON
  $("#detail").replaceChildren(h("section", {class: "approval"},
    h("h2", {}, a.title),
    h("p", {class: "hint"}, `Node ${a.node} · run ${a.run} · expires ${new Date(a.expires_at).toLocaleString()}`
      + (a.approver_role ? ` · for ${a.approver_role}s and above` : "")),
    a.quorum > 1 ? h("p", {id: "quorum", class: "quorum"}, quorum(a)) : null,
    h("div", {id: "decided", class: "decided", hidden: true}),
    h("h3", {}, "What will happen"),
    a.preview ? preview(a.preview) : null,
    h("pre", {class: "payload"}, json(a.payload)),
    a.quorum > 1 ? null : h("h3", {}, "Edit before approving"),
    a.quorum > 1 ? null : form,  // several approvers approve the same arguments: no edits
    h("div", {id: "diff", class: "diff"}),
    h("label", {}, "Comment", h("textarea", {id: "comment", rows: 2, "aria-label": "Comment"})),
    h("div", {class: "actions"},
      h("button", {"data-action": "approve", title: "a", disabled: !boot.may_act}, "Approve"),
      a.quorum > 1 ? null : h("button", {"data-action": "edit", title: "e", disabled: !boot.may_act}, "Approve with edits"),
      h("button", {"data-action": "reject", class: "danger", title: "x", disabled: !boot.may_act}, "Reject"))));
  form.addEventListener("input", renderDiff);
  if (a.quorum <= 1) renderDiff();
}

// What a call would do: a SQL dry run's rows as a table, anything else as JSON.
function preview(p) {
  const dry = p.dry_run;
  if (!dry || !Array.isArray(dry.columns)) return h("pre", {class: "preview"}, json(p));
  return h("div", {class: "preview"},
    h("p", {}, h("b", {}, `Would change ${dry.rows_affected} row(s)`), ` (dry run, rolled back, ${dry.ms} ms):`),
    h("pre", {}, dry.sql), dry.columns.length ? resultTable(dry) : null);
}

// A form for an object schema's fields (string, number, integer, boolean, enum); anything else as JSON.
function schemaForm(schema, payload) {
  const form = h("form", {id: "edit-form", class: "schema-form", novalidate: true, onsubmit: (e) => e.preventDefault()});
  const properties = schema.type === "object" && schema.properties ? schema.properties : null;
  if (!properties) {
    form.append(h("textarea", {name: "$json", rows: 8, "aria-label": "Payload (JSON)"}, json(payload)));
    return form;
  }
  const required = new Set(schema.required || []);
  for (const [name, prop] of Object.entries(properties)) {
    const value = payload[name], label = prop.title || name;
    let input;
    if (prop.enum) {
      input = h("select", {name}, prop.enum.map((option) => h("option", {value: JSON.stringify(option), selected: option === value}, String(option))));
    } else if (prop.type === "boolean") {
      input = h("input", {type: "checkbox", name, checked: value === true});
    } else if (prop.type === "number" || prop.type === "integer") {
      input = h("input", {type: "number", name, value: value ?? "", step: prop.type === "integer" ? 1 : "any",
        min: prop.minimum, max: prop.maximum, required: required.has(name)});
    } else if (prop.type === "string") {
      input = h("input", {type: "text", name, value: value ?? "", minlength: prop.minLength, maxlength: prop.maxLength,
        pattern: prop.pattern, required: required.has(name)});
    } else {
      input = h("textarea", {name, rows: 3, "data-json": true}, json(value ?? null));
    }
    form.append(h("label", {}, label, prop.description ? h("small", {}, prop.description) : null, input,
      h("span", {class: "field-error", "data-for": name})));
  }
  return form;
}

// The edited payload, or throws with what is wrong (the server validates against the same schema again).
function editedPayload() {
  const approval = state.approvals.get(state.open.id), form = $("#edit-form");
  const whole = form.elements.namedItem("$json");
  if (whole) return JSON.parse(whole.value);
  const payload = {...approval.payload}, errors = [];
  for (const [name, prop] of Object.entries(approval.schema.properties)) {
    const input = form.elements.namedItem(name);
    const error = form.querySelector(`[data-for="${name}"]`);
    error.textContent = "";
    let value;
    if (input.tagName === "SELECT") value = JSON.parse(input.value);
    else if (input.type === "checkbox") value = input.checked;
    else if (input.type === "number") value = input.value === "" ? undefined : Number(input.value);
    else if (input.dataset.json !== undefined) {
      try { value = JSON.parse(input.value); } catch { errors.push(`${name}: not valid JSON`); error.textContent = "not valid JSON"; continue; }
    } else value = input.value;
    if (input.validity && !input.validity.valid) {
      error.textContent = input.validationMessage;
      errors.push(`${name}: ${input.validationMessage}`);
    } else if (prop.type === "integer" && value !== undefined && !Number.isInteger(value)) {
      error.textContent = "a whole number";
      errors.push(`${name}: a whole number`);
    }
    if (value === undefined) delete payload[name];
    else payload[name] = value;
  }
  if (errors.length) throw new Error(errors.join("; "));
  return payload;
}

function renderDiff() {
  const approval = state.approvals.get(state.open.id), diff = $("#diff");
  let edited;
  try { edited = editedPayload(); } catch (error) { diff.replaceChildren(h("p", {class: "error"}, error.message)); return; }
  const keys = new Set([...Object.keys(approval.payload), ...Object.keys(edited)]);
  const changes = [...keys].filter((k) => JSON.stringify(approval.payload[k]) !== JSON.stringify(edited[k]));
  diff.replaceChildren(changes.length
    ? h("ul", {}, changes.map((k) => h("li", {}, h("b", {}, k), ": ",
      h("del", {}, JSON.stringify(approval.payload[k]) ?? "—"), " → ", h("ins", {}, JSON.stringify(edited[k]) ?? "—"))))
    : h("p", {class: "hint"}, "No edits yet."));
}

async function decide(decision) {
  if (!state.open || state.open.kind !== "approval" || !boot.may_act) return;
  const body = {decision, comment: $("#comment").value};
  if (decision === "edit" && state.approvals.get(state.open.id).quorum > 1) {
    toast("Several people approve the same arguments: approve or reject them as they are", "error");
    return;
  }
  if (decision === "edit") {
    try { body.payload = editedPayload(); } catch (error) { toast(`Your edit: ${error.message}`, "error"); return; }
  }
  const id = state.open.id;
  const done = await act(decision === "reject" ? "Reject" : "Approve", () => api("POST", `approvals/${id}/decision/`, body));
  if (done && done.status === "pending") toast("Your approval is counted; it needs more people.");
  else if (done) { state.approvals.delete(id); showDecided(id, done.status, boot.me); renderList(); }
}

function showDecided(id, status, by) {
  if (!state.open || state.open.id !== id) return;
  const el = $("#decided");
  el.hidden = false;
  el.textContent = `Decided: ${status}${by ? ` by ${by}` : ""}.`;
  for (const button of document.querySelectorAll(".approval .actions button")) button.disabled = true;
}

// ---------- live: the socket ----------

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/ws/console/?after=${state.seq}`);
  state.socket = socket;
  socket.onopen = () => {
    $("#live").textContent = "live";
    $("#live").className = "live on";
    connect.backoff = 500;
    if (state.open && state.open.kind === "ticket") { watch(); presence({ticket: state.open.id, typing: false}); }
  };
  socket.onmessage = (message) => receive(JSON.parse(message.data));
  socket.onclose = (event) => {
    $("#live").textContent = "reconnecting…";
    $("#live").className = "live off";
    if (event.code === 4403) { location.reload(); return; }  // signed out or no longer a member: sign in again
    setTimeout(connect, connect.backoff = Math.min((connect.backoff || 500) * 2, 10000));
  };
}

function send(message) {
  if (state.socket && state.socket.readyState === WebSocket.OPEN) state.socket.send(JSON.stringify(message));
}

function watch() {
  const watched = state.open.watched;
  send({watch: {conversation: watched.conversation, run: watched.run, after: state.runSeq}});
}

function watching(what, id) {
  return Boolean(state.open && state.open.watched && state.open.watched[what] === id);
}

function presence(value) {
  send({presence: value});
}

function receive(message) {
  if (message.kind === "desk") applyDesk(message);
  else if (message.kind === "run" && watching("run", message.run)) renderRunEvent(message);
  else if (message.kind === "messages" && watching("conversation", message.conversation)) renderMessages(message.messages);
  else if (message.kind === "presence") {
    state.presence = message.all;
    renderPresence();
  } else if (message.kind === "error") toast(message.detail, "error");
}

function applyDesk(event) {
  if (event.seq <= state.seq) return;  // seen already (the page's first state, or before a reconnect)
  state.seq = event.seq;
  const data = event.data;
  if (event.type.startsWith("ticket.")) {
    if (data.status === "closed") state.tickets.delete(data.id);
    else state.tickets.set(data.id, data);
    if (state.open && state.open.id === data.id) renderHolder();
    if (event.type === "ticket.claimed" && data.assignee !== boot.me && state.open && state.open.id === data.id) {
      toast(`${data.assignee} claimed this ticket`);
    }
  } else if (event.type === "approval.requested" || event.type === "approval.voted") {
    state.approvals.set(data.id, data);
    if (event.type === "approval.voted" && state.open && state.open.id === data.id) $("#quorum").textContent = quorum(data);
  } else if (event.type === "approval.decided") {
    state.approvals.delete(data.id);
    showDecided(data.id, data.status, data.by);
  }
  renderList();
}

function renderPresence() {
  const users = [...new Set(Object.values(state.presence).map((p) => p.user))].sort();
  $("#online").replaceChildren(...users.map((user) => h("span", {class: "dot", title: `${user} is online`}, user)));
  renderList();
  renderTyping();
}

// ---------- the dashboard: read-only analytics of the tenant, or of one workflow ----------

const RANGES = ["1h", "6h", "24h", "7d", "30d", "90d"];
const LABEL = {minute: (d) => d.toISOString().slice(11, 16), hour: (d) => d.toISOString().slice(8, 13) + "h",
  day: (d) => d.toISOString().slice(5, 10)};

async function openDashboard(workflow, range = (state.open && state.open.range) || "24h") {
  const query = new URLSearchParams({range, ...(workflow ? {workflow} : {})});
  const data = await act("Reading the analytics", () => api("GET", `analytics/?${query}`));
  if (!data || state.tab !== "dashboard") return;
  state.open = {kind: "dashboard", id: workflow, range, watched: null};
  const points = data.series, labels = points.map((p) => LABEL[data.period](new Date(p.bucket)));
  const values = (name, scale = 1) => points.map((p) => p[name] === null ? null : Number(p[name]) * scale);
  const t = data.totals, share = (v) => v === null ? "—" : `${(v * 100).toFixed(1)}%`;
  const usd = (v) => v === null ? "—" : `$${Number(v).toFixed(2)}`;
  const tiles = [["Runs", t.runs], ["Success", share(t.success_rate)], ["Handover", share(t.handover_rate)],
    ["p50 / p95", `${t.p50_ms ?? "—"} / ${t.p95_ms ?? "—"} ms`], ["Cost per run", usd(t.cost_per_run)],
    ["Resolved by AI", t.finished], ["Hours saved", t.minutes_saved === null ? "—" : (t.minutes_saved / 60).toFixed(1)],
    ["CSAT", t.csat_score === null ? "—" : `${t.csat_score.toFixed(2)} / 5 (${t.csat_responses})`]];
  $("#detail").replaceChildren(h("section", {class: "dashboard"},
    h("div", {class: "actions"}, h("h2", {}, workflow || "All workflows"),
      h("span", {class: "ranges"}, RANGES.map((r) => h("button", {type: "button", class: r === range ? "on" : "",
        onclick: () => openDashboard(workflow, r)}, r))),
      h("span", {class: "hint"}, "[ and ] change the range · updated every minute")),
    h("div", {class: "tiles"}, tiles.map(([name, value]) => h("div", {class: "tile"}, name, h("b", {}, value)))),
    h("div", {class: "charts"},
      plot(labels, {ended: values("runs"), "handed over": values("handover"), failed: values("failed"),
        "resolved by AI": values("finished")}, {title: "Runs"}),
      plot(labels, {success: values("success_rate", 100), handover: values("handover_rate", 100)},
        {title: "Success and handover rate, %"}),
      plot(labels, {p50: values("p50_ms"), p95: values("p95_ms")}, {title: "Latency, ms"}),
      plot(labels, {"cost per run": values("cost_per_run")}, {title: "Cost per run, USD"}),
      plot(labels, {CSAT: values("csat_score")}, {title: "Customer satisfaction (1-5)"}),
      ...data.slos.map((slo) => plot(labels, {"burn rate": slo.burn}, {rule: 1,
        title: `SLO ${slo.workflow} ${slo.metric} ${slo.objective}${slo.firing.length ? ` (${slo.firing} alert)` : ""}`}))),
    h("h3", {}, "Top failure reasons"),
    t.failure_reasons.length ? h("ol", {class: "reasons"}, t.failure_reasons.slice(0, 10).map(([reason, n]) =>
      h("li", {}, `${reason} (${n})`))) : h("p", {class: "hint"}, "No failed step.")));
  clearTimeout(openDashboard.timer);
  openDashboard.timer = setTimeout(() => {
    if (state.open && state.open.kind === "dashboard" && state.open.id === workflow) openDashboard(workflow, range);
  }, 60_000);
}

function dashboardRange(step) {
  if (!state.open || state.open.kind !== "dashboard") return;
  const at = RANGES.indexOf(state.open.range) + step;
  if (at >= 0 && at < RANGES.length) openDashboard(state.open.id, RANGES[at]);
}

// ---------- the keyboard ----------

function toggleHelp(show) {
  $("#help").hidden = show === undefined ? !$("#help").hidden : !show;
}

const keys = {
  j: () => move(1), ArrowDown: () => move(1), k: () => move(-1), ArrowUp: () => move(-1),
  Enter: openSelected, 1: () => switchTab("queue"), 2: () => switchTab("approvals"), 3: () => switchTab("ask"),
  4: () => { if (boot.sources) switchTab("documents"); }, 5: () => switchTab("dashboard"),
  "[": () => dashboardRange(-1), "]": () => dashboardRange(1),
  u: () => { const input = $("#upload"); if (input) input.click(); },
  c: claim, t: returnToAi, a: () => decide("approve"), e: () => decide("edit"), x: () => decide("reject"),
  r: () => { const reply = $("#reply"); if (reply && !reply.disabled) reply.focus(); },
  n: () => { const note = $("#note"); if (note) note.focus(); },
  f: () => { const field = $("#edit-form input, #edit-form select, #edit-form textarea"); if (field) field.focus(); },
  "?": () => toggleHelp(),
};

document.addEventListener("keydown", (event) => {
  const field = event.target.closest("input, textarea, select");
  if (event.key === "Escape") { toggleHelp(false); if (field) field.blur(); return; }
  if (event.key === "Enter" && event.target.closest("button, a")) return;  // a focused button does its own
  if (field) {
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      if (field.id === "reply") sendReply();
      else if (field.id === "note") addNote();
      else if (field.id === "question") ask();
    }
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey || !keys[event.key]) return;
  event.preventDefault();
  keys[event.key]();
});

document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-action], [data-tab]");
  if (!button) return;
  if (button.dataset.tab) switchTab(button.dataset.tab);
  else ({help: () => toggleHelp(), claim, return: returnToAi, approve: () => decide("approve"),
    edit: () => decide("edit"), reject: () => decide("reject")})[button.dataset.action]();
});

for (const id of ["#f-workflow", "#f-reason", "#f-mine"]) $(id).addEventListener("input", renderList);
setInterval(() => {  // the SLA clocks
  for (const el of document.querySelectorAll("[data-since]")) el.textContent = since(el.dataset.since);
}, 1000);

renderList();
connect();
