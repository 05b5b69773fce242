// taskfleet dashboard: a Flower-like view of workers, queues, jobs, schedules, connectors, the ranked tasks
// and a chat with the task assistant.
// Plain ES2020, no build step, no external resources: the API embeds this file as is.
// Every string from the API reaches the DOM through textContent / text nodes only.
'use strict';

const STATES = ['scheduled', 'queued', 'running', 'retrying', 'succeeded', 'dead', 'cancelled'];
const ACTIVE_STATES = new Set(['scheduled', 'queued', 'running', 'retrying']);
const RETRYABLE_STATES = new Set(['dead', 'cancelled']);
const TERMINAL_EVENTS = new Set(['job_succeeded', 'job_dead', 'job_cancelled']);
const TERMINAL_STATES = new Set(['succeeded', 'dead', 'cancelled']);
const KEY_STORAGE = 'taskfleet.apiKey';
const PAGE_SIZE = 50;
const SVG_NS = 'http://www.w3.org/2000/svg';

function newConnectorsState() {
  return {
    byId: new Map(), // the last list, in the API's order
    rows: new Map(), // id → { tr, cells, buttons, busy }: rows keep their identity across refreshes
    live: new Map(), // id → { kind: 'testing' | 'ok' | 'error', message, at }: test results not yet listed
    work: null, // AbortController of the tab's own requests (tests followed, test-all), while shown
    testingAll: false,
  };
}

function newChatState() {
  return {
    conversations: [], // the listed ones, most recently active first
    pages: 1, // pages of the list shown: "Load more" adds one
    more: false, // whether the API has more than are listed
    openId: null, // the conversation shown; null for a new chat
    title: '',
    loading: 0, // bumped by each open, so the load of an earlier choice is dropped
    pending: null, // the turn being answered: see sendChat()
  };
}

const state = {
  key: null, // the API key (also in sessionStorage, so a reload keeps the session)
  me: null, // GET /v1/me
  session: 0, // bumped on login/logout so late responses of an old session are dropped
  tab: null,
  timer: null, // refresh interval of the shown tab
  eventsStream: null, // GET /v1/events, open while the jobs tab is shown
  jobs: { list: [], rows: new Map(), next: null, loadedMore: false, filters: {} },
  detail: null, // the open job panel: { id, job, stream, lastId, terminalSeen, seqs }
  connectors: newConnectorsState(),
  chat: newChatState(),
  debounces: new Map(),
};

// ---------------------------------------------------------------- small helpers

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
const isOperator = () => state.me?.role === 'operator';
// A read key may look at everything its tenant has and change nothing.
const isReadOnly = () => state.me?.role === 'read';
const shortId = (id) => String(id ?? '').slice(0, 8);
const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener('abort', () => { clearTimeout(timer); resolve(); }, { once: true });
  });

// Builds an element. Children that are strings become text nodes, so data is never parsed as HTML.
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (name === 'class') node.className = value;
    else if (name === 'dataset') Object.assign(node.dataset, value);
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child != null && child !== false) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// replaceChildren() that, like h(), skips null and false children.
function refill(node, ...children) {
  node.replaceChildren(...children.flat(Infinity).filter((child) => child != null && child !== false));
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  return node;
}

function setText(selector, value) {
  $(selector).textContent = value == null || value === '' ? '—' : String(value);
}

// Runs fn once `ms` after the last call with the same key.
function debounce(key, ms, fn) {
  clearTimeout(state.debounces.get(key));
  state.debounces.set(key, setTimeout(() => {
    state.debounces.delete(key);
    Promise.resolve().then(fn).catch(reportError);
  }, ms));
}

function clearDebounces(prefix = '') {
  for (const [key, timer] of state.debounces) {
    if (key.startsWith(prefix)) { clearTimeout(timer); state.debounces.delete(key); }
  }
}

// ---------------------------------------------------------------- formatting

const fmtTime = (ts) => (ts ? new Date(ts).toLocaleString(undefined, { dateStyle: 'short', timeStyle: 'medium' }) : '—');
const fmtClock = (ts) => (ts ? new Date(ts).toLocaleTimeString() : '');

