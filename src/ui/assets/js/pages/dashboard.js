// Dashboard: volumes by state and robustness, the cluster's storage (schedulable,
// reserved, used, and what scheduling is off for), nodes up and down, recent events.

import * as api from '../api.js';
import * as events from '../events.js';
import * as fmt from '../format.js';
import { h, fill, swatch, bar, panel, table, pageHead } from '../view.js';

const STATES = ['attached', 'detached', 'creating', 'attaching', 'detaching', 'deleting'];
const ROBUSTNESS = ['healthy', 'degraded', 'faulted'];

export function mount(root) {
  const body = h('div', {});
  root.append(pageHead(h('h1', {}, 'Dashboard')), body);
  return {
    topics: (t) => t.size > 0,
    async refresh() {
      const [volumes, nodes] = await Promise.all([api.get('/v1/volumes'), api.get('/v1/nodes')]);
      events.noteNodes(nodes);
      fill(body,
        h('div', { class: 'cards' }, volumesCard(volumes), storageCard(nodes), nodesCard(nodes)),
        recentEvents());
    },
  };
}

function count(list, pick) {
  const counts = {};
  for (const item of list) counts[pick(item)] = (counts[pick(item)] || 0) + 1;
  return counts;
}

function legendRow(label, value, swatch) {
  return h('div', {}, swatch, h('span', {}, label), h('span', { class: 'num' }, value));
}

function volumesCard(volumes) {
  const byState = count(volumes, (v) => v.state);
  const byRobustness = count(volumes, (v) => v.robustness);
  return panel('Volumes', [
    h('div', { class: 'big', id: 'volume-count' }, String(volumes.length)),
    h('h3', {}, 'Robustness'),
    h('div', { class: 'legend', id: 'volumes-by-robustness' },
      ROBUSTNESS.map((r) => legendRow(r, byRobustness[r] || 0, swatch(r)))),
    h('h3', {}, 'State'),
    h('div', { class: 'legend', id: 'volumes-by-state' },
      STATES.filter((s) => byState[s] || s === 'attached' || s === 'detached')
        .map((s) => legendRow(s, byState[s] || 0, swatch(s)))),
  ], h('a', { href: '#/volumes', class: 'small' }, 'all volumes'));
}

/**
 * Storage as Longhorn's dashboard shows it, summed over disks: used (capacity − free, as
 * the node agents report), reserved (kept out of scheduling), schedulable (the rest, on
 * disks and nodes with scheduling on) and disabled (the rest where scheduling is off).
 */
function storageCard(nodes) {
  let capacity = 0; let used = 0; let reserved = 0; let schedulable = 0; let disabled = 0; let scheduled = 0;
  for (const node of nodes) {
    for (const disk of Object.values(node.disks || {})) {
      const diskUsed = Math.max(0, disk.capacity - disk.available);
      const rest = Math.max(0, disk.capacity - diskUsed - disk.reserved);
      capacity += disk.capacity;
      used += diskUsed;
      reserved += disk.reserved;
      scheduled += disk.scheduled;
      if (node.schedulable && disk.schedulable && node.ready) schedulable += rest;
      else disabled += rest;
    }
  }
  return panel('Storage', [
    h('div', { class: 'big' }, fmt.bytes(capacity)),
    bar(capacity, [
      { value: used, class: 'used' },
      { value: reserved, class: 'reserved' },
    ]),
    h('div', { class: 'legend', id: 'storage' },
      legendRow('Schedulable', fmt.bytes(schedulable), h('span', { class: 'sw free' })),
      legendRow('Reserved', fmt.bytes(reserved), h('span', { class: 'sw reserved' })),
      legendRow('Used', fmt.bytes(used), h('span', { class: 'sw used' })),
      legendRow('Disabled', fmt.bytes(disabled), h('span', { class: 'sw disabled' })),
      legendRow('Scheduled to replicas', fmt.bytes(scheduled), h('span', { class: 'sw scheduled' }))),
  ]);
}

function nodesCard(nodes) {
  const up = nodes.filter((n) => n.ready).length;
  const unschedulable = nodes.filter((n) => !n.schedulable).length;
  return panel('Nodes', [
    h('div', { class: 'big' }, String(nodes.length)),
    h('div', { class: 'legend', id: 'nodes-summary' },
      legendRow('up', up, swatch('up')),
      legendRow('down', nodes.length - up, swatch('down')),
      legendRow('scheduling off', unschedulable, swatch('off'))),
  ], h('a', { href: '#/nodes', class: 'small' }, 'nodes and disks'));
}

function recentEvents() {
  const last = events.recent.slice(-15).reverse();
  const box = panel('Recent events', table(
    [['When'], ['Event'], ['What happened']],
    last.map((e) => h('tr', {},
      h('td', { class: 'muted small', title: fmt.time(e.loggedAt) }, fmt.ago(e.loggedAt)),
      h('td', {}, h('code', {}, e.type)),
      h('td', {}, events.describe(e)))),
    'No event yet.',
  ));
  box.id = 'recent-events';
  return box;
}
