// Settings: every setting with its value and default; a changed value is saved with the
// row's button, and a value the cluster refuses shows the server's reason in that row.

import * as api from '../api.js';
import { h, fill, table, pageHead, toast } from '../view.js';

export function mount(root) {
  const filter = h('input', { type: 'search', placeholder: 'Filter settings', id: 'settings-filter', 'aria-label': 'filter settings' });
  const body = h('div', {});
  root.append(pageHead(h('h1', {}, 'Settings'), filter), h('section', { class: 'panel' }, body));
  let settings = [];
  /** Values being edited, by key: kept across a refresh so an event does not wipe them. */
  const editing = new Map();
  const errors = new Map();

  function render() {
    const words = filter.value.trim().toLowerCase();
    const shown = settings.filter((s) => !words || s.key.toLowerCase().includes(words));
    fill(body, table([['Setting'], ['Value'], ['Default'], ['']], shown.map(row), 'No setting matches.'));
  }

  function row(s) {
    const input = h('input', { class: 'setting-value', value: editing.get(s.key) ?? s.value, 'aria-label': s.key, spellcheck: 'false' });
    const save = h('button', { type: 'button', class: 'small primary', disabled: !editing.has(s.key) }, 'Save');
    const error = h('div', { class: 'error', role: 'alert' }, errors.get(s.key) || '');
    input.addEventListener('input', () => {
      if (input.value === s.value) editing.delete(s.key); else editing.set(s.key, input.value);
      save.disabled = !editing.has(s.key);
    });
    const submit = async () => {
      save.disabled = true;
      error.textContent = '';
      try {
        const { data } = await api.put(`/v1/settings/${api.seg(s.key)}`, { value: input.value });
        editing.delete(s.key);
        errors.delete(s.key);
        s.value = data.value;
        input.value = data.value;
        toast(`${s.key} = ${data.value || '(empty)'}`);
      } catch (err) {
        errors.set(s.key, err.message);
        error.textContent = err.message;
        save.disabled = false;
      }
    };
    save.addEventListener('click', submit);
    input.addEventListener('keydown', (e) => { if (e.key === 'Enter' && !save.disabled) submit(); });
    return h('tr', { data: { setting: s.key } },
      h('td', {}, h('code', {}, s.key)),
      h('td', {}, input, error),
      h('td', { class: 'muted small' }, s.default === '' ? '(empty)' : s.default),
      h('td', { class: 'actions' }, save));
  }

  filter.addEventListener('input', render);
  return {
    topics: (t) => t.has('settings'),
    async refresh() {
      settings = await api.get('/v1/settings');
      render();
    },
  };
}