function fmtDuration(seconds) {
  const s = Math.abs(seconds);
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.round(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

// "in 12 s" / "3 s ago"
function fmtRelative(ts) {
  const seconds = (Date.parse(ts) - Date.now()) / 1000;
  return seconds >= 0 ? `in ${fmtDuration(seconds)}` : `${fmtDuration(seconds)} ago`;
}

function fmtSeconds(seconds) {
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  return fmtDuration(seconds);
}

const pretty = (value) => JSON.stringify(value, null, 2);
const truncate = (text, max) => (text.length > max ? `${text.slice(0, max - 1)}…` : text);

// A one-line summary of an event's details: `key=value …`.
function summarize(details) {
  if (details == null || typeof details !== 'object') return truncate(String(details ?? ''), 140);
  const pairs = Object.entries(details).map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`);
  return truncate(pairs.join(' '), 140);
}

// datetime-local values are local wall time; the API wants RFC3339 UTC.
function toRfc3339(local) {
  if (!local) return '';
  const date = new Date(local);
  return Number.isNaN(date.getTime()) ? '' : date.toISOString();
}

// ---------------------------------------------------------------- API access

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    Object.assign(this, { status, code });
  }
}

const authHeaders = (extra = {}) => ({ Authorization: `Bearer ${state.key}`, ...extra });

async function errorFrom(response) {
  const body = await response.json().catch(() => null);
  const err = new ApiError(response.status, body?.error ?? `http_${response.status}`,
    body?.message ?? (response.statusText || `HTTP ${response.status}`));
  if (response.status === 401) logout(err.message);
  return err;
}

async function api(method, path, body) {
  const session = state.session;
  const init = { method, headers: authHeaders({ Accept: 'application/json' }), cache: 'no-store' };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init).catch((err) => {
    throw new ApiError(0, 'network', `Cannot reach the API: ${err.message}`);
  });
  if (session !== state.session) throw Object.assign(new ApiError(0, 'stale', ''), { silent: true });
  if (!response.ok) throw await errorFrom(response);
  return response.status === 204 ? null : response.json().catch(() => null);
}

function reportError(err) {
  if (!err || err.silent || err.name === 'AbortError') return;
  if (err.status === 401) return; // logout() already shows it on the login form
  console.error(err);
  $('#error-text').textContent = err.message || String(err);
  $('#error-banner').title = err.code ?? '';
  $('#error-banner').hidden = false;
}

// ---------------------------------------------------------------- SSE over fetch()

// Incremental text/event-stream parser. push() takes decoded text in any chunking; it calls
// onMessage({id, event, data}) at each blank line that ends a message with data.
function createSseParser(onMessage) {
  let buffer = '', event = '', data = [];
  let lastId = null; // persists across messages, as in EventSource

  function handleLine(line) {
    if (line === '') { // end of a message
      if (data.length) onMessage({ id: lastId, event: event || 'message', data: data.join('\n') });
      [data, event] = [[], ''];
      return;
    }
    if (line.startsWith(':')) return; // comment, e.g. keep-alive
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'data') data.push(value);
    else if (field === 'event') event = value;
    else if (field === 'id' && !value.includes('\0')) lastId = value;
    // `retry` and unknown fields are ignored: reconnection timing is ours.
  }

  return {
    push(chunk) {
      buffer += chunk;
      let start = 0;
      for (let i = 0; i < buffer.length; i++) {
        const c = buffer[i];
        if (c !== '\n' && c !== '\r') continue;
        if (c === '\r' && i === buffer.length - 1) break; // may be half of a \r\n split across chunks
        handleLine(buffer.slice(start, i));
        if (c === '\r' && buffer[i + 1] === '\n') i++;
        start = i + 1;
      }
      buffer = buffer.slice(start);
    },
    get lastId() { return lastId; },
  };
}

// EventSource cannot send the Authorization header, so streams are read with fetch().
// Reconnects with Last-Event-ID (backoff 1 s doubling to 10 s) as long as reconnect() says so;
// stop() aborts. onStatus gets 'live' | 'reconnecting' | 'closed'.
function openStream(path, { onEvent, reconnect = () => true, lastId = null, onStatus = () => {} }) {
  const controller = new AbortController();
  const stream = { lastId, done: false, stop: () => controller.abort() };
  (async () => {
    let delay = 1000;
    while (!controller.signal.aborted) {
      try {
        if (await readStream(path, stream, controller.signal, onEvent, onStatus)) delay = 1000;
      } catch (err) {
        if (controller.signal.aborted) break;
        // Client errors (bad id, forbidden, gone) will not heal by retrying.
        if (err instanceof ApiError && err.status >= 400 && err.status < 500 && err.status !== 429) {
          reportError(err);
          break;
        }
      }
      if (controller.signal.aborted || !reconnect()) break;
      onStatus('reconnecting');
      await sleep(delay, controller.signal);
      delay = Math.min(delay * 2, 10000);
    }
    stream.done = true;
    onStatus('closed');
  })();
  return stream;
}

// One connection: resolves when the server ends the stream (true if any message came).
async function readStream(path, stream, signal, onEvent, onStatus) {
  const headers = authHeaders({ Accept: 'text/event-stream' });
  if (stream.lastId != null) headers['Last-Event-ID'] = stream.lastId;
  const response = await fetch(path, { headers, signal, cache: 'no-store' });
  if (!response.ok) throw await errorFrom(response);
  onStatus('live');
  let received = false;
  await readEvents(response, (name, data, id) => {
    received = true;
    if (id != null) stream.lastId = id;
    onEvent(name, data, id);
  });
  return received;
}

// Feeds a text/event-stream response's messages to onEvent(event, parsed data, id) until the
// server ends the stream.
async function readEvents(response, onEvent) {
  const parser = createSseParser((message) => {
    try { onEvent(message.event, JSON.parse(message.data), message.id); } catch (err) {
      console.error('bad event', message, err); // one bad message must not end the stream
    }
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    parser.push(value);
  }
}

const LIVE_TEXT = { live: '● live', reconnecting: '○ reconnecting…', closed: '' };
const showLiveStatus = (selector) => (status) =>
  Object.assign($(selector), { textContent: LIVE_TEXT[status], className: `live-status ${status}` });

// ---------------------------------------------------------------- login / logout

async function login(key) {
  state.session++;
  state.key = key;
  $('#login-error').hidden = true;
  try {
    state.me = await api('GET', '/v1/me');
  } catch (err) {
    if (err.status !== 401) showLoginError(err.message); // a 401 already logged us out
    state.key = null;
    return;
  }
  sessionStorage.setItem(KEY_STORAGE, key);
  enterApp();
}

function showLoginError(message) {
  Object.assign($('#login-error'), { textContent: message, hidden: !message });
}

function enterApp() {
  const operator = isOperator();
  $('#whoami').textContent = `${state.me.tenant} · ${state.me.role}`;
  for (const node of $$('[data-operator-only]')) node.hidden = !operator;
  showLoggedIn(true);
  $('#api-key').value = '';
  fetchQueues().catch(reportError); // fills the queue filter
  showTab(location.hash.slice(1));
}

function logout(message = '') {
  state.session++;
  stopTabWork();
  closeDetail();
  clearDebounces();
  sessionStorage.removeItem(KEY_STORAGE);
  [state.key, state.me, state.tab] = [null, null, null];
  history.replaceState(null, '', location.pathname); // the next key starts on the default tab
  state.jobs = { list: [], rows: new Map(), next: null, loadedMore: false, filters: {} };
  state.connectors = newConnectorsState();
  resetChat();
  // Nothing of the old session stays in the DOM for the next key.
  for (const tbody of $$('main tbody')) tbody.replaceChildren();
  $('#connector-form').reset();
  showConnectorFields();
  $('#connectors-test-summary').textContent = '';
  $('#whoami').textContent = '';
  $('#error-banner').hidden = true;
  showLoggedIn(false);
  showLoginError(message);
  $('#api-key').focus();
}

function showLoggedIn(yes) {
  for (const selector of ['#app', '#tabs', '#logout']) $(selector).hidden = !yes;
  $('#login-view').hidden = yes;
}

// ---------------------------------------------------------------- tabs

const TABS = {
  workers: { refresh: refreshWorkers, every: 5000 },
  queues: { refresh: refreshQueues, every: 5000 },
  jobs: { refresh: () => refreshJobs(), every: 10000 },
  schedules: { refresh: refreshSchedules, every: 10000 },
  connectors: { refresh: refreshConnectors, every: 5000 },
  tasks: { refresh: refreshTasks, every: 15000 },
  chat: { refresh: refreshChat, every: 15000 },
  audit: { refresh: refreshAudit, every: 15000 },
};
const OPERATOR_TABS = ['workers', 'audit'];

function showTab(name) {
  const known = Object.prototype.hasOwnProperty.call(TABS, name);
  if (!known || (OPERATOR_TABS.includes(name) && !isOperator())) name = 'jobs';
  stopTabWork();
  state.tab = name;
  for (const button of $$('button[data-tab]')) {
    button.classList.toggle('active', button.dataset.tab === name);
    button.setAttribute('aria-selected', String(button.dataset.tab === name));
  }
  for (const section of $$('section.tab')) section.hidden = section.id !== `tab-${name}`;
  history.replaceState(null, '', `#${name}`);

  const tab = TABS[name];
  if (name === 'jobs') {
    state.jobs.filters = readFilters();
    startJobEvents();
  }
  if (name === 'connectors') state.connectors.work = new AbortController();
  if (name === 'tasks') startTaskEvents();
  tab.refresh().catch(reportError);
  // Skip polls while the page is in the background; the next visible tick catches up.
  state.timer = setInterval(() => {
    if (!document.hidden) tab.refresh().catch(reportError);
  }, tab.every);
}

function stopTabWork() {
  clearInterval(state.timer);
  state.timer = null;
  state.eventsStream?.stop();
  state.eventsStream = null;
  showLiveStatus('#jobs-live')('closed');
  showLiveStatus('#tasks-live')('closed');
  clearDebounces('jobs');
  stopConnectorWork();
}

// Replaces a table's body with `rows`, or one row saying `emptyText`.
function fillTable(selector, rows, emptyText) {
  const columns = $(`${selector} thead tr`).children.length;
  const empty = h('tr', { class: 'empty' }, h('td', { colspan: columns }, emptyText));
  $(`${selector} tbody`).replaceChildren(...(rows.length ? rows : [empty]));
}

function jobLink(id) {
  const open = (event) => { event.preventDefault(); openJob(id); };
  return h('a', { href: '#', class: 'job-link mono', title: id, onclick: open }, shortId(id));
}

const badge = (kind, text) => h('span', { class: `badge ${kind}` }, text);

// ---------------------------------------------------------------- workers

async function refreshWorkers() {
  const { workers } = await api('GET', '/v1/workers');
  fillTable('#workers-table', workers.map(workerRow), 'No workers registered.');
}

function workerRow(w) {
  const queues = (w.queues ?? []).map((q) => `${q} ×${w.concurrency?.[q] ?? '?'}`).join(', ');
  const active = w.active_jobs ?? [];
  return h('tr', { dataset: { worker: w.name }, class: w.online ? null : 'offline' },
    h('td', {},
      h('span', { class: 'name', title: `${w.host ?? ''} pid ${w.pid ?? '?'}` }, w.name),
      w.leader ? [' ', h('span', { class: 'badge leader' }, 'leader')] : null),
    h('td', {}, w.online ? badge('online', 'online') : badge('offline', 'offline')),
    h('td', { title: fmtTime(w.last_heartbeat_at) }, `${fmtDuration(w.heartbeat_age_seconds ?? 0)} ago`),
    h('td', {}, queues || '—'),
    h('td', { class: 'active-jobs' }, String(active.length),
      active.length ? [' ', active.map((id, i) => [i ? ', ' : '', jobLink(id)])] : null),
    h('td', { class: 'num' }, w.processed ?? 0),
    h('td', { class: 'num' }, w.failed ?? 0));
}

// ---------------------------------------------------------------- audit

// The audit log's newest page: who changed what.
async function refreshAudit() {
  const { events } = await api('GET', '/v1/audit?limit=100');
  fillTable('#audit-table', events.map(auditRow), 'Nothing recorded yet.');
}

function auditRow(e) {
  return h('tr', {},
    h('td', { title: e.at }, fmtTime(e.at)),
    h('td', { class: 'mono', title: e.actor_tenant ?? '' }, e.actor),
    h('td', {}, e.action),
    h('td', {}, e.tenant ?? '—'),
    h('td', { class: 'mono' }, e.target),
    h('td', { class: 'event-details' }, JSON.stringify(e.detail)));
}

// ---------------------------------------------------------------- queues

async function refreshQueues() {
  fillTable('#queues-table', (await fetchQueues()).map(queueRow), 'No queues.');
}

async function fetchQueues() {
  const { queues } = await api('GET', '/v1/queues');
  updateQueueOptions(queues.map((q) => q.name));
  return queues;
}

// Keeps the queue filter in line with the API's queues, preserving the selection.
function updateQueueOptions(names) {
  const select = $('#filter-queue');
  const current = $$('option', select).slice(1).map((o) => o.value);
  if (current.join() === names.join()) return;
  const selected = select.value;
  select.replaceChildren(h('option', { value: '' }, 'all'), ...names.map((n) => h('option', { value: n }, n)));
  select.value = names.includes(selected) ? selected : '';
}

function queueRow(q) {
  const tr = h('tr', { dataset: { queue: q.name }, class: q.paused ? 'paused' : null },
    h('td', { class: 'name' }, q.name),
    h('td', {}, q.paused ? badge('paused', 'paused') : null),
    STATES.map((s) => {
      const count = q.depth?.[s] ?? 0;
      return h('td', { class: `num depth state-${s}${count ? '' : ' zero'}`, dataset: { state: s } }, count);
    }),
    h('td', {}, sparkline(q.throughput ?? [])),
    h('td', { class: 'num' }, q.failure_rate == null ? '—' : `${(q.failure_rate * 100).toFixed(1)}%`),
    h('td', { class: 'num' }, q.wait_p95_seconds == null ? '—' : fmtSeconds(q.wait_p95_seconds)),
    isOperator()
      ? h('td', {}, h('button', {
        type: 'button', class: 'pause-toggle', onclick: (event) => togglePause(q, tr, event.currentTarget),
      }, q.paused ? 'Resume' : 'Pause'))
      : null);
  return tr;
}

async function togglePause(q, tr, button) {
  button.disabled = true;
  try {
    const updated = await api('POST', `/v1/queues/${encodeURIComponent(q.name)}/${q.paused ? 'resume' : 'pause'}`);
    tr.replaceWith(queueRow(updated));
  } catch (err) {
    reportError(err);
    button.disabled = false;
  }
}

// Succeeded per minute over the 15 throughput entries, oldest on the left.
function sparkline(points) {
  const [width, height] = [90, 20];
  const values = points.map((p) => p.succeeded ?? 0);
  const max = Math.max(1, ...values); // an idle queue draws a flat line at the bottom
  const step = values.length > 1 ? width / (values.length - 1) : 0;
  const y = (v) => (height - 1 - (v / max) * (height - 2)).toFixed(1);
  const coords = values.map((v, i) => `${(i * step).toFixed(1)},${y(v)}`).join(' ');
  const node = svg('svg', { class: 'sparkline', width, height, viewBox: `0 0 ${width} ${height}` });
  const title = svg('title');
  title.textContent = `succeeded per minute: ${values.join(', ')}`;
  node.append(title, svg('polyline', { points: coords, fill: 'none' }));
  return node;
}

// ---------------------------------------------------------------- jobs list

function readFilters() {
  const text = (selector) => $(selector).value.trim();
  return {
    state: text('#filter-state'),
    queue: text('#filter-queue'),
    kind: text('#filter-kind'),
    tenant: isOperator() ? text('#filter-tenant') : '',
    created_after: toRfc3339(text('#filter-after')),
    created_before: toRfc3339(text('#filter-before')),
  };
}

function jobsPath(extra = {}) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries({ ...state.jobs.filters, limit: PAGE_SIZE, ...extra })) {
    if (value !== '' && value != null) params.set(name, value);
  }
  return `/v1/jobs?${params}`;
}

