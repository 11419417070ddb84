// tq dashboard: reads /api/queues, /api/tqd and /api/task?id=N from the
// tqd that serves this page, and refreshes itself.  Read-only.  Every value
// is written with textContent, never as HTML: errors, logs and results are
// whatever task handlers wrote.
//
// A tqd with http_token_file wants its token on every /api request.  It is
// given once, as /#token=TOKEN (a fragment never reaches a server, a log or
// a Referer), taken out of the address at once, and kept in this tab's
// sessionStorage: per origin (scheme, host and port), gone with the tab.
// Not a cookie: a cookie for a host goes to every port of that host.
'use strict';

(() => {
  const FINAL = new Set(['succeeded', 'dead', 'cancelled', 'expired']);
  const OUTCOMES = ['succeeded', 'failed', 'throttled', 'fatal', 'released', 'dropped'];
  const params = new URLSearchParams(location.search);
  const interval = (() => {
    const v = Number(params.get('refresh') ?? 2);
    return Number.isFinite(v) && v >= 0.5 ? v : 2;
  })();
  let timer = null;
  let shownTask = null; // {id, state} of the task on show
  // What each table shows, as JSON: a table is rebuilt only when it changes
  // (a rebuild would end a text selection and swap what a click aims at).
  const shown = {};

  function changed(what, data) {
    const key = JSON.stringify(data);
    if (shown[what] === key) return false;
    shown[what] = key;
    return true;
  }

  const $ = (sel) => document.querySelector(sel);

  const TOKEN_KEY = 'tqd-token';
  let token = null;
  try {
    token = sessionStorage.getItem(TOKEN_KEY);
  } catch (e) {
    token = null; // storage turned off: the token lasts until a reload
  }

  // #token=TOKEN in the address: keep it, and take it out of the address
  // (and so out of the history).  True if there was one.
  function takeToken() {
    const m = /^#token=(.+)$/.exec(location.hash);
    if (!m) return false;
    try {
      token = decodeURIComponent(m[1]);
    } catch (e) {
      token = m[1];
    }
    try {
      sessionStorage.setItem(TOKEN_KEY, token);
    } catch (e) {
      // kept in memory only
    }
    history.replaceState(null, '', location.pathname + location.search);
    return true;
  }

  // What to say when tqd refused to answer, or null.
  function refusal(status) {
    if (status === 401) {
      return token
        ? 'tqd refused the token: open this page as /#token=TOKEN with the token of its http_token_file'
        : 'this tqd needs a token: open this page as /#token=TOKEN with the token of its http_token_file';
    }
    if (status === 421) return 'tqd does not answer to this host name: add it to http_allowed_hosts';
    return null;
  }

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function cell(field, text, cls) {
    const td = el('td', text, cls);
    td.dataset.field = field;
    return td;
  }

  function num(n) {
    return n === null || n === undefined ? '' : Number(n).toLocaleString('en-US');
  }

  function rate(n) {
    if (n === null || n === undefined) return '';
    return Number(n).toLocaleString('en-US', { maximumFractionDigits: 2 });
  }

  function percent(r) {
    if (r === null || r === undefined) return '–';
    return (Number(r) * 100).toLocaleString('en-US', { maximumFractionDigits: 1 }) + ' %';
  }

  // Seconds as "850 ms", "12.3 s", "4.5 min", "3.2 h", "2.1 d".
  function duration(secs) {
    if (secs === null || secs === undefined) return '';
    const s = Number(secs);
    if (s < 1) return Math.round(s * 1000) + ' ms';
    if (s < 60) return s.toFixed(1) + ' s';
    if (s < 3600) return (s / 60).toFixed(1) + ' min';
    if (s < 86400) return (s / 3600).toFixed(1) + ' h';
    return (s / 86400).toFixed(1) + ' d';
  }

  function time(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    const p = (n, w = 2) => String(n).padStart(w, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ` +
      `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
  }

  async function getJSON(url) {
    let r;
    try {
      const headers = token ? { Authorization: 'Bearer ' + token } : {};
      r = await fetch(url, { cache: 'no-store', headers });
    } catch (e) {
      return { status: 0, body: null };
    }
    let body = null;
    try {
      body = await r.json();
    } catch (e) {
      body = null;
    }
    return { status: r.status, body };
  }

  function setStatus(text, error) {
    const s = $('#status');
    s.textContent = text;
    s.classList.toggle('error', !!error);
  }

  function taskButton(id) {
    const b = el('button', id, 'link');
    b.type = 'button';
    b.addEventListener('click', () => { location.hash = 'task=' + id; });
    return b;
  }

  function renderQueues(data) {
    $('#database').textContent = data.database;
    if (changed('queues', data.queues)) renderQueueRows(data);
    if (changed('dead', data.dead_recent)) renderDeadRows(data);
  }

  function renderQueueRows(data) {
    const rows = data.queues.map((q) => {
      const a1 = (q.activity && q.activity['1']) || {};
      const a5 = (q.activity && q.activity['5']) || {};
      const a15 = (q.activity && q.activity['15']) || {};
      const tr = el('tr');
      tr.dataset.queue = q.queue;
      const name = cell('queue', q.queue);
      if (q.paused) name.appendChild(el('span', 'paused', 'badge'));
      const dead = q.dead >= 1000 ? '1,000+' : num(q.dead);
      tr.append(
        name,
        cell('ready', num(q.ready)),
        cell('scheduled', num(q.scheduled)),
        cell('held', num(q.held)),
        cell('running', num(q.running)),
        cell('next_ready_wait', duration(q.next_ready_wait)),
        cell('lease_rate', rate(q.lease_rate)),
        cell('per_sec', rate(a1.per_sec)),
        cell('done_5', num((a5.succeeded || 0) + (a5.dead || 0) + (a5.other || 0))),
        cell('failure_rate', percent(a5.failure_rate), a5.failure_rate > 0 ? 'bad' : ''),
        cell('dead_15', num(a15.dead), a15.dead > 0 ? 'bad' : 'zero'),
        cell('dead', dead, q.dead > 0 ? '' : 'zero'));
      return tr;
    });
    $('#queues tbody').replaceChildren(...rows);
    $('#queues-empty').hidden = rows.length > 0;
  }

  function renderDeadRows(data) {
    const dead = data.dead_recent.map((t) => {
      const tr = el('tr');
      tr.dataset.task = t.id;
      const id = cell('id');
      id.appendChild(taskButton(t.id));
      tr.append(id, cell('queue', t.queue), cell('tenant', t.tenant), cell('attempts', t.attempts),
        cell('finished_at', time(t.finished_at)), cell('last_error', t.last_error, 'text'));
      return tr;
    });
    $('#dead tbody').replaceChildren(...dead);
    $('#dead').hidden = dead.length === 0;
    $('#dead-empty').hidden = dead.length > 0;
  }

  function renderTqd(t) {
    $('#tqd-worker').textContent = `${t.worker} (tqd ${t.version})`;
    const down = Object.entries(t.connected).filter(([, up]) => !up).map(([k]) => k);
    $('#tqd-summary').textContent =
      `${t.running} of ${t.slots} slots running, ${t.outcomes_waiting} outcomes waiting to be ` +
      `reported, up ${duration(Date.now() / 1000 - t.started_at)}` +
      (down.length ? `; not connected: ${down.join(', ')}` : '; connected');
    if (changed('tqd-queues', t.queues)) renderTqdQueues(t);
    if (changed('tqd-endpoints', t.endpoints)) renderTqdEndpoints(t);
  }

  function renderTqdQueues(t) {
    $('#tqd-queues tbody').replaceChildren(...t.queues.map((q) => {
      const tr = el('tr');
      tr.dataset.queue = q.queue;
      tr.append(cell('queue', q.queue), cell('handler', q.handler),
        cell('running', `${q.running} / ${q.concurrency}`), cell('started', num(q.started)),
        ...OUTCOMES.map((k) => cell(k, num(q.outcomes[k]))));
      return tr;
    }));
  }

  function renderTqdEndpoints(t) {
    $('#tqd-endpoints').hidden = t.endpoints.length === 0;
    $('#tqd-endpoints tbody').replaceChildren(...t.endpoints.map((e) => {
      const tr = el('tr');
      tr.append(cell('url', e.url, 'text'), cell('window', rate(e.window)), cell('limit', e.limit),
        cell('in_flight', e.in_flight), cell('answers', num(e.answers)),
        cell('throttled', num(e.throttled)), cell('cuts', num(e.cuts)));
      return tr;
    }));
  }

  function field(dl, name, label, value, cls) {
    const dt = el('dt', label);
    const dd = el('dd', value === null || value === undefined ? '–' : value, cls);
    dd.id = 'task-' + name;
    dl.append(dt, dd);
  }

  function pretty(v) {
    if (v === null || v === undefined) return '';
    return typeof v === 'string' ? v : JSON.stringify(v, null, 2);
  }

  function showMessage(text, error) {
    const m = $('#task-message');
    m.textContent = text;
    m.hidden = !text;
    m.classList.toggle('error', !!error);
  }

  function renderTask(data) {
    const t = data.task;
    const dl = $('#task-fields');
    dl.replaceChildren();
    field(dl, 'id', 'Id', t.id);
    field(dl, 'queue', 'Queue', t.queue);
    field(dl, 'state', 'State', t.state + (t.cancel_requested ? ' (cancel requested)' : ''),
      'state-' + t.state);
    field(dl, 'tenant', 'Tenant', t.tenant);
    field(dl, 'priority', 'Priority', t.priority);
    field(dl, 'attempts', 'Attempts', `${t.attempts} of ${t.max_attempts}`);
    field(dl, 'submitted_at', 'Submitted', time(t.submitted_at));
    field(dl, 'run_at', 'Run at', time(t.run_at));
    field(dl, 'first_started_at', 'First started', time(t.first_started_at));
    field(dl, 'finished_at', 'Finished', time(t.finished_at));
    field(dl, 'worker', 'Worker', t.worker);
    field(dl, 'lease_until', 'Lease until', time(t.lease_until));
    field(dl, 'expires_at', 'Expires', time(t.expires_at));
    field(dl, 'dedup_key', 'Dedup key', t.dedup_key);
    if (t.traceparent !== undefined) field(dl, 'traceparent', 'Traceparent', t.traceparent);
    field(dl, 'last_error', 'Last error', t.last_error, t.last_error ? 'state-dead' : '');

    $('#task-trace tbody').replaceChildren(...data.trace.map((a) => {
      const tr = el('tr');
      tr.dataset.attempt = a.attempt;
      tr.append(cell('attempt', a.attempt), cell('ready_at', time(a.ready_at)),
        cell('leased_at', time(a.leased_at)), cell('worker', a.worker),
        cell('ended_at', time(a.ended_at)), cell('outcome', a.outcome ?? 'running'),
        cell('queue_wait', duration(a.queue_wait_s)),
        cell('run_time', duration(a.run_time_s)),
        cell('error', a.error, 'text'));
      return tr;
    }));
    $('#task-result').textContent = t.result === null ? '(none)' : pretty(t.result);
    $('#task-log').textContent = data.log.length === 0
      ? '(no log lines)'
      : data.log.map((l) => `[attempt ${l.attempt}] ${l.line}`).join('\n');
    $('#task-payload').textContent = pretty(t.payload);
    $('#task').hidden = false;
  }

  async function loadTask(id, quiet) {
    const r = await getJSON('api/task?id=' + encodeURIComponent(id));
    if (!shownTask || shownTask.id !== id) return; // another look-up began meanwhile
    if (r.status === 200 && r.body && r.body.task) {
      showMessage('');
      if (changed('task', r.body) || $('#task').hidden) renderTask(r.body);
      shownTask = { id, state: r.body.task.state };
    } else if (r.status === 404) {
      $('#task').hidden = true;
      showMessage(`No task ${id}: never submitted, or removed by retention.`, true);
      shownTask = { id, state: 'missing' };
    } else if (!quiet) {
      showMessage(refusal(r.status) || (r.body && r.body.error) ||
        `tqd answered ${r.status || 'nothing'}`, true);
    }
  }

  function taskFromHash() {
    const m = /^#task=(\d+)$/.exec(location.hash);
    if (!m) return;
    $('#task-id').value = m[1];
    shownTask = { id: m[1], state: null };
    loadTask(m[1], false);
  }

  async function refresh() {
    const [queues, tqd] = await Promise.all([getJSON('api/queues'), getJSON('api/tqd')]);
    if (queues.status === 200 && queues.body) {
      renderQueues(queues.body);
      setStatus('updated ' + time(queues.body.now).slice(11, 19), false);
    } else if (queues.status === 0) {
      setStatus('tqd is unreachable', true);
    } else if (refusal(queues.status)) {
      setStatus(refusal(queues.status), true);
    } else {
      setStatus((queues.body && queues.body.error) || `tqd answered ${queues.status}`, true);
    }
    if (tqd.status === 200 && tqd.body) renderTqd(tqd.body);
    // A task not finished yet is followed; an unknown id is not.
    if (shownTask && shownTask.state !== null && shownTask.state !== 'missing' &&
        !FINAL.has(shownTask.state)) {
      await loadTask(shownTask.id, true);
    }
  }

  function schedule() {
    clearTimeout(timer);
    if ($('#auto').checked) {
      timer = setTimeout(async () => {
        await refresh();
        schedule();
      }, interval * 1000);
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('#interval').textContent = interval;
    $('#lookup').addEventListener('submit', (ev) => {
      ev.preventDefault();
      const id = $('#task-id').value.trim();
      if (!/^\d{1,19}$/.test(id)) {
        shownTask = null; // nothing to follow
        $('#task').hidden = true;
        showMessage('A task id is a positive whole number.', true);
        return;
      }
      if (location.hash === '#task=' + id) taskFromHash();
      else location.hash = 'task=' + id;
    });
    window.addEventListener('hashchange', () => {
      if (takeToken()) refresh();
      else taskFromHash();
    });
    $('#auto').addEventListener('change', schedule);
    takeToken();
    taskFromHash();
    refresh().then(schedule);
  });
})();
