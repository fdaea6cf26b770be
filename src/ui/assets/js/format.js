// How numbers and times read on the page: sizes in binary units (as the CLI's `1Gi`),
// times in the browser's locale and as "3 min ago".

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** `bytes` as "1.5 GiB" (whole numbers stay whole: "2 GiB"). */
export function bytes(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  let value = Number(n);
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  const text = Number.isInteger(value) ? String(value) : value.toFixed(value < 10 ? 2 : 1);
  return `${text} ${UNITS[unit]}`;
}

/** A rate in bytes per second. */
export function rate(n) {
  return `${bytes(n)}/s`;
}

/** Milliseconds since the epoch as a local date and time. */
export function time(ms) {
  if (!ms) return '–';
  return new Date(ms).toLocaleString();
}

/** Milliseconds since the epoch as "12 s ago", "3 min ago", "2 h ago" or a date. */
export function ago(ms) {
  if (!ms) return '–';
  const seconds = Math.round((Date.now() - ms) / 1000);
  if (seconds < 0) return `in ${duration(-seconds)}`;
  if (seconds < 86400) return `${duration(seconds)} ago`;
  return new Date(ms).toLocaleDateString();
}

/** Seconds as "12 s", "3 min", "2 h". */
export function duration(seconds) {
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
  return `${Math.round(seconds / 3600)} h`;
}

/** Percent of `part` in `whole`, 0..100. */
export function percent(part, whole) {
  if (!whole) return 0;
  return Math.max(0, Math.min(100, (part * 100) / whole));
}

/** A size the user typed: a number of bytes or a number with a binary suffix, for the API. */
export function sizeInput(text) {
  const trimmed = String(text).trim();
  return /^\d+$/.test(trimmed) ? Number(trimmed) : trimmed;
}

/** Bytes as the API and CLI write sizes: "2Gi", "512Mi", or bytes. */
export function sizeText(n) {
  for (const [unit, factor] of [['Ti', 2 ** 40], ['Gi', 2 ** 30], ['Mi', 2 ** 20]]) {
    if (n >= factor && n % factor === 0) return `${n / factor}${unit}`;
  }
  return String(n);
}