// Fetches the first page. Rows brought in by "Load more" stay below it, so a poll does
// not throw away what the user paged to; `reset` starts over (new filters).
async function refreshJobs(reset = false) {
  const page = await api('GET', jobsPath());
  const jobs = state.jobs;
  if (reset || !jobs.loadedMore) {
    jobs.list = page.jobs;
    jobs.next = page.next_cursor;
    jobs.loadedMore = false;
  } else {
    const fresh = new Set(page.jobs.map((j) => j.id));
    const last = page.jobs[page.jobs.length - 1];
    const older = last
      ? jobs.list.filter((j) => !fresh.has(j.id) && Date.parse(j.created_at) <= Date.parse(last.created_at))
      : [];
    jobs.list = [...page.jobs, ...older];
  }
  renderJobs();
}

async function loadMoreJobs() {
  const jobs = state.jobs;
  if (!jobs.next) return;
  const page = await api('GET', jobsPath({ cursor: jobs.next }));
  const have = new Set(jobs.list.map((j) => j.id));
  jobs.list.push(...page.jobs.filter((j) => !have.has(j.id)));
  jobs.next = page.next_cursor;
  jobs.loadedMore = true;
  renderJobs();
}

// Re-uses each job's <tr>, so rows keep their identity across refreshes.
function renderJobs() {
  const rows = new Map();
  for (const job of state.jobs.list) {
    const tr = state.jobs.rows.get(job.id) ?? h('tr', { dataset: { jobId: job.id } });
    rows.set(job.id, fillJobRow(tr, job));
  }
  state.jobs.rows = rows;
  fillTable('#jobs-table', [...rows.values()], 'No jobs match these filters.');
  $('#jobs-more').hidden = !state.jobs.next;
}

function fillJobRow(tr, job) {
  tr.replaceChildren(
    h('td', { class: 'mono', title: job.id }, shortId(job.id)),
    h('td', {}, job.tenant ?? ''),
    h('td', {}, job.queue),
    h('td', {}, job.kind),
    h('td', { class: `state state-${job.state}` }, job.state),
    h('td', { class: 'num' }, `${job.attempt}/${job.max_attempts}`),
    h('td', { title: job.created_at }, fmtTime(job.created_at)),
    h('td', {}, progressBar(job)));
  tr.classList.toggle('selected', state.detail?.id === job.id);
  return tr;
}

function progressValue(job) {
  if (job.progress_percent != null) return job.progress_percent;
  return job.state === 'succeeded' ? 100 : 0;
}

function progressBar(job) {
  const value = progressValue(job);
  return h('span', { class: 'progress-cell', title: job.progress_message ?? '' },
    h('progress', { max: 100, value }), ` ${Math.round(value)}%`);
}

// Replaces one job in the table, in place.
function updateJobRow(job) {
  const index = state.jobs.list.findIndex((j) => j.id === job.id);
  if (index < 0) return;
  state.jobs.list[index] = job;
  const tr = state.jobs.rows.get(job.id);
  if (tr) fillJobRow(tr, job);
}

function startJobEvents() {
  state.eventsStream?.stop();
  const show = showLiveStatus('#jobs-live');
  const stream = openStream('/v1/events', {
    onEvent: onFleetEvent,
    onStatus: (status) => { if (state.eventsStream === stream) show(status); }, // not a stopped one's
  });
  state.eventsStream = stream;
}

// Live list: refresh rows whose job changed; a new matching job reloads the first page.
function onFleetEvent(name, event) {
  const id = event.job_id;
  if (!id) return; // fleet events (worker_online, …) do not touch the list
  if (state.jobs.rows.has(id)) {
    debounce(`jobs:${id}`, 200, async () => updateJobRow(await api('GET', `/v1/jobs/${id}`)));
  } else if (name === 'job_enqueued' && matchesFilters(event)) {
    debounce('jobs:first-page', 500, () => refreshJobs());
  }
}

// Whether a job_enqueued event may belong in the list as currently filtered.
function matchesFilters(event) {
  const f = state.jobs.filters;
  const ts = Date.parse(event.ts);
  if (f.state && f.state !== 'queued' && f.state !== 'scheduled') return false;
  if (f.queue && event.queue !== f.queue) return false;
  if (f.kind && event.kind !== f.kind) return false;
  // Events carry the tenant's id, not its name: with a tenant filter the page is refetched.
  if (f.created_after && ts < Date.parse(f.created_after)) return false;
  if (f.created_before && ts >= Date.parse(f.created_before)) return false;
  return true;
}

// ---------------------------------------------------------------- job detail

