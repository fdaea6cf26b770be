// Backups: the backup volumes on the target (any cluster's) and their backups, restore
// one into a new volume, create a disaster-recovery standby that follows a backup volume,
// activate a standby; and this cluster's own backups with their progress.

import * as api from '../api.js';
import * as fmt from '../format.js';
import { h, fill, badge, table, panel, pageHead, formDialog, confirmDialog, toast, progress } from '../view.js';
import { activate } from './volumes.js';

/** Events after which the target's listing may differ (it is read only then). */
const TARGET_CHANGES = new Set(['backupCompleted', 'backupDeleted', 'backupVolumesSynced']);

async function defaultReplicas() {
  const setting = await api.get('/v1/settings/defaultReplicaCount').catch(() => ({ value: '3' }));
  return setting.value;
}

async function restoreDialog(backup) {
  return formDialog({
    title: `Restore ${backup.name}`,
    intro: `Into a new volume, from ${backup.url}. It can be attached once the restore completed.`,
    submitLabel: 'Restore',
    fields: [
      { name: 'name', label: 'New volume', required: true, value: `${backup.volume}-restored` },
      { name: 'replicas', label: 'Replicas', type: 'number', value: await defaultReplicas(), min: 1, max: 20 },
    ],
    submit: async (v) => {
      const { data } = await api.post('/v1/volumes', {
        name: v.name.trim(), fromBackup: backup.url, numberOfReplicas: Number(v.replicas),
      });
      toast(`Volume ${data.name} is being restored from ${backup.name}`);
      return data;
    },
  });
}

function followUrl(target, volume) {
  return `${target}${target.includes('?') ? '&' : '?'}volume=${encodeURIComponent(volume)}`;
}

async function standbyDialog(target, volume) {
  return formDialog({
    title: `DR standby of ${volume}`,
    intro: 'A disaster-recovery volume starts from the newest backup of this backup volume and restores each new one as it appears. It cannot be attached until it is activated.',
    submitLabel: 'Create standby',
    fields: [
      { name: 'name', label: 'New volume', required: true, value: `${volume}-dr` },
      { name: 'replicas', label: 'Replicas', type: 'number', value: await defaultReplicas(), min: 1, max: 20 },
    ],
    submit: async (v) => {
      const { data } = await api.post('/v1/volumes', {
        name: v.name.trim(), standby: true, fromBackup: followUrl(target, volume), numberOfReplicas: Number(v.replicas),
      });
      toast(`Standby volume ${data.name} follows ${volume}`);
      return data;
    },
  });
}

