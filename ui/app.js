// The status window: renders the agent's snapshot (pushed as the `status`
// event, and polled every second for the byte counters) and calls the
// app's commands. No remote assets, no innerHTML.
'use strict';

const tauri = window.__TAURI__;
const invoke = tauri.core.invoke;
const $ = (id) => document.getElementById(id);
let current = null;

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function bytes(n) {
  const units = ['B', 'kB', 'MB', 'GB', 'TB'];
  let v = n, i = 0;
  // 999 999 B is "1.0 MB", not "1000 kB".
  while (v >= 999.5 && i < units.length - 1) { v /= 1000; i++; }
  return i === 0 ? `${n} B` : `${v.toFixed(v >= 99.95 ? 0 : 1)} ${units[i]}`;
}

// A line of pieces that each stay whole; the line wraps between them.
function pieces(cls, parts) {
  const line = el('div', cls);
  parts.forEach((p, i) => {
    if (i) line.appendChild(document.createTextNode(' '));
    line.appendChild(el('span', 'nw', p));
  });
  return line;
}

function clock(unix) {
  return new Date(unix * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

function relative(unix) {
  const s = Math.round(unix - Date.now() / 1000);
  const span = (x) => x < 60 ? `${x} s` : x < 3600 ? `${Math.floor(x / 60)} min` : `${Math.floor(x / 3600)} h ${Math.floor((x % 3600) / 60)} min`;
  return s >= 0 ? `in ${span(s)}` : `${span(-s)} ago`;
}

function dotClass(phase) {
  switch (phase.state) {
    case 'connected': return 'connected';
    case 'connecting': case 'reconnecting': return 'connecting';
    case 'failed': return 'error';
    default: return '';
  }
}

let toastTimer = null;
function toast(text, bad) {
  const t = $('toast');
  t.textContent = text;
  t.style.color = bad ? 'var(--bad)' : 'var(--ok)';
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.textContent = ''; }, 2500);
}

async function call(cmd, args) {
  try {
    return await invoke(cmd, args || {});
  } catch (e) {
    toast(e && e.message ? e.message : String(e), true);
    return undefined;
  }
}

