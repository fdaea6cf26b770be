// One volume: what it is and where it is attached; its replicas with node, disk, mode and
// — while one is rebuilt — the rebuild's progress from the engine; the snapshot chain with
// create, revert, delete and back up; its backups, the recurring jobs it belongs to, and
// the log's events about it.

import * as api from '../api.js';
import * as events from '../events.js';
import * as fmt from '../format.js';
import { h, fill, badge, table, panel, pageHead, formDialog, confirmDialog, act, toast, progress, chips } from '../view.js';
import { attachDialog, detach, activate, expandDialog, replicasDialog, deleteDialog, note } from './volumes.js';

/** How often the engine is asked for rebuild progress while a replica is rebuilt. */
const REBUILD_POLL_MS = 500;

function stamp() {
  const d = new Date();
  const two = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}${two(d.getMonth() + 1)}${two(d.getDate())}-${two(d.getHours())}${two(d.getMinutes())}${two(d.getSeconds())}`;
}

export function mount(root, [name], ctx) {
  const base = `/v1/volumes/${api.seg(name)}`;
  const head = h('div', {});
  const body = h('div', {});
  root.append(head, body);
  let poll = null;

  const again = () => ctx.refresh();

  async function takeSnapshot() {
    const done = await formDialog({
      title: `Take a snapshot of ${name}`,
      submitLabel: 'Take snapshot',
      intro: 'A detached volume is attached internally for it.',
      fields: [{ name: 'name', label: 'Name', required: true, value: `snap-${stamp()}` }],
      submit: async (v) => {
        const { status, data } = await api.post(`${base}/snapshots`, { name: v.name.trim() });
        toast(status === 202 ? `Snapshot ${data.name} is pending` : `Snapshot ${data.name} taken`);
        return data;
      },
    });
    if (done) again();
  }

  async function revert(snapshot) {
    const done = await confirmDialog(
      `Revert ${name} to ${snapshot}?`,
      'The volume holds that snapshot\'s data again and newer snapshots are dropped. The engine refuses while a frontend client (an NBD client, a mounted device) is connected.',
      async () => {
        const { status } = await api.post(`${base}/snapshots/${api.seg(snapshot)}/revert`, {});
        toast(status === 202
          ? `The revert of ${name} to ${snapshot} waits for its engine`
          : `Volume ${name} reverted to ${snapshot}`);
        return true;
      },
      'Revert');
    if (done) again();
  }

  async function removeSnapshot(snapshot) {
    const done = await confirmDialog(`Delete snapshot ${snapshot}?`,
      'Its data is merged into the next snapshot (or the volume head).',
      async () => {
        const { status } = await api.del(`${base}/snapshots/${api.seg(snapshot)}`);
        toast(status === 202 ? `Snapshot ${snapshot} is being deleted` : `Snapshot ${snapshot} deleted`);
        return true;
      });
    if (done) again();
  }

  async function backUp(snapshot, button) {
    await act(button, async () => {
      const body = { volume: name };
      if (snapshot) body.snapshot = snapshot;
      const { data } = await api.post('/v1/backups', body);
      return data;
    }, (b) => `Backup ${b.name} of ${b.snapshot} started`);
    again();
  }

  async function removeBackup(backup) {
    const done = await confirmDialog(`Delete backup ${backup}?`,
      'Its manifest is removed from the backup target, then the record from the log.',
      () => api.del(`/v1/backups/${api.seg(backup)}`));
    if (done) again();
  }

  async function upgradeEngine(current) {
    const done = await formDialog({
      title: `Upgrade the engine of ${name}`,
      submitLabel: 'Upgrade',
      intro: 'The new binary is run with --version first; then the engine is replaced behind the same device and the replicas are restarted from it one at a time, each caught up by a delta rebuild. The volume stays attached.',
      fields: [{ name: 'image', label: 'Engine image (absolute path of a shorthorn binary on every node)', required: true, value: current || '' }],
      submit: async (v) => {
        const { data } = await api.post(`${base}/engine-upgrade`, { image: v.image.trim() });
        toast(`The engine of ${name} is being upgraded to ${data.upgrade?.image || v.image.trim()}`);
        return data;
      },
    });
    if (done) again();
  }

  function header(v) {
    const attached = v.state === 'attached' || v.state === 'attaching';
    const buttons = [];
    if (v.standby) {
      buttons.push(h('button', { type: 'button', class: 'primary', onclick: async (e) => { await activate(name, e.target); again(); } }, 'Activate'));
    } else if (attached) {
      buttons.push(h('button', { type: 'button', disabled: v.attachment?.internal, onclick: async (e) => { await detach([name], e.target); again(); } }, 'Detach'));
    } else {
      buttons.push(h('button', { type: 'button', disabled: !['detached', 'creating'].includes(v.state), onclick: async () => { if (await attachDialog([name])) again(); } }, 'Attach'));
    }
    buttons.push(
      h('button', { type: 'button', id: 'take-snapshot', disabled: v.standby, onclick: takeSnapshot }, 'Take snapshot'),
      h('button', { type: 'button', disabled: v.standby, onclick: (e) => backUp(null, e.target) }, 'Back up now'),
      h('button', { type: 'button', onclick: async () => { if (await expandDialog(v)) again(); } }, 'Expand'),
      h('button', { type: 'button', onclick: async () => { if (await replicasDialog(v)) again(); } }, 'Replicas'),
      h('button', { type: 'button', id: 'upgrade-engine', disabled: v.standby, onclick: () => upgradeEngine(v.engineImage) }, 'Upgrade engine'),
      h('button', { type: 'button', class: 'danger', onclick: async () => { if (await deleteDialog([name])) location.hash = '#/volumes'; } }, 'Delete'));
    return pageHead(
      h('h1', {}, h('a', { href: '#/volumes', class: 'crumb' }, 'Volumes'), ' / ', name),
      h('span', { id: 'volume-state' }, badge(v.state)),
      h('span', { id: 'volume-robustness' }, badge(v.robustness)),
      buttons);
  }

  /** "checking", "replica db-r2 (1 done)", "failed: why" of an engine upgrade. */
  function upgradePhase(u) {
    const p = u.phase?.phase;
    const done = (u.replicasDone || []).length;
    if (p === 'replica') return `replica ${u.phase.id} (${done} done)`;
    if (p === 'replicas') return `replicas (${done} done)`;
    if (p === 'failed') return `failed: ${u.error}`;
    return p;
  }

  function summary(v, engine, upgrade) {
    const a = v.attachment;
    const rows = [
      ['Size', fmt.bytes(v.size)],
      ['Replicas', `${v.replicas.length} placed of ${v.numberOfReplicas}`],
      ['Data locality', v.dataLocality],
      ['Attached to', a ? `${a.node}${a.internal ? ' (internal, for the log\'s own work)' : ''}` : '–'],
      ['Endpoint', a?.endpoint ? h('code', {}, a.endpoint) : '–'],
      ['Block device', a?.device ? h('code', {}, a.device) : (a ? a.frontend : '–')],
      ['Epoch', String(v.epoch)],
      ['Engine image', upgrade?.image ? h('code', {}, upgrade.image) : 'each node\'s own binary'],
      ['Created', fmt.time(v.createdAt)],
    ];
    if (upgrade?.upgrade) {
      rows.push(['Engine upgrade', h('span', { id: 'engine-upgrade' }, `to ${upgrade.upgrade.image}: ${upgradePhase(upgrade.upgrade)}`)]);
    }
    if (engine?.stats) {
      const s = engine.stats;
      rows.push(['I/O (last second)', `read ${s.readIops} IOPS, ${fmt.rate(s.readThroughput)} · write ${s.writeIops} IOPS, ${fmt.rate(s.writeThroughput)}`]);
    }
    if (v.condition) rows.push(['Condition', v.condition]);
    if (v.restore) {
      const r = v.restore;
      rows.push([r.snapshot ? 'Copied from' : 'Restored from', r.snapshot ? `snapshot ${r.snapshot.volume}/${r.snapshot.snapshot}` : h('code', {}, r.url)]);
      rows.push(['Restore', r.state === 'inProgress' ? progress(r.progress) : h('span', {}, badge(r.state), r.error ? ` ${r.error}` : '')]);
    }
    if (v.dr) {
      const d = v.dr;
      rows.push(['DR standby of', h('code', {}, d.backupVolume)]);
      rows.push(['Restored backup', d.lastRestored ? `${d.lastRestored} (made ${fmt.ago(d.lastRestoredCreated)})` : 'none yet']);
      if (d.restoring) rows.push(['Restoring', d.restoring]);
      if (d.error) rows.push(['Standby error', h('span', { class: 'error-text' }, d.error)]);
      if (d.activatedAt) rows.push(['Activated', fmt.time(d.activatedAt)]);
      if (d.activationNote) rows.push(['Activation note', d.activationNote]);
    }
    const labels = Object.entries(v.labels || {}).map(([k, val]) => `${k}=${val}`);
    rows.push(['Labels', chips(labels)]);
    const n = note(v);
    return panel('Volume', [
      n ? h('div', { class: 'notice' }, n) : null,
      h('dl', { class: 'kv', id: 'volume-summary' }, rows.map(([k, val]) => [h('dt', {}, k), h('dd', {}, val)])),
    ]);
  }

  function replicasPanel(replicas, engine, engineError) {
    const byId = new Map((engine?.replicas || []).filter((r) => r.id).map((r) => [r.id, r]));
    const rows = replicas.map((r) => {
      const seen = byId.get(r.id);
      const mode = seen?.mode || r.mode;
      let rebuild = h('span', { class: 'muted' }, '–');
      if (seen?.rebuild) rebuild = progress(seen.rebuild.progress, 'rebuilding');
      else if (mode === 'WO') rebuild = h('span', { class: 'small' }, 'rebuilding');
      return h('tr', { data: { replica: r.id } },
        h('td', {}, h('code', {}, r.id)),
        h('td', {}, r.node),
        h('td', {}, r.disk),
        h('td', { class: 'mode' }, badge(mode)),
        h('td', { class: 'rebuild' }, rebuild),
        h('td', {}, r.address ? h('code', {}, r.address) : h('span', { class: 'muted' }, 'not started')),
        h('td', { class: mode === 'ERR' ? 'small error-text' : 'small muted' },
          mode === 'ERR' ? (r.failure || seen?.error || '') : (r.failure ? `last failure: ${r.failure}` : '')));
    });
    return panel('Replicas', [
      engineError ? h('div', { class: 'muted small' }, `Engine: ${engineError}`) : null,
      table([['Replica'], ['Node'], ['Disk'], ['Mode'], ['Rebuild'], ['Address'], ['Failure']], rows, 'No replica placed yet.'),
    ]);
  }

  function snapshotsPanel(v) {
    const list = Object.values(v.snapshots || {}).sort((a, b) => a.createdAt - b.createdAt || a.name.localeCompare(b.name));
    const chain = h('div', { class: 'chain', id: 'snapshot-chain' },
      list.map((s) => [h('span', { class: 'node' }, s.name), h('span', { class: 'arrow' }, '→')]),
      h('span', { class: 'node head' }, 'volume head'));
    const rows = list.slice().reverse().map((s) => h('tr', { data: { snapshot: s.name } },
      h('td', {}, s.name),
      h('td', { class: 'muted small', title: fmt.time(s.createdAt) }, fmt.ago(s.createdAt)),
      h('td', { class: 'num' }, fmt.bytes(s.size)),
      h('td', {}, badge(s.state)),
      h('td', {}, chips(Object.entries(s.labels || {}).map(([k, val]) => `${k}: ${val}`))),
      h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'small', disabled: s.state !== 'ready', onclick: () => revert(s.name) }, 'Revert'),
        h('button', { type: 'button', class: 'small', disabled: s.state !== 'ready', onclick: (e) => backUp(s.name, e.target) }, 'Back up'),
        h('button', { type: 'button', class: 'small danger', disabled: s.state === 'deleting', onclick: () => removeSnapshot(s.name) }, 'Delete'))));
    return panel('Snapshots', [
      list.length ? chain : null,
      table([['Name'], ['Taken'], ['Size', 'num'], ['State'], ['Labels'], ['']], rows, 'No snapshot yet.'),
    ], h('button', { type: 'button', class: 'small', disabled: v.standby, onclick: takeSnapshot }, 'Take snapshot'));
  }

  function backupsPanel(backups) {
    const rows = backups.slice().reverse().map((b) => h('tr', { data: { backup: b.name } },
      h('td', {}, b.name),
      h('td', {}, b.snapshot),
      h('td', {}, b.state === 'inProgress' ? progress(b.progress, 'uploading') : badge(b.state)),
      h('td', { class: 'num' }, fmt.bytes(b.size)),
      h('td', { class: 'num' }, fmt.bytes(b.uploadedBytes)),
      h('td', { class: 'muted small', title: fmt.time(b.createdAt) }, fmt.ago(b.createdAt)),
      h('td', { class: 'small' }, b.error ? h('span', { class: 'error-text' }, b.error) : (b.base ? `incremental from ${b.base}` : 'full')),
      h('td', { class: 'actions' },
        h('button', { type: 'button', class: 'small danger', disabled: b.state === 'inProgress', onclick: () => removeBackup(b.name) }, 'Delete'))));
    return panel('Backups', table(
      [['Backup'], ['Snapshot'], ['State'], ['Size', 'num'], ['Uploaded', 'num'], ['Made'], [''], ['']],
      rows, 'No backup of this volume in this cluster.'));
  }

  function jobsPanel(jobs) {
    const mine = jobs.filter((j) => (j.volumes || []).includes(name));
    return panel('Recurring jobs', table(
      [['Job'], ['Task'], ['Schedule'], ['Retain', 'num'], ['Next run']],
      mine.map((j) => h('tr', { data: { job: j.spec.name } },
        h('td', {}, h('a', { href: '#/jobs' }, j.spec.name)),
        h('td', {}, j.spec.task),
        h('td', {}, h('code', {}, j.spec.cron)),
        h('td', { class: 'num' }, String(j.spec.retain)),
        h('td', { class: 'small', title: fmt.time(j.nextSlot) }, fmt.ago(j.nextSlot)))),
      'No recurring job applies to this volume (jobs join by the labels recurring-job.shorthorn.io/<job> or recurring-job-group.shorthorn.io/<group>; group "default" applies to volumes that name neither).'));
  }

  function eventsPanel() {
    const mine = events.recent.filter((e) => events.volumeOf(e) === name).slice(-20).reverse();
    return panel('Events', table(
      [['When'], ['Event'], ['What happened']],
      mine.map((e) => h('tr', {},
        h('td', { class: 'muted small', title: fmt.time(e.loggedAt) }, fmt.ago(e.loggedAt)),
        h('td', {}, h('code', {}, e.type)),
        h('td', {}, events.describe(e)))),
      'No event about this volume since this page was opened (and in the recent log).'));
  }

  return {
    topics: (t) => t.has(`volume:${name}`) || t.has('jobs') || t.has('nodes'),
    async refresh() {
      let v;
      try {
        v = await api.get(base);
      } catch (err) {
        if (err.status === 404) {
          fill(head, pageHead(h('h1', {}, h('a', { href: '#/volumes', class: 'crumb' }, 'Volumes'), ' / ', name)));
          fill(body, h('div', { class: 'error' }, err.message));
          return;
        }
        throw err;
      }
      const [replicas, backups, jobs, upgrade] = await Promise.all([
        api.get(`/v1/replicas?volume=${api.seg(name)}`),
        api.get(`/v1/backups?volume=${api.seg(name)}`),
        api.get('/v1/recurringjobs'),
        api.get(`${base}/engine-upgrade`),
      ]);
      v.engineImage = upgrade.image;
      let engine = null;
      let engineError = null;
      if (v.state === 'attached') {
        try {
          engine = await api.get(`${base}/engine`);
        } catch (err) {
          engineError = err.message;
        }
      }
      fill(head, header(v));
      fill(body,
        summary(v, engine, upgrade),
        replicasPanel(replicas, engine, engineError),
        snapshotsPanel(v),
        backupsPanel(backups),
        jobsPanel(jobs),
        eventsPanel());
      // A rebuild's progress is in the engine, not in the log: ask again while one runs.
      const upgrading = upgrade.upgrade && !['done', 'failed'].includes(upgrade.upgrade.phase?.phase);
      const rebuilding = upgrading || replicas.some((r) => r.mode === 'WO') || (engine?.replicas || []).some((r) => r.mode === 'WO');
      clearTimeout(poll);
      poll = rebuilding ? setTimeout(again, REBUILD_POLL_MS) : null;
    },
    unmount() {
      clearTimeout(poll);
    },
  };
}
