// Volumes: the list with state and robustness, create, and the actions on one volume
// (attach, detach, expand, replica count, delete, activate a standby) or on the selected
// rows at once. The actions are exported for the volume page.

import * as api from '../api.js';
import * as fmt from '../format.js';
import { h, fill, badge, table, pageHead, formDialog, confirmDialog, act, toast, progress } from '../view.js';

const path = (name) => `/v1/volumes/${api.seg(name)}`;

/** Nodes a volume can be attached on, as select options. */
async function nodeOptions() {
  const nodes = await api.get('/v1/nodes');
  return nodes.map((n) => [n.id, n.ready ? n.id : `${n.id} (down)`]);
}

export async function createDialog() {
  const replicas = await api.get('/v1/settings/defaultReplicaCount').catch(() => ({ value: '3' }));
  return formDialog({
    title: 'Create volume',
    submitLabel: 'Create',
    fields: [
      { name: 'name', label: 'Name', required: true, placeholder: 'db', hint: 'a DNS-1123 label' },
      { name: 'size', label: 'Size', required: true, value: '1Gi', hint: 'bytes, or with Mi, Gi, Ti (a multiple of 2 MiB)' },
      { name: 'replicas', label: 'Replicas', type: 'number', value: replicas.value, min: 1, max: 20 },
      { name: 'locality', label: 'Data locality', type: 'select', value: 'disabled',
        options: [['disabled', 'disabled'], ['best-effort', 'best-effort']] },
    ],
    submit: async (v) => {
      const { data } = await api.post('/v1/volumes', {
        name: v.name.trim(),
        size: fmt.sizeInput(v.size),
        numberOfReplicas: Number(v.replicas),
        dataLocality: v.locality,
      });
      toast(`Volume ${data.name} created`);
      return data;
    },
  });
}

export async function attachDialog(names) {
  const options = await nodeOptions();
  return formDialog({
    title: names.length === 1 ? `Attach ${names[0]}` : `Attach ${names.length} volumes`,
    submitLabel: 'Attach',
    fields: [
      { name: 'node', label: 'Node', type: 'select', options, value: options[0]?.[0] },
      { name: 'frontend', label: 'Frontend', type: 'select', value: 'none',
        options: [['none', 'NBD endpoint only'], ['auto', 'kernel block device (auto)'], ['fuse', 'FUSE + loop device'], ['nbd', 'kernel NBD client']] },
    ],
    submit: (v) => each(names, (name) => api.post(`${path(name)}/attach`, { node: v.node, frontend: v.frontend }), 'attaching'),
  });
}

/** Runs `call` for every name; one failure names its volume, the others still run. */
async function each(names, call, doing) {
  if (names.length === 1) {
    await call(names[0]);
  }
  const failures = [];
  for (const name of names.length === 1 ? [] : names) {
    try {
      await call(name);
    } catch (err) {
      failures.push(`${name}: ${err.message}`);
    }
  }
  if (failures.length) throw new Error(failures.join('\n'));
  toast(names.length === 1 ? `Volume ${names[0]} ${doing}` : `${names.length} volumes ${doing}`);
  return true;
}

export function detach(names, button) {
  return act(button, () => each(names, (name) => api.post(`${path(name)}/detach`), 'detaching'));
}

export function activate(name, button) {
  return act(button, () => api.post(`${path(name)}/activate`), `Volume ${name} is being activated`);
}

export function expandDialog(volume) {
  return formDialog({
    title: `Expand ${volume.name}`,
    submitLabel: 'Expand',
    intro: `Now ${fmt.bytes(volume.size)}. An attached volume grows online; a detached one at its next attach.`,
    fields: [{ name: 'size', label: 'New size', required: true, value: fmt.sizeText(volume.size * 2) }],
    submit: async (v) => {
      const { data } = await api.post(`${path(volume.name)}/expand`, { size: fmt.sizeInput(v.size) });
      toast(`Volume ${volume.name} is ${fmt.bytes(data.size)}`);
      return data;
    },
  });
}

export function replicasDialog(volume) {
  return formDialog({
    title: `Replicas of ${volume.name}`,
    submitLabel: 'Save',
    fields: [{ name: 'count', label: 'Number of replicas', type: 'number', value: volume.numberOfReplicas, min: 1, max: 20 }],
    submit: async (v) => {
      const { data } = await api.post(`${path(volume.name)}/update`, { numberOfReplicas: Number(v.count) });
      toast(`Volume ${volume.name} asks for ${data.numberOfReplicas} replicas`);
      return data;
    },
  });
}

export function deleteDialog(names) {
  return confirmDialog(
    names.length === 1 ? `Delete ${names[0]}?` : `Delete ${names.length} volumes?`,
    `${names.join(', ')}: the data of every replica is removed. A volume must be detached first.`,
    () => each(names, (name) => api.del(path(name)), 'deleting'));
}