function render(s) {
  current = s;
  $('status-line').textContent = s.status_line;
  $('dot').className = 'dot ' + dotClass(s.phase);
  document.title = `Gangway — ${s.status_line}`;

  const sel = $('env-select');
  const names = s.environments.map((e) => e.name).join('\n');
  if (sel.dataset.names !== names) {
    sel.textContent = '';
    for (const e of s.environments) {
      const o = el('option', null, e.name);
      o.value = e.name;
      o.title = e.relay;
      sel.appendChild(o);
    }
    sel.dataset.names = names;
  }
  sel.disabled = s.environments.length === 0;
  if (s.environment) sel.value = s.environment;

  const signedIn = s.user && !['sign_in_needed', 'signed_out'].includes(s.phase.state);
  $('user-label').textContent = signedIn ? 'Signed in as' : 'Account';
  $('user').textContent = signedIn ? s.user : (s.phase.state === 'no_environment' ? 'No environment configured' : 'Not signed in');
  let token = '';
  if (signedIn && s.token_expires_at) {
    token = `Access token expires ${relative(s.token_expires_at)} (${clock(s.token_expires_at)})` +
      (s.refreshable ? ' · renewed automatically' : '');
  } else if (s.phase.state === 'no_environment') {
    token = 'Add one in a terminal: gangway env add NAME https://RELAY';
  } else if (s.phase.state === 'sign_in_needed' || s.phase.state === 'signed_out') {
    token = `Sign in to reach ${s.environment}.`;
  }
  if (signedIn && s.groups.length) token += (token ? ' · ' : '') + 'groups: ' + s.groups.join(', ');
  $('token').textContent = token;

  const wantsSignIn = s.interactive && s.environment && ['sign_in_needed', 'signed_out'].includes(s.phase.state);
  $('sign-in').hidden = !(wantsSignIn || s.signing_in);
  $('sign-in').textContent = s.signing_in ? 'Open the browser again' : 'Sign in…';
  const running = ['connected', 'connecting', 'reconnecting'].includes(s.phase.state);
  $('sign-out').hidden = !(s.interactive && s.environment && running) || !!s.signing_in;
  $('signing-in').hidden = !s.signing_in;
  $('signing-in-url').textContent = s.signing_in || '';

  const body = $('tunnels');
  body.textContent = '';
  for (const t of s.services) {
    const tr = el('tr');
    const name = el('td', 't-svc');
    name.appendChild(el('div', 'svc-name', t.display_name));
    name.appendChild(el('div', 'svc-kind', `${t.name} · ${t.kind}`));
    tr.appendChild(name);
    const addr = el('td', t.local_addr ? 't-addr mono' : 't-addr', t.local_addr || '');
    if (t.error) addr.appendChild(el('div', 'err', t.error));
    tr.appendChild(addr);
    const st = el('td', 't-state');
    const chipClass = t.state === 'listening' ? 'listening' : t.state === 'waiting' ? 'waiting' : 'failed';
    st.appendChild(el('span', 'chip ' + chipClass, t.state));
    tr.appendChild(st);
    const act = el('td', 't-act num');
    if (t.local_addr) {
      act.appendChild(pieces(null, [`${t.active_streams} open ·`, `${t.total_streams} total`]));
      act.appendChild(pieces('svc-kind', [`↑ ${bytes(t.bytes_up)}`, `↓ ${bytes(t.bytes_down)}`]));
    } else {
      act.textContent = '—';
    }
    tr.appendChild(act);
    tr.appendChild(el('td', 't-rtt num nw', t.open_rtt_ms == null ? '—' : `${t.open_rtt_ms.toFixed(1)} ms`));
    body.appendChild(tr);
  }
  $('no-tunnels').hidden = s.services.length > 0;
  $('no-tunnels').textContent = s.phase.state === 'connecting' ? 'Connecting to the relay…' : 'No tunnels yet.';

  $('confluence-url').textContent = s.links.confluence || '—';
  $('open-confluence').disabled = !s.links.confluence;
  $('clone-http').textContent = s.links.clone_http || '—';
  $('clone-ssh').textContent = s.links.clone_ssh || '—';
  for (const b of document.querySelectorAll('[data-copy]')) {
    b.disabled = !s.links[b.dataset.copy.replace('-', '_')];
  }

  const door = s.door || {};
  let guard;
  if (!door.uid_checked) guard = 'Other users of this computer are not checked on this platform.';
  else guard = `Only ${door.owner} on this computer can use these ports.`;
  $('door-guard').textContent = guard;
  const warnings = $('door-warnings');
  warnings.textContent = '';
  for (const w of door.open_to_network || []) warnings.appendChild(el('li', 'err', w));
  const last = door.last_refused;
  $('door-refused').textContent = last
    ? `Last refused at ${clock(last.at)}: ${last.caller} on ${last.service} — ${last.reason}` +
      (door.refused > 1 ? ` (${door.refused} refused since Gangway started)` : '')
    : 'No local caller refused.';

  const list = $('problems');
  list.textContent = '';
  for (const p of s.problems) {
    const li = el('li');
    li.appendChild(el('span', 'when', clock(p.at)));
    const what = el('div');
    what.appendChild(el('div', null, p.text));
    if (p.detail) what.appendChild(el('div', 'detail', p.detail));
    li.appendChild(what);
    list.appendChild(li);
  }
  $('no-problems').hidden = s.problems.length > 0;
  $('about').textContent = `Gangway ${s.version} · closing this window keeps Gangway running in the tray`;
}

async function refresh() {
  const s = await call('status');
  if (s) render(s);
}

$('env-select').addEventListener('change', async (e) => {
  const name = e.target.value;
  if (current && name !== current.environment) {
    const s = await call('use_environment', { name });
    if (s) { render(s); toast(`Switched to ${name}`); }
  }
});
$('sign-in').addEventListener('click', () => call('sign_in'));
$('sign-out').addEventListener('click', () => call('sign_out'));
$('open-confluence').addEventListener('click', () => call('open_confluence'));
$('copy-sign-in-url').addEventListener('click', async () => {
  if (current && current.signing_in && (await call('copy_text', { text: current.signing_in })) !== undefined) toast('Copied');
});
for (const b of document.querySelectorAll('[data-copy]')) {
  b.addEventListener('click', async () => {
    const text = current && current.links[b.dataset.copy.replace('-', '_')];
    if (text && (await call('copy_text', { text })) !== undefined) toast('Copied ' + text);
  });
}
$('copy-diagnostics').addEventListener('click', async () => {
  if ((await call('copy_diagnostics')) !== undefined) toast('Diagnostics copied');
});

tauri.event.listen('status', (e) => render(e.payload));
refresh();
setInterval(refresh, 1000);