function openJob(id) {
  if (state.detail?.id === id) return;
  closeDetail();
  const detail = { id, job: null, stream: null, lastId: null, terminalSeen: false, seqs: new Set() };
  state.detail = detail;
  // Nothing of the previous job may linger while this one loads.
  const cleared = '#job-detail dd, #job-detail pre, #job-detail ol, #job-detail ul, #job-detail .progress-line span';
  for (const node of $$(cleared)) node.textContent = '';
  $('#job-short-id').textContent = shortId(id);
  $('#job-id').textContent = id;
  $('#job-state').textContent = '';
  $('#job-state').className = 'state';
  $('#job-progress').value = 0;
  disableJobActions();
  setJobMessage('');
  $('#job-detail').hidden = false;
  document.body.classList.add('detail-open'); // the lists make room rather than hide under it
  for (const [rowId, tr] of state.jobs.rows) tr.classList.toggle('selected', rowId === id);
  followJob();
  refreshDetail(detail).catch((err) => jobError(detail, err));
}

function closeDetail() {
  const detail = state.detail;
  if (!detail) return;
  detail.stream?.stop();
  clearDebounces('detail');
  state.detail = null;
  showLiveStatus('#job-live')('closed');
  $('#job-detail').hidden = true;
  document.body.classList.remove('detail-open');
  state.jobs.rows.get(detail.id)?.classList.remove('selected');
}

// Opens the job's event stream unless one is running. The stream replays the job's history
// (or what follows lastId), then goes live, and the server ends it after a terminal event.
function followJob() {
  const detail = state.detail;
  if (!detail || (detail.stream && !detail.stream.done)) return;
  detail.stream = openStream(`/v1/jobs/${encodeURIComponent(detail.id)}/events`, {
    lastId: detail.lastId,
    onEvent: (name, event, id) => onJobEvent(detail, name, event, id),
    // A stream cut before the terminal event (network, API restart) resumes where it was.
    reconnect: () => !detail.terminalSeen && state.detail === detail,
    onStatus: (status) => { if (state.detail === detail) showLiveStatus('#job-live')(status); },
  });
}

function onJobEvent(detail, name, event, id) {
  if (state.detail !== detail) return;
  if (id != null) detail.lastId = id;
  const seq = String(event.seq ?? id);
  if (detail.seqs.has(seq)) return; // replay after a reconnect may repeat one
  detail.seqs.add(seq);
  // Only the latest event counts: a retried job has an old job_dead in its history.
  detail.terminalSeen = TERMINAL_EVENTS.has(name);
  $('#job-events').append(eventItem(name, event));
  debounce(`detail:${detail.id}`, 200, () => refreshDetail(detail));
}

function eventItem(name, event) {
  const details = summarize(event.details);
  return h('li', { dataset: { event: event.event ?? name }, class: `event-${event.event ?? name}` },
    h('time', { datetime: event.ts, title: fmtTime(event.ts) }, fmtClock(event.ts)),
    h('span', { class: 'event-name' }, event.event ?? name),
    h('span', { class: 'event-actor' }, event.actor ?? ''),
    h('span', { class: 'event-details', title: event.details == null ? null : pretty(event.details) }, details));
}

async function refreshDetail(detail) {
  const job = await api('GET', `/v1/jobs/${encodeURIComponent(detail.id)}`);
  if (state.detail !== detail) return;
  renderDetail(job);
  updateJobRow(job);
}

// Element id suffix → Job field, for the plain and the timestamp fields of the panel.
const DETAIL_TEXT = { tenant: 'tenant', queue: 'queue', kind: 'kind', priority: 'priority', worker: 'worker',
  'request-id': 'request_id', 'idempotency-key': 'idempotency_key', error: 'error' };
const DETAIL_TIMES = { created: 'created_at', 'run-at': 'run_at', started: 'started_at',
  finished: 'finished_at', 'cancel-requested': 'cancel_requested_at' };

function renderDetail(job) {
  state.detail.job = job;
  for (const [id, field] of Object.entries(DETAIL_TEXT)) setText(`#job-${id}`, job[field]);
  for (const [id, field] of Object.entries(DETAIL_TIMES)) setText(`#job-${id}`, fmtTime(job[field]));
  setText('#job-attempt', `${job.attempt}/${job.max_attempts}`);

  Object.assign($('#job-state'), { textContent: job.state, className: `state state-${job.state}` });

  const value = progressValue(job);
  $('#job-progress').value = value;
  $('#job-progress-text').textContent = `${Math.round(value)}%`;
  $('#job-progress-message').textContent = job.progress_message ?? '';

  $('#job-payload').textContent = pretty(job.payload ?? null);
  renderCommand(job);
  const hasResult = job.result != null;
  Object.assign($('#job-result'), { hidden: !hasResult, textContent: hasResult ? pretty(job.result) : '' });
  $('#job-result-title').hidden = !hasResult;

  $('#job-errors').replaceChildren(...(job.attempt_errors ?? []).map((e) =>
    h('li', {}, `attempt ${e.attempt}: ${e.error} (${fmtTime(e.at)})`)));

  $('#job-retry').disabled = isReadOnly() || !RETRYABLE_STATES.has(job.state);
  $('#job-cancel').disabled = isReadOnly() || !ACTIVE_STATES.has(job.state);
  // Running again (retried, here or elsewhere) while our stream has ended: follow it again.
  if (ACTIVE_STATES.has(job.state)) followJob();
}

// An executor command's output, as it printed it, above the raw result.
function renderCommand(job) {
  const result = job.kind === 'executor.run' && job.result && 'exit_code' in job.result ? job.result : null;
  $('#job-command').hidden = !result;
  if (!result) return;
  setText('#job-command-summary', result.summary);
  for (const stream of ['stdout', 'stderr']) {
    $(`#job-command-${stream}`).textContent = result[stream] || '(nothing)';
    const cut = result[`${stream}_truncated`];
    $(`#job-command-${stream}-note`).textContent =
      cut ? `(first ${result[stream].length} of ${result[`${stream}_bytes`]} bytes)` : '';
  }
}

async function jobAction(action) {
  const detail = state.detail;
  if (!detail) return;
  disableJobActions(); // no double clicks while the request runs
  setJobMessage('');
  try {
    const job = await api('POST', `/v1/jobs/${encodeURIComponent(detail.id)}/${action}`);
    if (state.detail !== detail) return;
    // The job runs again: its old terminal event must no longer end (or block) the stream,
    // which resumes from the last id seen.
    if (action === 'retry') detail.terminalSeen = false;
    setJobMessage(action === 'retry' ? 'Retry queued.' : 'Cancellation requested.', 'ok');
    if (job?.id && job.state) {
      renderDetail(job);
      updateJobRow(job);
    } else {
      await refreshDetail(detail);
    }
  } catch (err) {
    jobError(detail, err);
    if (state.detail === detail && detail.job) renderDetail(detail.job); // restore the buttons
  }
}

function disableJobActions() {
  for (const button of $$('#job-retry, #job-cancel')) button.disabled = true;
}

function jobError(detail, err) {
  if (err.silent || state.detail !== detail) return;
  setJobMessage(err.message, 'error');
  reportError(err);
}

function setJobMessage(text, kind = '') {
  Object.assign($('#job-message'), { textContent: text, className: kind, hidden: !text });
}

// ---------------------------------------------------------------- schedules

async function refreshSchedules() {
  // The list comes in pages, newest first; the table shows them all.
  const schedules = [];
  let cursor = null;
  do {
    const query = cursor ? `?limit=500&cursor=${encodeURIComponent(cursor)}` : '?limit=500';
    const page = await api('GET', `/v1/schedules${query}`);
    schedules.push(...page.schedules);
    cursor = page.next_cursor;
  } while (cursor);
  fillTable('#schedules-table', schedules.map(scheduleRow), 'No schedules.');
}

function describeTarget(target) {
  if (target == null || typeof target !== 'object') return truncate(String(target ?? ''), 80);
  return truncate([target.kind, target.queue].filter(Boolean).join(' · ') || JSON.stringify(target), 80);
}

