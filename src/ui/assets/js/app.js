// The console's frame: sign-in, the sidebar, the hash routes (#/volumes/db), and the
// live updates — each event from the log names the topics it touches, and the page on
// screen is refreshed once for a burst of them (debounced), never on a timer.

import * as api from './api.js';
import * as events from './events.js';
import { h, fill, toast } from './view.js';
import * as dashboard from './pages/dashboard.js';
import * as volumes from './pages/volumes.js';
import * as volume from './pages/volume.js';
import * as nodes from './pages/nodes.js';
import * as backups from './pages/backups.js';
import * as jobs from './pages/jobs.js';
import * as settings from './pages/settings.js';

const ROUTES = [
  { path: /^\/?$/, page: dashboard, nav: '' },
  { path: /^\/volumes$/, page: volumes, nav: 'volumes' },
  { path: /^\/volumes\/([^/]+)$/, page: volume, nav: 'volumes' },
  { path: /^\/nodes$/, page: nodes, nav: 'nodes' },
  { path: /^\/backups$/, page: backups, nav: 'backups' },
  { path: /^\/jobs$/, page: jobs, nav: 'jobs' },
  { path: /^\/settings$/, page: settings, nav: 'settings' },
];

const NAV = [
  ['', 'Dashboard'],
  ['volumes', 'Volumes'],
  ['nodes', 'Nodes'],
  ['backups', 'Backups'],
  ['jobs', 'Recurring jobs'],
  ['settings', 'Settings'],
];

/** How long a burst of events may last before the page refreshes once. */
const DEBOUNCE_MS = 250;

const root = document.getElementById('app');
let current = null; // { page, view, main, pending: Set, timer, refreshing }
let unsubscribe = null;

function signInPage(message) {
  const input = h('input', {
    type: 'password', name: 'token', id: 'token', autocomplete: 'current-password',
    placeholder: 'API token', required: true, spellcheck: 'false',
  });
  const error = h('div', { class: 'error', role: 'alert' }, message || '');
  const button = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', { class: 'panel', id: 'signin' },
    h('div', { class: 'brand' }, h('img', { src: '/ui/icon.svg', alt: '' }), 'Shorthorn'),
    h('p', {}, 'Sign in with the cluster\'s API token. A dev cluster keeps it in ',
      h('code', {}, '.shorthorn-dev/token'), '; in Kubernetes it is the ',
      h('code', {}, 'shorthorn-api-token'), ' Secret.'),
    h('label', { for: 'token' }, 'API token'),
    input, error, button);
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    button.disabled = true;
    error.textContent = '';
    try {
      const status = await api.signIn(input.value);
      startSession(status);
    } catch (err) {
      error.textContent = err.message;
      button.disabled = false;
      input.select();
    }
  });
  fill(root, h('div', { class: 'signin' }, form));
  input.focus();
}

function shell() {
  const nav = h('nav', { class: 'nav' },
    NAV.map(([key, label]) => h('a', { href: `#/${key}`, data: { nav: key } }, label)));
  const dot = h('span', { class: 'dot' });
  const liveText = h('span', {}, 'connecting');
  const cluster = h('div', { class: 'muted', id: 'cluster-status' });
  const live = h('div', { class: 'live', title: 'the event stream of /v1/events' }, dot, liveText);
  const signOut = h('button', { type: 'button', class: 'small' }, 'Sign out');
  signOut.addEventListener('click', () => {
    api.signOut();
    endSession();
    signInPage();
  });
  const main = h('main', { class: 'main', id: 'main' });
  fill(root, h('div', { class: 'shell' },
    h('aside', { class: 'sidebar' },
      h('div', { class: 'brand' }, h('img', { src: '/ui/icon.svg', alt: '' }), 'Shorthorn'),
      nav,
      h('div', { class: 'side-foot' },
        live,
        cluster, signOut)),
    main));
  return { nav, main, dot, liveText, live, cluster };
}

let frame = null;

function startSession(status) {
  frame = shell();
  showCluster(status);
  let connections = 0;
  events.onStatus((state) => {
    if (!frame) return;
    if (state === 'live') connections += 1;
    frame.dot.className = `dot ${state === 'live' ? 'on' : 'off'}`;
    frame.liveText.textContent = state === 'live' ? 'live' : state;
    // How many times the stream was (re)connected: 1 until a disconnect.
    frame.live.dataset.connections = String(connections);
  });
  unsubscribe = events.onEvent(onEvent);
  // Some history for "recent events", then everything new.
  events.start(Math.max(1, (status.applied ?? 0) - 1000));
  route();
}

function showCluster(status) {
  if (!frame) return;
  const leader = status.leader ? `leader: member ${status.leader}` : 'no leader';
  frame.cluster.textContent = `manager ${status.id} · ${leader}`;
}

/** The manager's Raft status in the sidebar, at most every few seconds (after a refresh). */
let clusterAsked = 0;
async function refreshCluster() {
  if (Date.now() - clusterAsked < 5000) return;
  clusterAsked = Date.now();
  try {
    showCluster(await api.get('/v1/cluster'));
  } catch {
    // Shown again at the next refresh.
  }
}

function endSession() {
  events.stop();
  if (unsubscribe) unsubscribe();
  unsubscribe = null;
  if (current?.view?.unmount) current.view.unmount();
  current = null;
  frame = null;
}

function onEvent(event, topics) {
  if (!current) return;
  const wants = current.view.topics ? current.view.topics(topics, event) : false;
  if (!wants) return;
  schedule();
}

function schedule() {
  if (!current || current.timer) return;
  current.timer = setTimeout(() => refreshNow(current), DEBOUNCE_MS);
}

async function refreshNow(entry) {
  entry.timer = null;
  if (entry !== current) return;
  if (entry.refreshing) {
    entry.again = true;
    return;
  }
  entry.refreshing = true;
  try {
    await entry.view.refresh();
    refreshCluster();
  } catch (err) {
    if (err.status !== 401) toast(err.message, true);
  } finally {
    entry.refreshing = false;
    if (entry.again && entry === current) {
      entry.again = false;
      schedule();
    }
  }
}

function route() {
  if (!frame) return;
  const path = decodeURIComponent(location.hash.replace(/^#/, '')) || '/';
  const found = ROUTES.map((r) => ({ r, m: path.match(r.path) })).find((x) => x.m);
  if (current?.view?.unmount) current.view.unmount();
  if (current?.timer) clearTimeout(current.timer);
  for (const a of frame.nav.querySelectorAll('a')) {
    a.classList.toggle('active', found ? a.dataset.nav === found.r.nav : false);
  }
  const main = frame.main;
  main.replaceChildren();
  if (!found) {
    main.appendChild(h('div', { class: 'error' }, `No page at ${path}.`));
    current = null;
    return;
  }
  const view = found.r.page.mount(main, found.m.slice(1), { refresh: () => schedule() });
  current = { view, timer: null, refreshing: false, again: false };
  refreshNow(current);
}

api.whenSignedOut((message) => {
  endSession();
  signInPage(`Signed out: ${message}`);
});
window.addEventListener('hashchange', route);

if (api.token()) {
  api.signIn(api.token()).then(startSession).catch((err) => {
    if (err.status === 401) api.signOut();
    signInPage(err.message);
  });
} else {
  signInPage();
}
