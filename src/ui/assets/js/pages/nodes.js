// Nodes and disks: whether each node is up, scheduling on or off for nodes and disks,
// their tags, and each disk's space (used, reserved, scheduled to replicas).

import * as api from '../api.js';
import * as events from '../events.js';
import * as fmt from '../format.js';
import { h, fill, badge, bar, table, pageHead, formDialog, act, chips } from '../view.js';

const nodePath = (id) => `/v1/nodes/${api.seg(id)}`;

function tagsDialog(title, tags, save) {
  return formDialog({
    title,
    fields: [{ name: 'tags', label: 'Tags', value: (tags || []).join(', '), placeholder: 'ssd, fast', hint: 'comma-separated; volumes whose selector names a tag go only where it is' }],
    submit: (v) => save(v.tags.split(',').map((t) => t.trim()).filter(Boolean)),
  });
}

function usage(disk) {
  const used = Math.max(0, disk.capacity - disk.available);
  return h('div', { class: 'usage' },
    bar(disk.capacity, [{ value: used, class: 'used' }, { value: disk.reserved, class: 'reserved' }],
      `used ${fmt.bytes(used)}, reserved ${fmt.bytes(disk.reserved)} of ${fmt.bytes(disk.capacity)}`),
    h('span', { class: 'small muted' },
      `${fmt.bytes(used)} used · ${fmt.bytes(disk.reserved)} reserved · ${fmt.bytes(disk.capacity)} total`),
    bar(disk.capacity, [{ value: disk.scheduled, class: 'scheduled' }], 'scheduled to replicas'),
    h('span', { class: 'small muted' }, `${fmt.bytes(disk.scheduled)} scheduled to ${disk.replicaCount} replica${disk.replicaCount === 1 ? '' : 's'}`));
}

export function mount(root, _params, ctx) {
  const body = h('div', {});
  root.append(pageHead(h('h1', {}, 'Nodes and disks')), body);
  const again = () => ctx.refresh();

  function nodeRow(node) {
    const toggle = h('button', { type: 'button', class: 'small', data: { action: 'scheduling' } },
      node.schedulable ? 'Disable scheduling' : 'Enable scheduling');
    toggle.addEventListener('click', async () => {
      await act(toggle, () => api.post(`${nodePath(node.id)}/update`, { schedulable: !node.schedulable }),
        `Node ${node.id}: scheduling ${node.schedulable ? 'off' : 'on'}`);
      again();
    });
    const tags = h('button', { type: 'button', class: 'small' }, 'Edit tags');
    tags.addEventListener('click', async () => {
      const done = await tagsDialog(`Tags of node ${node.id}`, node.tags,
        (list) => api.post(`${nodePath(node.id)}/update`, { tags: list }));
      if (done) again();
    });
    const disks = Object.values(node.disks || {}).map((d) => diskRow(node, d));
    return [
      h('tr', { data: { node: node.id } },
        h('td', {}, h('strong', {}, node.id)),
        h('td', { class: 'status' }, badge(node.ready ? 'up' : 'down')),
        h('td', { class: 'scheduling' }, badge(node.schedulable ? 'on' : 'off', node.schedulable ? 'schedulable' : 'scheduling off')),
        h('td', {}, h('code', {}, node.address)),
        h('td', {}, node.zone || h('span', { class: 'muted' }, '–')),
        h('td', { class: 'tags' }, chips(node.tags)),
        h('td', { class: 'actions' }, toggle, tags)),
      h('tr', { class: 'disks' },
        h('td', {}),
        h('td', { colspan: '6' }, h('table', { class: 'nested' },
          h('thead', {}, h('tr', {}, ['Disk', 'Path', 'Space', 'Scheduling', 'Tags', ''].map((t) => h('th', {}, t)))),
          h('tbody', {}, disks)))),
    ];
  }

  function diskRow(node, disk) {
    const toggle = h('button', { type: 'button', class: 'small' }, disk.schedulable ? 'Disable scheduling' : 'Enable scheduling');
    toggle.addEventListener('click', async () => {
      await act(toggle, () => api.post(`${nodePath(node.id)}/disks/${api.seg(disk.id)}/update`, { schedulable: !disk.schedulable }),
        `Disk ${node.id}/${disk.id}: scheduling ${disk.schedulable ? 'off' : 'on'}`);
      again();
    });
    const edit = h('button', { type: 'button', class: 'small' }, 'Edit');
    edit.addEventListener('click', async () => {
      const done = await formDialog({
        title: `Disk ${node.id}/${disk.id}`,
        fields: [
          { name: 'tags', label: 'Tags', value: (disk.tags || []).join(', '), placeholder: 'ssd', hint: 'comma-separated' },
          { name: 'reserved', label: 'Reserved', value: fmt.sizeText(disk.reserved), hint: 'kept out of scheduling (bytes, or with Mi, Gi)' },
        ],
        submit: (v) => api.post(`${nodePath(node.id)}/disks/${api.seg(disk.id)}/update`, {
          tags: v.tags.split(',').map((t) => t.trim()).filter(Boolean),
          reserved: fmt.sizeInput(v.reserved),
        }),
      });
      if (done) again();
    });
    return h('tr', { data: { disk: `${node.id}/${disk.id}` } },
      h('td', {}, disk.id),
      h('td', {}, h('code', {}, disk.path)),
      h('td', {}, usage(disk)),
      h('td', {}, badge(disk.schedulable ? 'on' : 'off', disk.schedulable ? 'schedulable' : 'scheduling off')),
      h('td', {}, chips(disk.tags)),
      h('td', { class: 'actions' }, toggle, edit));
  }

  return {
    topics: (t) => t.has('nodes'),
    async refresh() {
      const nodes = await api.get('/v1/nodes');
      events.noteNodes(nodes);
      fill(body, h('section', { class: 'panel' }, table(
        [['Node'], ['Status'], ['Scheduling'], ['Address'], ['Zone'], ['Tags'], ['']],
        nodes.flatMap(nodeRow), 'No node has registered yet.')));
    },
  };
}