function scheduleRow(s) {
  const when = s.cron
    ? [h('code', {}, s.cron), ` ${s.time_zone ?? 'UTC'}`]
    : s.at ? `at ${fmtTime(s.at)}` : '—';
  const firings = (s.last_firings ?? []).slice(0, 5);
  return h('tr', { dataset: { scheduleId: s.id }, class: s.paused ? 'paused' : null },
    h('td', {}, h('span', { class: 'name' }, s.name),
      h('div', { class: 'sub', title: pretty(s.target ?? null) }, describeTarget(s.target))),
    h('td', {}, when, s.missed ? h('div', { class: 'sub' }, `missed: ${s.missed}`) : null),
    h('td', {}, s.paused ? badge('paused', 'paused') : 'no'),
    h('td', {}, s.next_fire_at
      ? [fmtTime(s.next_fire_at), h('div', { class: 'sub' }, fmtRelative(s.next_fire_at))]
      : '—'),
    h('td', {}, firings.length
      ? h('ul', { class: 'firings' }, firings.map((f) => h('li', {},
        h('span', { title: `fired ${fmtTime(f.fired_at)}` }, fmtTime(f.fire_at)), ' → ', jobLink(f.job_id),
        f.catch_up ? h('span', { class: 'sub' }, ' (catch-up)') : null)))
      : '—'));
}

// ---------------------------------------------------------------- tasks

const HORIZONS = ['today', 'week', 'month', 'past7d'];

async function refreshTasks() {
  const lists = await Promise.all(HORIZONS.map((horizon) => api('GET', `/v1/tasks?horizon=${horizon}&limit=3`)));
  HORIZONS.forEach((horizon, i) => {
    const cards = lists[i].tasks.map((task) => taskCard(task, horizon));
    const empty = h('li', { class: 'empty' }, horizon === 'past7d' ? 'Nothing done yet.' : 'Nothing here.');
    $(`.task-column[data-horizon="${horizon}"] ol`).replaceChildren(...(cards.length ? cards : [empty]));
  });
}

function taskCard(task, horizon) {
  const title = task.url
    ? h('a', { href: task.url, target: '_blank', rel: 'noopener' }, task.title)
    : task.title;
  const due = task.due_at ? `due ${fmtRelative(task.due_at)}` : null;
  const done = horizon === 'past7d';
  const action = h('button', { type: 'button', class: done ? 'task-undo' : 'task-complete' }, done ? 'Undo' : 'Complete');
  action.addEventListener('click', () => taskAction(task.id, done ? 'undo' : 'complete', action));
  return h('li', { class: 'task-card', dataset: { taskId: task.id } },
    h('div', { class: 'title' }, done ? null : `${task.rank}. `, title),
    h('div', { class: 'meta' },
      badge('source', PROVIDER_NAMES[task.source_kind] ?? task.source_kind),
      due ? h('span', { class: 'sub' }, due) : null,
      task.ranked_by && task.ranked_by !== 'formula' ? h('span', { class: 'sub' }, `by ${task.ranked_by}`) : null),
    task.reason && !done ? h('div', { class: 'reason' }, task.reason) : null,
    action);
}

async function taskAction(id, action, button) {
  button.disabled = true;
  try {
    await api('POST', `/v1/tasks/${encodeURIComponent(id)}/${action}`);
    await refreshTasks();
  } catch (err) {
    button.disabled = false;
    reportError(err);
  }
}

// A ranking or an embedding that lands changes the lists: refresh them (the stream carries
// the tenant's job events).
function startTaskEvents() {
  state.eventsStream?.stop();
  const show = showLiveStatus('#tasks-live');
  const stream = openStream('/v1/events?kind=agent.prioritise&event=job_succeeded', {
    onEvent: () => debounce('tasks:refresh', 300, () => refreshTasks().catch(reportError)),
    onStatus: (status) => { if (state.eventsStream === stream) show(status); },
  });
  state.eventsStream = stream;
}

// ---------------------------------------------------------------- connectors

const PROVIDER_NAMES = { github: 'GitHub', jira: 'Jira', confluence: 'Confluence', gmail: 'Gmail', gdrive: 'Google Drive' };
// Statuses in which only the person can help, by granting access (again).
const NEEDS_GRANT = new Set(['pending_auth', 'reauth_required']);
const JOB_POLL_MS = 1000;
const JOB_WATCH_MS = 5 * 60 * 1000;

async function refreshConnectors() {
  const asked = Date.now();
  const { connectors } = await api('GET', '/v1/connectors');
  const c = state.connectors;
  c.byId = new Map(connectors.map((connector) => [connector.id, connector]));
  // A result that arrived before this list was asked for is in the list's last_test now.
  for (const [id, live] of c.live) {
    if (live.kind !== 'testing' && live.at < asked) c.live.delete(id);
  }
  renderConnectors();
}

async function refreshConnector(id) {
  const connector = await api('GET', `/v1/connectors/${encodeURIComponent(id)}`);
  state.connectors.byId.set(id, connector);
  updateConnectorRow(id);
}

function renderConnectors() {
  const c = state.connectors;
  const rows = new Map();
  for (const connector of c.byId.values()) {
    const row = c.rows.get(connector.id) ?? connectorRow(connector.id);
    fillConnectorRow(row, connector);
    rows.set(connector.id, row);
  }
  c.rows = rows;
  const trs = [...rows.values()].map((row) => row.tr);
  const tbody = $('#connectors-table tbody');
  // Moving rows takes the focus off their buttons: only when the list changed.
  const same = trs.length > 0 && trs.length === tbody.children.length && trs.every((tr, i) => tbody.children[i] === tr);
  if (!same) fillTable('#connectors-table', trs, 'No connectors yet: connect an account above.');
}

function updateConnectorRow(id) {
  const row = state.connectors.rows.get(id);
  const connector = state.connectors.byId.get(id);
  if (row && connector) fillConnectorRow(row, connector);
}

// A row's cells are refilled on each refresh; its buttons stay the same elements.
function connectorRow(id) {
  const button = (name, label, action) =>
    h('button', { type: 'button', class: name, onclick: () => connectorAction(id, name, action) }, label);
  const buttons = {
    test: button('test', 'Test', testConnector),
    sync: button('sync', 'Sync', syncConnector),
    connect: button('connect', 'Connect', connectAgain),
    delete: button('delete', 'Delete', deleteConnector),
  };
  const cells = {
    name: h('td'), provider: h('td'), status: h('td'), sync: h('td'), test: h('td'), items: h('td'),
  };
  const tr = h('tr', { dataset: { connectorId: id } },
    Object.values(cells), h('td', { class: 'actions' }, Object.values(buttons)));
  return { tr, cells, buttons, busy: new Set() };
}

function fillConnectorRow(row, c) {
  const { cells, buttons } = row;
  refill(cells.name, h('span', { class: 'name', title: c.id }, c.name),
    c.config?.site_url ? h('div', { class: 'sub' }, c.config.site_url) : null);
  refill(cells.provider, PROVIDER_NAMES[c.provider] ?? c.provider,
    h('div', { class: 'sub' }, c.auth === 'token' ? 'token' : 'OAuth'));
  Object.assign(cells.status, { className: `status status-${c.status}`, title: c.status_message ?? '' });
  refill(cells.status, c.status, c.status_message ? h('div', { class: 'sub' }, c.status_message) : null);
  cells.sync.title = c.last_sync_at ? fmtTime(c.last_sync_at) : '';
  cells.sync.textContent = c.last_sync_at ? fmtRelative(c.last_sync_at) : 'never';
  fillLastTest(cells.test, state.connectors.live.get(c.id), c.last_test);
  Object.assign(cells.items, { className: 'num items', textContent: String(c.item_count ?? 0) });

  const pending = c.status === 'pending_auth';
  for (const name of ['test', 'sync']) {
    buttons[name].disabled = pending || row.busy.has(name);
    buttons[name].title = pending ? 'Finish connecting it first' : '';
  }
  if (state.connectors.live.get(c.id)?.kind === 'testing') buttons.test.disabled = true;
  buttons.connect.hidden = !(c.auth === 'oauth' && NEEDS_GRANT.has(c.status));
  buttons.connect.disabled = row.busy.has('connect');
  buttons.delete.disabled = row.busy.has('delete');
}

// "testing…", "ok — connected as ana", "error — GitHub rejected the token: …"; a result being
// tested or just reported wins over the listed one.
function fillLastTest(td, live, last) {
  const verdict = live ?? (last ? { kind: last.ok ? 'ok' : 'error', message: last.message, at: last.at } : null);
  td.className = `last-test${verdict ? ` test-${verdict.kind}` : ''}`;
  td.title = last && !live ? `tested ${fmtTime(last.at)}` : '';
  if (!verdict) td.textContent = '—';
  else if (verdict.kind === 'testing') td.textContent = 'testing…';
  else {
    refill(td, h('span', { class: 'verdict' }, verdict.kind), verdict.message ? ` — ${verdict.message}` : '',
      !live && last ? h('div', { class: 'sub' }, fmtRelative(last.at)) : null);
  }
}

