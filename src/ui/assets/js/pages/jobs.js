// Recurring jobs: snapshots and backups on a cron schedule (UTC), what each applies to,
// its next and last runs; create and delete.

import * as api from '../api.js';
import * as fmt from '../format.js';
import { h, fill, badge, table, pageHead, formDialog, confirmDialog, chips, toast } from '../view.js';

const TASKS = ['snapshot', 'backup', 'backup-force-create', 'snapshot-delete', 'snapshot-cleanup'];

function createDialog() {
  return formDialog({
    title: 'Create recurring job',
    submitLabel: 'Create',
    fields: [
      { name: 'name', label: 'Name', required: true, placeholder: 'nightly' },
      { name: 'task', label: 'Task', type: 'select', value: 'snapshot', options: TASKS.map((t) => [t, t]) },
      { name: 'cron', label: 'Schedule', required: true, value: '0 * * * *', hint: 'cron in UTC: 5 fields, or 6 with seconds first' },
      { name: 'retain', label: 'Retain', type: 'number', value: 7, min: 1, max: 100 },
      { name: 'concurrency', label: 'Concurrency', type: 'number', value: 1, min: 1 },
      { name: 'groups', label: 'Groups', value: '', placeholder: 'default', hint: 'comma-separated; "default" applies it to volumes that name no job or group' },
    ],
    submit: async (v) => {
      const { data } = await api.post('/v1/recurringjobs', {
        name: v.name.trim(),
        task: v.task,
        cron: v.cron.trim(),
        retain: Number(v.retain),
        concurrency: Number(v.concurrency),
        groups: v.groups.split(',').map((g) => g.trim()).filter(Boolean),
      });
      toast(`Recurring job ${data.spec.name} created`);
      return data;
    },
  });
}

function lastRun(job) {
  if (job.run) return badge('inProgress', 'running');
  const last = (job.history || [])[job.history.length - 1];
  if (!last) return h('span', { class: 'muted' }, 'never');
  const outcomes = Object.values(last.outcomes || {});
  const tally = (kind) => outcomes.filter((o) => o.result === kind).length;
  const parts = [['done', tally('done')], ['skipped', tally('skipped')], ['failed', tally('failed')]]
    .filter(([, n]) => n).map(([kind, n]) => `${n} ${kind}`);
  return h('span', { class: 'small', title: fmt.time(last.finishedAt || last.slot) },
    `${fmt.ago(last.finishedAt || last.slot)}${parts.length ? ` (${parts.join(', ')})` : ''}`);
}

export function mount(root, _params, ctx) {
  const body = h('div', {});
  const create = h('button', { type: 'button', class: 'primary', id: 'create-job' }, 'Create job');
  create.addEventListener('click', async () => { if (await createDialog()) ctx.refresh(); });
  root.append(pageHead(h('h1', {}, 'Recurring jobs'), create), body);
  return {
    topics: (t) => t.has('jobs') || t.has('volumes'),
    async refresh() {
      const jobs = await api.get('/v1/recurringjobs');
      const rows = jobs.map((j) => h('tr', { data: { job: j.spec.name } },
        h('td', {}, h('strong', {}, j.spec.name)),
        h('td', {}, j.spec.task),
        h('td', {}, h('code', {}, j.spec.cron)),
        h('td', { class: 'num' }, String(j.spec.retain)),
        h('td', { class: 'num' }, String(j.spec.concurrency)),
        h('td', {}, chips([...(j.spec.groups || [])])),
        h('td', {}, chips(j.volumes)),
        h('td', { class: 'small', title: fmt.time(j.nextSlot) }, j.nextSlot ? fmt.ago(j.nextSlot) : '–'),
        h('td', {}, lastRun(j)),
        h('td', { class: 'actions' }, h('button', {
          type: 'button', class: 'small danger',
          onclick: async () => {
            const done = await confirmDialog(`Delete recurring job ${j.spec.name}?`,
              'What it made (snapshots, backups) is kept.', () => api.del(`/v1/recurringjobs/${api.seg(j.spec.name)}`));
            if (done) ctx.refresh();
          },
        }, 'Delete'))));
      fill(body, h('section', { class: 'panel' }, table(
        [['Job'], ['Task'], ['Schedule (UTC)'], ['Retain', 'num'], ['Concurrency', 'num'], ['Groups'], ['Volumes'], ['Next run'], ['Last run'], ['']],
        rows, 'No recurring job yet.')));
    },
  };
}