/** What a volume is doing besides its state: restoring, standby, a condition. */
export function note(volume) {
  const r = volume.restore;
  if (r && r.state === 'inProgress') return progress(r.progress, r.snapshot ? 'copying' : 'restoring');
  if (r && r.state === 'error') return h('span', { class: 'small' }, badge('error', 'restore failed'));
  if (volume.standby) return badge('standby', volume.dr?.activating ? 'activating' : 'DR standby');
  if (volume.attachment?.error) return h('span', { class: 'small error-text' }, volume.attachment.error);
  if (volume.condition) return h('span', { class: 'small muted' }, volume.condition);
  return null;
}

export function mount(root) {
  const selected = new Set();
  const tableBox = h('div', {});
  const bulk = {
    attach: h('button', { type: 'button' }, 'Attach'),
    detach: h('button', { type: 'button' }, 'Detach'),
    remove: h('button', { type: 'button', class: 'danger' }, 'Delete'),
  };
  const count = h('span', { class: 'muted', id: 'selected-count' });
  const create = h('button', { type: 'button', class: 'primary', id: 'create-volume' }, 'Create volume');
  let last = [];
  const view = {
    topics: (t) => t.has('volumes') || t.has('replicas'),
    async refresh() {
      last = await api.get('/v1/volumes');
      for (const name of [...selected]) if (!last.some((v) => v.name === name)) selected.delete(name);
      render();
    },
  };
  const again = () => view.refresh();
  create.addEventListener('click', async () => { if (await createDialog()) again(); });
  bulk.attach.addEventListener('click', async () => { if (await attachDialog([...selected])) again(); });
  bulk.detach.addEventListener('click', async () => { await detach([...selected], bulk.detach); again(); });
  bulk.remove.addEventListener('click', async () => { if (await deleteDialog([...selected])) again(); });

  function render() {
    const n = selected.size;
    for (const b of Object.values(bulk)) b.disabled = n === 0;
    count.textContent = n ? `${n} selected` : '';
    const all = h('input', { type: 'checkbox', title: 'select all', checked: n > 0 && n === last.length });
    all.addEventListener('change', () => {
      selected.clear();
      if (all.checked) for (const v of last) selected.add(v.name);
      render();
    });
    const rows = last.map((v) => {
      const box = h('input', { type: 'checkbox', checked: selected.has(v.name), 'aria-label': `select ${v.name}` });
      box.addEventListener('change', () => {
        if (box.checked) selected.add(v.name); else selected.delete(v.name);
        render();
      });
      const live = v.replicas.length;
      const attached = v.state === 'attached' || v.state === 'attaching';
      const toggle = attached
        ? h('button', { type: 'button', class: 'small', onclick: async (e) => { await detach([v.name], e.target); again(); } }, 'Detach')
        : h('button', { type: 'button', class: 'small', disabled: v.standby || !['detached', 'creating'].includes(v.state),
          onclick: async () => { if (await attachDialog([v.name])) again(); } }, 'Attach');
      return h('tr', { data: { volume: v.name } },
        h('td', {}, box),
        h('td', {}, h('a', { href: `#/volumes/${api.seg(v.name)}` }, v.name)),
        h('td', { class: 'state' }, badge(v.state)),
        h('td', { class: 'robustness' }, badge(v.robustness)),
        h('td', { class: 'num' }, fmt.bytes(v.size)),
        h('td', { class: 'num' }, `${live}/${v.numberOfReplicas}`),
        h('td', {}, v.attachment ? v.attachment.node : h('span', { class: 'muted' }, '–')),
        h('td', {}, note(v)),
        h('td', { class: 'muted small', title: fmt.time(v.createdAt) }, fmt.ago(v.createdAt)),
        h('td', { class: 'actions' },
          v.standby ? h('button', { type: 'button', class: 'small', onclick: async (e) => { await activate(v.name, e.target); again(); } }, 'Activate') : toggle,
          h('button', { type: 'button', class: 'small', onclick: async () => { if (await expandDialog(v)) again(); } }, 'Expand'),
          h('button', { type: 'button', class: 'small', onclick: async () => { if (await replicasDialog(v)) again(); } }, 'Replicas'),
          h('button', { type: 'button', class: 'small danger', onclick: async () => { if (await deleteDialog([v.name])) again(); } }, 'Delete')));
    });
    fill(tableBox, table(
      [[all], ['Name'], ['State'], ['Robustness'], ['Size', 'num'], ['Replicas', 'num'], ['Attached to'], [''], ['Created'], ['']],
      rows, 'No volume yet: create one.'));
  }

  root.append(
    pageHead(h('h1', {}, 'Volumes'), create),
    h('section', { class: 'panel' },
      h('div', { class: 'toolbar' }, h('span', { class: 'muted' }, 'Selected:'), bulk.attach, bulk.detach, bulk.remove, count),
      tableBox));
  return view;
}