function setLive(id, kind, message = '') {
  const live = { kind, message, at: Date.now() };
  state.connectors.live.set(id, live);
  updateConnectorRow(id);
  return live;
}

// Forgets a live state unless something newer replaced it.
function dropLive(id, live) {
  if (state.connectors.live.get(id) !== live) return;
  state.connectors.live.delete(id);
  updateConnectorRow(id);
}

function stopConnectorWork() {
  const c = state.connectors;
  c.work?.abort();
  c.work = null;
  c.live.clear(); // nothing follows them any more; the next list shows the results
}

// Runs a row's button: disabled while it runs, errors to the banner.
async function connectorAction(id, name, action) {
  const c = state.connectors;
  const row = c.rows.get(id);
  const work = c.work;
  if (!row || !work || row.busy.has(name)) return;
  row.busy.add(name);
  updateConnectorRow(id);
  try {
    await action(id, work.signal);
  } catch (err) {
    reportError(err);
  } finally {
    row.busy.delete(name);
    updateConnectorRow(id);
  }
}

// Polls a job until it ends; null when `signal` aborted first or it took too long.
async function watchJob(job, signal) {
  const deadline = Date.now() + JOB_WATCH_MS;
  while (!TERMINAL_STATES.has(job.state)) {
    await sleep(JOB_POLL_MS, signal);
    if (signal.aborted || Date.now() > deadline) return null;
    job = await api('GET', `/v1/jobs/${encodeURIComponent(job.id)}`);
  }
  return job;
}

// Enqueues a connector's job (or finds the one waiting) and follows it to its end.
async function runConnectorJob(id, what, signal) {
  const job = await watchJob(await api('POST', `/v1/connectors/${encodeURIComponent(id)}/${what}`), signal);
  if (!job && !signal.aborted) {
    throw new Error(`The ${what} job has not finished after ${fmtDuration(JOB_WATCH_MS / 1000)}: `
      + `is a worker serving its queue?`);
  }
  if (job && job.state !== 'succeeded') throw new Error(`The ${what} job is ${job.state}: ${job.error ?? ''}`);
  return job;
}

async function testConnector(id, signal) {
  const testing = setLive(id, 'testing');
  try {
    const job = await runConnectorJob(id, 'test', signal);
    if (!job) return;
    // The worker recorded the verdict on the connector before its job succeeded: the row shows
    // it from the job until the connector is read again.
    const verdict = setLive(id, job.result?.ok ? 'ok' : 'error', job.result?.message ?? '');
    await refreshConnector(id);
    dropLive(id, verdict);
  } finally {
    dropLive(id, testing);
  }
}

async function syncConnector(id, signal) {
  await runConnectorJob(id, 'sync', signal);
  await refreshConnector(id);
}

async function connectAgain(id) {
  const connector = await api('POST', `/v1/connectors/${encodeURIComponent(id)}/authorize`);
  openConsent(connector);
  state.connectors.byId.set(id, connector);
  updateConnectorRow(id);
}

async function deleteConnector(id) {
  const connector = state.connectors.byId.get(id);
  const name = connector ? `${connector.name} (${PROVIDER_NAMES[connector.provider] ?? connector.provider})` : id;
  if (!confirm(`Delete the connector ${name}? Its credentials go with it; the tasks it brought in stay.`)) return;
  await api('DELETE', `/v1/connectors/${encodeURIComponent(id)}`);
  state.connectors.byId.delete(id);
  state.connectors.live.delete(id);
  renderConnectors();
}

// Opens the provider's consent page in a new window that cannot reach back into this one.
function openConsent(connector) {
  const url = connector.authorize_url;
  if (!url) return;
  let parsed = null;
  try { parsed = new URL(url); } catch { /* reported below */ }
  if (!parsed || !['https:', 'http:'].includes(parsed.protocol)) {
    throw new Error(`The API sent an authorize_url that is not a web address: ${truncate(url, 80)}`);
  }
  const consent = window.open(parsed.href, '_blank');
  if (!consent) {
    throw new Error('The browser blocked the consent window: allow pop-ups for this page, then press '
      + `Connect on the ${connector.name} row.`);
  }
  consent.opener = null;
}

// Shows the form's fields that mean something for the chosen provider.
function showConnectorFields() {
  const provider = $('#connector-provider').value;
  for (const label of $$('#connector-form [data-providers]')) {
    label.hidden = !label.dataset.providers.split(' ').includes(provider);
    // A hidden field's leftover value must neither be sent nor block the form's validation.
    for (const input of $$('input', label)) input.disabled = label.hidden;
  }
}

async function createConnector(event) {
  event.preventDefault();
  const field = (selector) => ($(selector).disabled ? '' : $(selector).value.trim());
  const body = { provider: $('#connector-provider').value };
  const [name, token, email, site] =
    ['#connector-name', '#connector-token', '#connector-email', '#connector-site'].map(field);
  if (name) body.name = name;
  if (token) body.token = token;
  if (email) body.email = email;
  if (site) body.config = { site_url: site };
  const submit = $('#connector-add');
  submit.disabled = true;
  try {
    const connector = await api('POST', '/v1/connectors', body);
    for (const selector of ['#connector-name', '#connector-token', '#connector-email']) $(selector).value = '';
    state.connectors.byId.set(connector.id, connector);
    if (state.tab === 'connectors') renderConnectors();
    openConsent(connector);
  } catch (err) {
    reportError(err);
  } finally {
    submit.disabled = false;
  }
}

// POST /v1/connectors/test-all as a stream: each row shows its test live, the summary the counts.
async function testAllConnectors() {
  const c = state.connectors;
  const work = c.work;
  if (!work || c.testingAll) return;
  const button = $('#connectors-test-all');
  const summary = $('#connectors-test-summary');
  c.testingAll = true;
  button.disabled = true;
  summary.textContent = 'testing…';
  const testing = new Map(); // id → its live "testing…" state, to drop if the stream breaks off
  let done = null;
  try {
    const response = await fetch('/v1/connectors/test-all', {
      method: 'POST', headers: authHeaders({ Accept: 'text/event-stream' }), signal: work.signal, cache: 'no-store',
    }).catch((err) => {
      throw err.name === 'AbortError' ? err : new ApiError(0, 'network', `Cannot reach the API: ${err.message}`);
    });
    if (!response.ok) throw await errorFrom(response);
    await readEvents(response, (name, data) => {
      const id = data.connector_id;
      if (name === 'connecting' && id) testing.set(id, setLive(id, 'testing'));
      else if ((name === 'ok' || name === 'error') && id) setLive(id, name, data.message ?? '');
      else if (name === 'done') done = data;
    });
    if (!done) throw new Error('The test-all stream ended before its results: press Test all again.');
    const tested = (done.ok ?? 0) + (done.error ?? 0);
    summary.textContent = tested ? `${done.ok ?? 0} ok, ${done.error ?? 0} failed` : 'Nothing to test yet.';
  } catch (err) {
    summary.textContent = '';
    reportError(err);
  } finally {
    for (const [id, live] of testing) dropLive(id, live);
    c.testingAll = false;
    button.disabled = false;
  }
}

// ---------------------------------------------------------------- chat

const CHAT_PAGE = 50;
const CHAT_MAX_LIST = 500; // the API's largest page
const fmtCount = (n) => Number(n ?? 0).toLocaleString();

// An API error of the chat in plain words.
function chatErrorText(err) {
  switch (err.code) {
    case 'llm_not_configured':
      return 'No LLM is set up to answer chats. Configure one for this tenant with PUT /v1/llm, '
        + "or ask the operator to set the fleet's TASKFLEET_LLM_BASE_URL and TASKFLEET_LLM_MODEL.";
    case 'budget_exceeded':
      return `The monthly LLM token budget is used up: ${err.message}`;
    case 'not_found':
      return 'This conversation no longer exists (deleted elsewhere?): start a new chat.';
    default:
      return err.message || String(err);
  }
}

// A dead chat job's error in plain words.
function turnErrorText(error) {
  const text = String(error ?? '').trim() || 'no reason given';
  if (text.startsWith('budget_exceeded: ')) {
    return `The monthly LLM token budget is used up: ${text.slice('budget_exceeded: '.length)}`;
  }
  return `The assistant could not answer: ${text}`;
}

function setChatError(text) {
  Object.assign($('#chat-error'), { textContent: text, hidden: !text });
}