export function mount(root, _params, ctx) {
  const targetBox = h('div', {});
  const onTarget = h('div', {});
  const standbys = h('div', {});
  const ours = h('div', {});
  root.append(pageHead(h('h1', {}, 'Backups')), targetBox, onTarget, standbys, ours);
  const open = new Set();
  let readTarget = true;
  let target = '';
  const again = () => { readTarget = true; ctx.refresh(); };

  async function targetPanel() {
    if (!target) {
      fill(onTarget, panel('Backup volumes on the target', h('div', { class: 'notice' },
        'No backup target is set. Set ', h('code', {}, 'backupTarget'), ' on the ',
        h('a', { href: '#/settings' }, 'Settings'), ' page (s3://, nfs:// or file://).')));
      return;
    }
    let volumes;
    try {
      volumes = await api.get('/v1/backupvolumes');
    } catch (err) {
      fill(onTarget, panel('Backup volumes on the target', h('div', { class: 'error' }, err.message)));
      return;
    }
    const listings = await Promise.all(volumes.map(async (bv) => {
      if (!open.has(bv.name)) return null;
      try {
        return await api.get(`/v1/backupvolumes/${api.seg(bv.name)}`);
      } catch (err) {
        return err;
      }
    }));
    const rows = volumes.flatMap((bv, i) => {
      const shown = open.has(bv.name);
      const toggle = h('button', { type: 'button', class: 'small' }, shown ? 'Hide backups' : 'Show backups');
      toggle.addEventListener('click', () => {
        if (shown) open.delete(bv.name); else open.add(bv.name);
        again();
      });
      const dr = h('button', { type: 'button', class: 'small', disabled: !bv.backupCount }, 'Create DR volume');
      dr.addEventListener('click', async () => { if (await standbyDialog(target, bv.name)) again(); });
      const row = h('tr', { data: { backupVolume: bv.name } },
        h('td', {}, h('strong', {}, bv.name)),
        h('td', { class: 'num' }, String(bv.backupCount)),
        h('td', {}, bv.lastBackup || '–'),
        h('td', { class: 'muted small', title: fmt.time(bv.lastBackupAt) }, fmt.ago(bv.lastBackupAt)),
        h('td', { class: 'num' }, fmt.bytes(bv.size)),
        h('td', { class: 'actions' }, toggle, dr));
      if (!shown) return [row];
      const listing = listings[i];
      let inner;
      if (listing instanceof Error) {
        inner = h('div', { class: 'error' }, listing.message);
      } else {
        inner = table([['Backup'], ['Snapshot'], ['Size', 'num'], ['Blocks', 'num'], ['Made'], ['URL'], ['']],
          listing.slice().reverse().map((b) => h('tr', { data: { backup: b.name } },
            h('td', {}, b.name),
            h('td', {}, b.snapshot),
            h('td', { class: 'num' }, fmt.bytes(b.size)),
            h('td', { class: 'num' }, String(b.blocks)),
            h('td', { class: 'muted small', title: fmt.time(b.createdAt) }, fmt.ago(b.createdAt)),
            h('td', { class: 'small' }, h('code', {}, b.url)),
            h('td', { class: 'actions' }, h('button', {
              type: 'button', class: 'small',
              onclick: async () => { if (await restoreDialog(b)) again(); },
            }, 'Restore')))),
          'No backup in this backup volume.');
        inner.classList.add('nested');
      }
      return [row, h('tr', { class: 'listing' }, h('td', { colspan: '6' }, inner))];
    });
    fill(onTarget, panel('Backup volumes on the target', table(
      [['Backup volume'], ['Backups', 'num'], ['Last backup'], ['Made'], ['Size', 'num'], ['']],
      rows, 'No backup volume on the target yet.')));
  }

  function standbyPanel(volumes) {
    const list = volumes.filter((v) => v.standby || v.dr);
    const rows = list.map((v) => {
      const d = v.dr || {};
      const button = h('button', { type: 'button', class: 'small', disabled: !v.standby || d.activating }, 'Activate');
      button.addEventListener('click', async () => { await activate(v.name, button); again(); });
      let status;
      if (!v.standby) status = badge('ready', 'activated');
      else if (d.activating) status = badge('activating');
      else if (v.restore?.state === 'inProgress') status = progress(v.restore.progress, 'restoring');
      else status = badge('standby');
      return h('tr', { data: { volume: v.name } },
        h('td', {}, h('a', { href: `#/volumes/${api.seg(v.name)}` }, v.name)),
        h('td', {}, h('code', {}, d.backupVolume || v.restore?.url || '')),
        h('td', { class: 'status' }, status),
        h('td', { class: 'restored' }, d.lastRestored || h('span', { class: 'muted' }, 'none yet')),
        h('td', { class: 'small' }, d.error ? h('span', { class: 'error-text' }, d.error) : (d.activationNote || '')),
        h('td', { class: 'actions' }, button));
    });
    fill(standbys, panel('Disaster-recovery volumes', table(
      [['Volume'], ['Follows'], ['Status'], ['Restored backup'], [''], ['']],
      rows, 'No DR standby volume: create one from a backup volume above.')));
  }

  function oursPanel(backups) {
    const rows = backups.slice().reverse().map((b) => h('tr', { data: { backup: b.name } },
      h('td', {}, b.name),
      h('td', {}, h('a', { href: `#/volumes/${api.seg(b.volume)}` }, b.volume)),
      h('td', {}, b.snapshot),
      h('td', { class: 'status' }, b.state === 'inProgress' ? progress(b.progress, 'uploading') : badge(b.state)),
      h('td', { class: 'num' }, fmt.bytes(b.size)),
      h('td', { class: 'muted small', title: fmt.time(b.createdAt) }, fmt.ago(b.createdAt)),
      h('td', { class: 'small' }, b.error ? h('span', { class: 'error-text' }, b.error) : ''),
      h('td', { class: 'actions' }, h('button', {
        type: 'button', class: 'small danger', disabled: b.state === 'inProgress',
        onclick: async () => {
          if (await confirmDialog(`Delete backup ${b.name}?`, 'Its manifest is removed from the target, then the record from the log.',
            () => api.del(`/v1/backups/${api.seg(b.name)}`))) again();
        },
      }, 'Delete'))));
    fill(ours, panel("This cluster's backups", table(
      [['Backup'], ['Volume'], ['Snapshot'], ['State'], ['Size', 'num'], ['Made'], [''], ['']],
      rows, 'No backup yet: back up a snapshot from its volume\'s page.')));
  }

  return {
    topics: (t, event) => {
      if (TARGET_CHANGES.has(event.type) || (event.type === 'settingChanged' && event.key === 'backupTarget')) readTarget = true;
      return t.has('backups') || t.has('backupvolumes') || t.has('volumes') || readTarget;
    },
    async refresh() {
      const [setting, backups, volumes] = await Promise.all([
        api.get('/v1/settings/backupTarget'), api.get('/v1/backups'), api.get('/v1/volumes'),
      ]);
      target = setting.value;
      fill(targetBox, h('div', { class: 'panel' }, h('dl', { class: 'kv' },
        h('dt', {}, 'Backup target'),
        h('dd', { id: 'backup-target' }, target ? h('code', {}, target) : h('span', { class: 'muted' }, 'not set')))));
      if (readTarget) {
        readTarget = false;
        await targetPanel();
      }
      standbyPanel(volumes);
      oursPanel(backups);
    },
  };
}
