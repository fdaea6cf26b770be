// The building blocks every page is made of: elements, state badges, usage and progress
// bars, tables, modal forms and toasts. Text is always set as text (never as HTML), so
// nothing a volume name or an error message holds can become markup.

import { percent } from './format.js';

/**
 * An element: `h('td', { class: 'num', onclick: fn, data: { volume: 'db' } }, 'text', child)`.
 * `on*` functions become listeners, `data` entries data-* attributes, booleans properties.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'data') {
      for (const [k, v] of Object.entries(value)) el.dataset[k] = v;
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'width') {
      // A bar's share: through the CSSOM, which the Content-Security-Policy allows.
      el.style.width = value;
    } else if (value === true) {
      el[key] = true;
      el.setAttribute(key, '');
    } else if (key === 'value') {
      el.value = value;
    } else {
      el.setAttribute(key, value);
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const TONES = {
  healthy: 'ok', attached: 'info', ready: 'ok', completed: 'ok', RW: 'ok', up: 'ok', on: 'ok',
  degraded: 'warn', attaching: 'warn', detaching: 'warn', creating: 'warn', inProgress: 'warn',
  WO: 'warn', pending: 'warn', deleting: 'warn', rebuilding: 'warn', standby: 'info',
  activating: 'warn', restoring: 'warn', copying: 'warn',
  faulted: 'bad', error: 'bad', ERR: 'bad', down: 'bad', failed: 'bad',
  detached: 'idle', off: 'idle', unknown: 'idle',
};

/** A state as a coloured badge. */
export function badge(state, text) {
  const tone = TONES[state] || 'idle';
  return h('span', { class: `badge ${tone}`, data: { state: String(state) } }, text ?? String(state));
}

/** A small square in a state's colour, for legends. */
export function swatch(state) {
  return h('span', { class: `sw ${TONES[state] || 'idle'}` });
}

/** A bar of segments `[{ value, class }]` out of `total`. */
export function bar(total, segments, title) {
  return h('div', { class: 'bar', title },
    segments.map((s) => h('span', { class: s.class, width: `${percent(s.value, total)}%` })));
}

/** A progress bar with its percent beside it: "rebuilding 42%". */
export function progress(value, label) {
  return h('div', { class: 'progress-cell' },
    bar(100, [{ value, class: 'progress' }]),
    h('span', { class: 'small' }, `${label ? `${label} ` : ''}${Math.round(value)}%`));
}

/** Tags as chips ("none" when there are none). */
export function chips(list) {
  if (!list || list.length === 0) return h('span', { class: 'muted' }, 'none');
  return list.map((t) => h('span', { class: 'chip' }, t));
}

/**
 * A table: `columns` are `[label, className?]`, `rows` arrays of cells (or a `tr` element).
 * `empty` is shown when there is no row.
 */
export function table(columns, rows, empty = 'Nothing here yet.') {
  if (rows.length === 0) return h('div', { class: 'empty' }, empty);
  return h('table', {},
    h('thead', {}, h('tr', {}, columns.map(([label, cls]) => h('th', { class: cls }, label)))),
    h('tbody', {}, rows));
}

/** A panel with a heading (and what goes on its right) and a body. */
export function panel(title, body, ...tools) {
  return h('section', { class: 'panel' },
    h('h2', {}, title, tools.length ? h('span', { class: 'spacer' }) : null, tools),
    body);
}

/** A page heading with buttons on the right. */
export function pageHead(title, ...tools) {
  return h('div', { class: 'page-head' }, title, h('span', { class: 'spacer' }), tools);
}

let toastBox = null;

/** A message at the bottom right for a few seconds; `bad` for an error. */
export function toast(message, bad = false) {
  if (!toastBox || !toastBox.isConnected) {
    toastBox = h('div', { class: 'toasts', role: 'status', 'aria-live': 'polite' });
    document.body.appendChild(toastBox);
  }
  const el = h('div', { class: bad ? 'toast bad' : 'toast' }, message);
  toastBox.appendChild(el);
  setTimeout(() => el.remove(), bad ? 9000 : 4000);
}

/**
 * Runs `work` (an API call) from a button: the button is disabled meanwhile, a success
 * shows `done` (text, or a function of the result), a failure shows the API's words.
 */
export async function act(button, work, done) {
  if (button) button.disabled = true;
  try {
    const result = await work();
    const text = typeof done === 'function' ? done(result) : done;
    if (text) toast(text);
    return result;
  } catch (err) {
    toast(err.message, true);
    return undefined;
  } finally {
    if (button && button.isConnected) button.disabled = false;
  }
}

/**
 * A modal form. `fields`: `{ name, label, type ('text', 'number', 'select', 'checkbox'),
 * value, options ([value, label] pairs), hint, required, placeholder }`. `submit(values)`
 * calls the API: its error is shown in the dialog in the API's words and the dialog stays
 * open; on success it closes. Resolves with what `submit` returned, or null if cancelled.
 */
export function formDialog({ title, intro, fields, submitLabel = 'Save', danger = false, submit }) {
  return new Promise((resolve) => {
    const inputs = {};
    const rows = fields.map((f) => {
      const id = `f-${f.name}`;
      let input;
      if (f.type === 'select') {
        input = h('select', { id, name: f.name },
          f.options.map(([value, label]) => h('option', { value, selected: String(value) === String(f.value) }, label)));
      } else if (f.type === 'checkbox') {
        input = h('input', { id, name: f.name, type: 'checkbox', checked: Boolean(f.value) });
      } else {
        input = h('input', {
          id, name: f.name, type: f.type || 'text', value: f.value ?? '', required: f.required,
          placeholder: f.placeholder, min: f.min, max: f.max, autocomplete: 'off', spellcheck: 'false',
        });
      }
      inputs[f.name] = input;
      return [h('label', { for: id }, f.label), input, f.hint ? h('div', { class: 'hint' }, f.hint) : null];
    });
    const error = h('div', { class: 'error', role: 'alert' });
    const ok = h('button', { type: 'submit', class: danger ? 'danger' : 'primary' }, submitLabel);
    const cancel = h('button', { type: 'button' }, 'Cancel');
    const form = h('form', { method: 'dialog' },
      h('h2', {}, title),
      intro ? h('p', { class: 'muted' }, intro) : null,
      rows.length ? h('div', { class: 'form' }, rows) : null,
      error,
      h('div', { class: 'buttons' }, cancel, ok));
    const dialog = h('dialog', {}, form);
    let settled = false;
    const finish = (value) => {
      if (settled) return;
      settled = true;
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    cancel.addEventListener('click', () => finish(null));
    dialog.addEventListener('cancel', (e) => { e.preventDefault(); finish(null); });
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      const values = {};
      for (const [name, input] of Object.entries(inputs)) {
        values[name] = input.type === 'checkbox' ? input.checked : input.value;
      }
      ok.disabled = true;
      error.textContent = '';
      try {
        const result = await submit(values);
        finish(result ?? true);
      } catch (err) {
        error.textContent = err.message;
        ok.disabled = false;
      }
    });
    document.body.appendChild(dialog);
    dialog.showModal();
    const first = Object.values(inputs)[0];
    if (first) first.focus(); else ok.focus();
  });
}

/** A yes/no question as a modal; `submit` does the work, as in [`formDialog`]. */
export function confirmDialog(title, intro, submit, submitLabel = 'Delete') {
  return formDialog({ title, intro, fields: [], submitLabel, danger: true, submit });
}