// Back to nothing shown, as after a sign-in (or a sign-out: nothing of the old key stays).
function resetChat() {
  state.chat.pending?.stream?.stop();
  state.chat = newChatState();
  $('#conversations').replaceChildren();
  $('#conversations-more').hidden = true;
  $('#chat-usage').textContent = '';
  $('#chat-input').value = '';
  setChatError('');
  showLiveStatus('#chat-live')('closed');
  renderMessages([]);
  updateSendButton();
}

async function refreshChat() {
  await Promise.all([refreshConversations(), refreshUsage()]);
}

async function refreshUsage() {
  const { budget = {}, resets_at: resets } = await api('GET', '/v1/usage');
  const used = `LLM tokens this month: ${fmtCount(budget.used)} used`;
  $('#chat-usage').textContent = budget.limit == null
    ? `${used} · no limit`
    : `${used} of ${fmtCount(budget.limit)}${budget.exhausted ? ' · budget spent: new chats wait for next month' : ''}`;
  $('#chat-usage').title = resets ? `the count starts again ${fmtTime(resets)}` : '';
}

// One request for all pages shown: the order moves with every message, so a cursor would not.
async function refreshConversations() {
  const c = state.chat;
  const limit = Math.min(CHAT_MAX_LIST, CHAT_PAGE * c.pages);
  const page = await api('GET', `/v1/conversations?limit=${limit}`);
  if (state.chat !== c) return;
  c.conversations = page.conversations ?? [];
  c.more = Boolean(page.next_cursor) && limit < CHAT_MAX_LIST;
  renderConversations();
}

function renderConversations() {
  const c = state.chat;
  const list = $('#conversations');
  // A refresh must not take the focus off the button it was on.
  const active = document.activeElement;
  const refocus = active?.matches('#conversations li[data-conversation-id] button[class]')
    ? [active.closest('li').dataset.conversationId, active.className] : null;
  const items = c.conversations.map(conversationItem);
  const empty = h('li', { class: 'empty' }, 'No conversations yet: write a message to start one.');
  list.replaceChildren(...(items.length ? items : [empty]));
  $('#conversations-more').hidden = !c.more;
  if (refocus) $(`li[data-conversation-id="${CSS.escape(refocus[0])}"] button.${CSS.escape(refocus[1])}`, list)?.focus();
}

function conversationItem(conversation) {
  const c = state.chat;
  const answering = c.pending?.conversationId === conversation.id;
  const count = conversation.message_count ?? 0;
  return h('li', { class: conversation.id === c.openId ? 'selected' : null, dataset: { conversationId: conversation.id } },
    h('button', {
      type: 'button', class: 'conversation-open', title: conversation.title,
      onclick: () => openConversation(conversation.id),
    },
    h('span', { class: 'title' }, conversation.title || '(untitled)'),
    h('span', { class: 'sub', title: fmtTime(conversation.updated_at) },
      `${count} message${count === 1 ? '' : 's'} · ${fmtRelative(conversation.updated_at)}`)),
    h('button', {
      type: 'button', class: 'conversation-delete', 'aria-label': 'Delete', disabled: answering,
      title: answering ? 'Wait for the reply first' : 'Delete this conversation',
      onclick: (event) => deleteConversation(conversation, event.currentTarget),
    }));
}

function newChat() {
  const c = state.chat;
  c.loading++;
  [c.openId, c.title] = [null, ''];
  setChatError('');
  renderMessages([]);
  renderConversations();
  $('#chat-input').focus();
}

async function openConversation(id) {
  const c = state.chat;
  const load = ++c.loading;
  [c.openId, c.title] = [id, c.conversations.find((conversation) => conversation.id === id)?.title ?? ''];
  setChatError('');
  renderConversations();
  $('#chat-title').textContent = c.title || 'Conversation';
  refill($('#chat-messages'), h('li', { class: 'empty' }, 'Loading…'));
  let conversation;
  try {
    conversation = await api('GET', `/v1/conversations/${encodeURIComponent(id)}`);
  } catch (err) {
    if (state.chat !== c || load !== c.loading) return;
    if (err.status !== 404) {
      reportError(err);
      refill($('#chat-messages'), h('li', { class: 'empty' }, 'This conversation could not be loaded.'));
      return;
    }
    newChat();
    setChatError(chatErrorText(err));
    refreshConversations().catch(reportError);
    return;
  }
  if (state.chat !== c || load !== c.loading) return;
  c.title = conversation.title;
  renderMessages(conversation.messages ?? []);
}

async function deleteConversation(conversation, button) {
  if (!confirm(`Delete the conversation “${truncate(conversation.title, 60)}”? `
    + 'Its messages go; the tasks it changed stay as they are.')) return;
  const c = state.chat;
  button.disabled = true;
  try {
    await api('DELETE', `/v1/conversations/${encodeURIComponent(conversation.id)}`);
  } catch (err) {
    button.disabled = false;
    if (err.status !== 404) { reportError(err); return; } // a 404 is gone all the same
  }
  if (state.chat !== c) return;
  c.conversations = c.conversations.filter((other) => other.id !== conversation.id);
  if (c.openId === conversation.id) newChat();
  else renderConversations();
  refreshConversations().catch(reportError);
}

// The open conversation's stored messages, then the turn being answered if it is this one's.
function renderMessages(messages) {
  const c = state.chat;
  const pending = c.pending;
  const items = messages.map((message) => (message.role === 'user' ? userItem(message) : assistantItem(message)));
  if (pending && pending.conversationId === c.openId && !messages.some((m) => m.job_id && m.job_id === pending.jobId)) {
    items.push(pending.userNode, pending.replyNode);
  }
  const empty = h('li', { class: 'empty' },
    'Ask the task assistant to add, list, complete, change or delete your tasks.');
  $('#chat-messages').replaceChildren(...(items.length ? items : [empty]));
  $('#chat-title').textContent = c.openId ? c.title || 'Conversation' : 'New chat';
  scrollMessages(true);
}

// Keeps the newest message in view, unless the reader scrolled up (or `force`).
function scrollMessages(force = false) {
  const list = $('#chat-messages');
  if (force || list.scrollHeight - list.scrollTop - list.clientHeight < 80) list.scrollTop = list.scrollHeight;
}

function userItem(message) {
  return h('li', { class: 'msg user', dataset: { role: 'user', state: 'done' } },
    h('div', { class: 'bubble' }, message.content),
    h('div', { class: 'meta sub', title: fmtTime(message.at) }, fmtClock(message.at)));
}

// An assistant message: its text, the tool calls it made, and who answered at what cost.
// `message` is a stored message or a job's result shaped like one.
function assistantItem(message, turnState = 'done') {
  const node = h('li', { class: 'msg assistant', dataset: { role: 'assistant' } });
  fillAssistant(node, message, turnState);
  return node;
}

function fillAssistant(node, message, turnState, note = '') {
  const usage = message.usage ?? {};
  const tokens = usage.input_tokens || usage.output_tokens
    ? `${fmtCount(usage.input_tokens)} + ${fmtCount(usage.output_tokens)} tokens` : null;
  node.dataset.state = turnState;
  refill(node,
    h('div', { class: 'bubble' }, message.content ?? ''),
    toolCallList(message.tool_calls),
    note ? h('div', { class: 'note' }, note) : null,
    turnState === 'pending' ? null
      : h('div', { class: 'meta sub', title: fmtTime(message.at) },
        [fmtClock(message.at), message.model, tokens].filter(Boolean).join(' · ')));
}

function toolCallList(calls) {
  if (!Array.isArray(calls) || !calls.length) return null;
  return h('ul', { class: 'tool-calls' }, calls.map(toolCallItem));
}

// `name {arguments} → what came of it`, the full JSON in the titles.
function toolCallItem(call) {
  const result = call.result;
  const failed = call.error === true || (result != null && typeof result === 'object' && 'error' in result);
  const args = call.arguments == null ? '' : JSON.stringify(call.arguments);
  return h('li', { class: `tool-call${failed ? ' failed' : ''}`, dataset: { tool: call.name } },
    h('span', { class: 'tool-name' }, call.name),
    args && args !== '{}' ? h('code', { class: 'tool-args', title: pretty(call.arguments) }, truncate(args, 120)) : null,
    ' → ',
    failed ? [badge('error', 'error'), ' '] : null,
    h('span', { class: 'tool-result', title: pretty(result ?? null) }, describeToolResult(result, failed)));
}

function describeToolResult(result, failed) {
  if (result == null) return '—';
  if (typeof result !== 'object') return truncate(String(result), 120);
  if (failed) return truncate(String(result.message ?? result.error), 160);
  const task = (t) => `“${t.title}” (${t.status})`;
  if (result.task) return task(result.task);
  if (Array.isArray(result.tasks)) {
    const n = result.total ?? result.tasks.length;
    return truncate(`${n} task${n === 1 ? '' : 's'}${result.tasks.length ? `: ${result.tasks.map(task).join(', ')}` : ''}`, 160);
  }
  if (result.deleted) return `deleted “${result.deleted.title}”`;
  return truncate(JSON.stringify(result), 120);
}

function updateSendButton() {
  const waiting = Boolean(state.chat.pending);
  Object.assign($('#chat-send'), { disabled: waiting, title: waiting ? 'Waiting for the reply…' : '' });
}

// Sends the box's message to the open conversation (or a new one): the message shows at once,
// then the reply as it is written (the job's job_progress events), then its tool calls.
async function sendChat() {
  const c = state.chat;
  const input = $('#chat-input');
  const message = input.value.trim();
  if (!message || c.pending) return;
  setChatError('');
  const now = new Date().toISOString();
  const pending = {
    conversationId: c.openId, // null until the API names the new conversation
    jobId: null,
    text: '', // the reply so far
    note: '',
    seqs: new Set(), // events seen, as a reconnect may replay some
    stream: null,
    ending: false,
    userNode: userItem({ content: message, at: now }),
    replyNode: assistantItem({ content: '' }, 'pending'),
  };
  c.pending = pending;
  input.value = '';
  updateSendButton();
  renderConversations(); // its delete button waits for the reply
  $('#chat-messages > li.empty')?.remove();
  $('#chat-messages').append(pending.userNode, pending.replyNode);
  scrollMessages(true);

  let answer;
  try {
    const body = pending.conversationId ? { message, conversation_id: pending.conversationId } : { message };
    answer = await api('POST', '/v1/chat?wait=0', body);
  } catch (err) {
    if (state.chat !== c) return;
    c.pending = null;
    pending.userNode.remove();
    pending.replyNode.remove();
    if (!input.value) input.value = message; // nothing typed is lost: send it again once fixed
    updateSendButton();
    if (err.silent || err.status === 401) return;
    if (err.status === 404 && pending.conversationId === c.openId) {
      newChat();
      input.value = message;
      refreshConversations().catch(reportError);
    } else if (!$('#chat-messages').children.length) {
      renderMessages([]);
    }
    setChatError(chatErrorText(err));
    renderConversations();
    return;
  }
  if (state.chat !== c || c.pending !== pending) return;
  pending.jobId = answer.job_id;
  // A new chat is the conversation the API started, if it is still the one shown.
  if (!pending.conversationId && !c.openId) {
    [c.openId, c.title] = [answer.conversation_id, truncate(message, 60)];
    $('#chat-title').textContent = c.title;
  }
  pending.conversationId = answer.conversation_id;
  if (answer.response != null) completeTurn(pending, answer); // answered at once (a repeat)
  else followTurn(pending);
}

function followTurn(pending) {
  const live = showLiveStatus('#chat-live');
  pending.stream = openStream(`/v1/jobs/${encodeURIComponent(pending.jobId)}/events`, {
    onEvent: (name, event) => onTurnEvent(pending, name, event),
    // The stream replays what was missed, and the server ends it after the terminal event.
    reconnect: () => !pending.ending && state.chat.pending === pending,
    onStatus: (status) => {
      if (state.chat.pending !== pending) return;
      live(status);
      // Ended without the job's end (e.g. a 4xx): the job says how it stands.
      if (status === 'closed') endTurn(pending);
    },
  });
}

function onTurnEvent(pending, name, event) {
  if (state.chat.pending !== pending) return;
  const seq = String(event.seq);
  if (pending.seqs.has(seq)) return;
  pending.seqs.add(seq);
  const details = event.details ?? {};
  if (name === 'job_started') {
    pending.text = ''; // another attempt writes its reply from the start
  } else if (name === 'job_progress') {
    pending.text += details.message ?? '';
    pending.note = '';
  } else if (name === 'job_failed') {
    pending.note = `Attempt ${details.attempt ?? '?'} failed: ${details.error ?? 'no reason given'}`;
  } else if (name === 'job_retry_scheduled') {
    pending.note = `${pending.note || 'An attempt failed'}; trying again${details.retry_at ? ` ${fmtRelative(details.retry_at)}` : ''}…`;
  }
  if (TERMINAL_EVENTS.has(name)) {
    endTurn(pending);
    return;
  }
  fillAssistant(pending.replyNode, { content: pending.text }, 'pending', pending.note);
  scrollMessages();
}

// The job ended (or its stream did): its result or its error ends the turn.
async function endTurn(pending) {
  if (pending.ending) return;
  pending.ending = true;
  let job;
  try {
    job = await api('GET', `/v1/jobs/${encodeURIComponent(pending.jobId)}`);
  } catch (err) {
    if (!err.silent) failTurn(pending, `The reply could not be read: ${err.message}`);
    return;
  }
  if (job.state === 'succeeded' && job.result) completeTurn(pending, job.result);
  else if (job.state === 'cancelled') failTurn(pending, 'The chat job was cancelled before it answered.');
  else if (TERMINAL_STATES.has(job.state)) failTurn(pending, turnErrorText(job.error));
  else failTurn(pending, 'The reply stopped arriving, but it may still come: open the conversation again in a while.');
}

function completeTurn(pending, result) {
  const c = state.chat;
  if (c.pending !== pending) return;
  c.pending = null;
  fillAssistant(pending.replyNode, {
    content: result.response ?? '', tool_calls: result.tool_calls, model: result.model,
    usage: result.usage, at: new Date().toISOString(),
  }, 'done');
  finishTurn();
}

function failTurn(pending, text) {
  const c = state.chat;
  if (c.pending !== pending) return;
  c.pending = null;
  fillAssistant(pending.replyNode, { content: pending.text }, 'failed', text);
  finishTurn();
}

function finishTurn() {
  updateSendButton();
  showLiveStatus('#chat-live')('closed');
  scrollMessages();
  // The conversation is listed (or moves up) once its turn is stored; the tokens are counted.
  refreshChat().catch(reportError);
}

// ---------------------------------------------------------------- wiring

function init() {
  $('#login-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const key = $('#api-key').value.trim();
    if (key) login(key);
  });
  $('#logout').addEventListener('click', () => logout());
  $('#error-dismiss').addEventListener('click', () => { $('#error-banner').hidden = true; });
  for (const button of $$('button[data-tab]')) {
    button.addEventListener('click', () => showTab(button.dataset.tab));
  }
  $('#job-filters').addEventListener('submit', (event) => {
    event.preventDefault();
    state.jobs.filters = readFilters();
    clearDebounces('jobs');
    refreshJobs(true).catch(reportError);
  });
  $('#jobs-more').addEventListener('click', () => loadMoreJobs().catch(reportError));
  $('#jobs-table tbody').addEventListener('click', (event) => {
    const tr = event.target.closest('tr[data-job-id]');
    if (tr) openJob(tr.dataset.jobId);
  });
  $('#job-close').addEventListener('click', closeDetail);
  $('#job-retry').addEventListener('click', () => jobAction('retry'));
  $('#connector-provider').addEventListener('change', showConnectorFields);
  showConnectorFields();
  $('#connector-form').addEventListener('submit', createConnector);
  $('#connectors-test-all').addEventListener('click', testAllConnectors);
  $('#job-cancel').addEventListener('click', () => jobAction('cancel'));
  $('#chat-form').addEventListener('submit', (event) => { event.preventDefault(); sendChat(); });
  $('#chat-input').addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) { event.preventDefault(); sendChat(); }
  });
  $('#chat-new').addEventListener('click', newChat);
  $('#conversations-more').addEventListener('click', () => {
    state.chat.pages++;
    refreshConversations().catch(reportError);
  });
  resetChat();
  // A typed or bookmarked #queues etc. switches tabs.
  window.addEventListener('hashchange', () => {
    if (state.me && location.hash.slice(1) !== state.tab) showTab(location.hash.slice(1));
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Escape' && state.detail) closeDetail();
  });

  const saved = sessionStorage.getItem(KEY_STORAGE);
  if (saved) login(saved);
  else $('#api-key').focus();
}

init();
