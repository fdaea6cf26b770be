// Drives the web console in headless Chromium (playwright-core) against a dev cluster, as
// a user would, asserting on what each page shows. Run by tests/ui.rs, which passes:
//   PLAYWRIGHT_CORE  the playwright-core package directory
//   CHROMIUM         the browser executable
//   UI_URL           a manager's REST listener (http://127.0.0.1:PORT)
//   UI_TOKEN         the API token
//   UI_SHOTS         where the screenshots go
//   UI_BACKUP_TARGET a file:// backup target to set
// Protocol with the test on stdout/stdin: "screenshot PATH" lines; "need kill-replica VOL"
// asks the test to SIGKILL one replica process of VOL ("done PID"); "need
// restart-manager-and-create-job JOB" to SIGKILL and restart manager 1, then create a
// recurring job JOB with the CLI ("done").

import { createRequire } from 'node:module';
import { createInterface } from 'node:readline';
import path from 'node:path';

const require = createRequire(import.meta.url);
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const { UI_URL: url, UI_TOKEN: token, UI_SHOTS: shots, UI_BACKUP_TARGET: target } = process.env;

const lines = createInterface({ input: process.stdin });
const waiting = [];
lines.on('line', (line) => waiting.shift()?.(line));
const ask = (question) => new Promise((resolve) => {
  waiting.push(resolve);
  console.log(`need ${question}`);
});

const started = Date.now();
const problems = [];
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM, headless: true, args: ['--no-sandbox'] });
const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
page.setDefaultTimeout(30_000);
page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
page.on('console', (msg) => {
  // A refused request is logged by the browser too ("Failed to load resource": the 401 of
  // the bad token, the 400 of the bad setting); the page shows those. Anything else — a
  // script error, a Content-Security-Policy violation — is a problem.
  if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) problems.push(`console: ${msg.text()}`);
});

let shot = 0;
async function screenshot(name) {
  shot += 1;
  const file = path.join(shots, `${String(shot).padStart(2, '0')}-${name}.png`);
  // From the top, so that the sticky sidebar is where a person sees it.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: file, fullPage: true });
  console.log(`screenshot ${file}`);
}

async function step(name, work) {
  const t = Date.now();
  await work();
  if (problems.length) throw new Error(`during "${name}": ${problems.join('; ')}`);
  console.log(`step ${name} ok ${((Date.now() - t) / 1000).toFixed(1)} s`);
}

/** Waits until `selector`'s text matches `pattern`. */
async function expectText(selector, pattern, timeout = 30_000) {
  const locator = page.locator(selector).first();
  try {
    await locator.waitFor({ timeout });
    await page.waitForFunction(([sel, source, flags]) => {
      const el = document.querySelector(sel);
      return el && new RegExp(source, flags).test(el.textContent);
    }, [selector, pattern.source, pattern.flags], { timeout, polling: 100 });
  } catch (err) {
    const now = await page.locator(selector).first().textContent().catch(() => '(not on the page)');
    throw new Error(`${selector} never matched ${pattern} (it says: ${now}): ${err.message.split('\n')[0]}`);
  }
}

/** Fills and submits the open dialog. */
async function dialog(values, button) {
  const d = page.locator('dialog[open]');
  await d.waitFor();
  for (const [name, value] of Object.entries(values)) {
    const input = d.locator(`[name="${name}"]`);
    if ((await input.evaluate((el) => el.tagName)) === 'SELECT') await input.selectOption(String(value));
    else await input.fill(String(value));
  }
  await d.locator('button[type=submit]', { hasText: button }).click();
}

async function dialogClosed() {
  await page.locator('dialog[open]').waitFor({ state: 'detached' });
}

const go = async (hash) => {
  await page.goto(`${url}/#${hash}`);
};

try {
  await step('sign in', async () => {
    await page.goto(url);
    await page.fill('#token', 'not-the-token');
    await page.click('#signin button[type=submit]');
    await expectText('#signin .error', /the bearer token is not valid for this cluster/);
    await screenshot('sign-in-refused');
    await page.fill('#token', token);
    await page.click('#signin button[type=submit]');
    await expectText('.nav a.active', /Dashboard/);
    await expectText('.live', /live/);
    await expectText('#nodes-summary', /up\s*3/);
  });

  await step('create a volume and see it healthy', async () => {
    await go('/volumes');
    await page.click('#create-volume');
    // Large and sparse: a rebuild compares every chunk, holes too (about 13 GiB/s here),
    // so its progress shows for a few seconds; backups and restores read only data.
    await dialog({ name: 'web', size: '48Gi', replicas: 3 }, 'Create');
    await dialogClosed();
    const row = 'tr[data-volume="web"]';
    await expectText(`${row} td.robustness`, /healthy/);
    await page.locator(row).getByRole('button', { name: 'Attach' }).click();
    await dialog({ node: 'node-1' }, 'Attach');
    await dialogClosed();
    await expectText(`${row} td.state`, /attached/);
    await expectText(`${row} td.robustness`, /healthy/);
    await screenshot('volumes');
  });

  await step('take a snapshot and revert to it', async () => {
    await go('/volumes/web');
    await expectText('#volume-state', /attached/);
    await page.click('#take-snapshot');
    await dialog({ name: 'snap1' }, 'Take snapshot');
    await dialogClosed();
    await expectText('tr[data-snapshot="snap1"]', /ready/);
    await expectText('#snapshot-chain', /snap1\s*→\s*volume head/);
    await page.locator('tr[data-snapshot="snap1"]').getByRole('button', { name: 'Revert' }).click();
    await dialog({}, 'Revert');
    await dialogClosed();
    await expectText('.toasts', /Volume web reverted to snap1/);
    await screenshot('volume-snapshot-reverted');
  });

  await step('kill a replica and watch it rebuilt', async () => {
    await go('/volumes/web');
    await expectText('#volume-robustness', /healthy/);
    const answer = await ask('kill-replica web');
    if (!answer.startsWith('done')) throw new Error(`the test could not kill a replica: ${answer}`);
    await expectText('#volume-robustness', /degraded/);
    // The engine's rebuild progress, shown while the replica is write-only.
    await page.waitForFunction(() => [...document.querySelectorAll('td.rebuild')]
      .some((td) => /rebuilding \d+%/.test(td.textContent)), null, { timeout: 60_000, polling: 100 });
    await screenshot('volume-rebuilding');
    await expectText('#volume-robustness', /healthy/, 90_000);
    await page.waitForFunction(() => {
      const modes = [...document.querySelectorAll('td.mode')].map((td) => td.textContent);
      return modes.length === 3 && modes.every((m) => m === 'RW');
    }, null, { timeout: 30_000, polling: 200 });
  });

  await step('set a backup target and see a bad setting refused', async () => {
    await go('/settings');
    const row = 'tr[data-setting="backupTarget"]';
    await page.locator(`${row} input`).fill(target);
    await page.locator(row).getByRole('button', { name: 'Save' }).click();
    await expectText('.toasts', /backupTarget = file:/);
    const bad = 'tr[data-setting="defaultReplicaCount"]';
    await page.locator(`${bad} input`).fill('99');
    await page.locator(bad).getByRole('button', { name: 'Save' }).click();
    await expectText(`${bad} .error`, /setting "defaultReplicaCount": 99 is out of range 1..=20/);
    await screenshot('settings-refused');
  });

  await step('back up a snapshot', async () => {
    await go('/volumes/web');
    await page.locator('tr[data-snapshot="snap1"]').getByRole('button', { name: 'Back up' }).click();
    await expectText('.toasts', /Backup backup-[0-9a-f]+ of snap1 started/);
    await expectText('tr[data-backup] td:nth-child(3)', /completed/, 60_000);
    await screenshot('volume-backed-up');
  });

  await step('restore the backup into a new volume', async () => {
    await go('/backups');
    const bv = 'tr[data-backup-volume="web"]';
    await expectText(bv, /web\s*1/);
    await page.locator(bv).getByRole('button', { name: 'Show backups' }).click();
    await page.locator('tr.listing tr[data-backup]').first().getByRole('button', { name: 'Restore' }).click();
    await dialog({ name: 'web-restored', replicas: 1 }, 'Restore');
    await dialogClosed();
    await go('/volumes/web-restored');
    await expectText('#volume-summary', /Restored from\s*file:/);
    await expectText('#volume-summary', /Restore\s*completed/, 60_000);
    await expectText('#volume-state', /detached/);
    await screenshot('volume-restored');
  });

  await step('create a DR standby and activate it', async () => {
    await go('/backups');
    await page.locator('tr[data-backup-volume="web"]').getByRole('button', { name: 'Create DR volume' }).click();
    await dialog({ name: 'web-dr', replicas: 1 }, 'Create standby');
    await dialogClosed();
    const row = 'tr[data-volume="web-dr"]';
    await expectText(`${row} td.status`, /standby/);
    await expectText(`${row} td.restored`, /backup-[0-9a-f]+/, 60_000);
    await screenshot('backups-standby');
    await page.locator(row).getByRole('button', { name: 'Activate' }).click();
    await expectText(`${row} td.status`, /activated/, 60_000);
    await screenshot('backups-activated');
  });

  await step('create a recurring job and see it listed', async () => {
    await go('/jobs');
    await page.click('#create-job');
    await dialog({ name: 'hourly', task: 'snapshot', cron: '0 * * * *', retain: 3, groups: 'default' }, 'Create');
    await dialogClosed();
    await expectText('tr[data-job="hourly"]', /hourly\s*snapshot\s*0 \* \* \* \*\s*3/);
    await expectText('tr[data-job="hourly"]', /web/);
    await screenshot('jobs');
  });

  await step('turn node scheduling off and on', async () => {
    await go('/nodes');
    const row = 'tr[data-node="node-2"]';
    await expectText(`${row} td.scheduling`, /schedulable/);
    await page.locator(row).getByRole('button', { name: 'Disable scheduling' }).click();
    await expectText(`${row} td.scheduling`, /scheduling off/);
    await screenshot('nodes-scheduling-off');
    await page.locator(row).getByRole('button', { name: 'Enable scheduling' }).click();
    await expectText(`${row} td.scheduling`, /schedulable/);
    await page.locator(row).getByRole('button', { name: 'Edit tags' }).click();
    await dialog({ tags: 'ssd, fast' }, 'Save');
    await dialogClosed();
    await expectText(`${row} td.tags`, /fastssd/);
  });

  await step('dashboard', async () => {
    await go('/');
    await expectText('#volume-count', /^3$/);
    await expectText('#volumes-by-robustness', /healthy\s*3/);
    await expectText('#storage', /Schedulable/);
    await expectText('#recent-events', /node node-2: scheduling on/);
    await screenshot('dashboard');
  });
  await step('the event stream resumes after its manager restarts', async () => {
    // The test SIGKILLs the manager this page talks to, starts it again, and creates a job
    // through the CLI: the page learns of it only from the resumed stream.
    await go('/');
    await expectText('.live', /live/);
    const before = Number(await page.getAttribute('.live', 'data-connections'));
    const answer = await ask('restart-manager-and-create-job after-restart');
    if (!answer.startsWith('done')) throw new Error(`the test could not restart the manager: ${answer}`);
    await expectText('#recent-events', /recurring job after-restart created/, 30_000);
    await expectText('.live', /live/);
    const after = Number(await page.getAttribute('.live', 'data-connections'));
    if (!(after > before)) throw new Error(`the stream was not reconnected (connections ${before} then ${after})`);
  });

  await step('delete two volumes at once', async () => {
    await go('/volumes');
    for (const name of ['web-restored', 'web-dr']) {
      await page.locator(`tr[data-volume="${name}"] input[type=checkbox]`).check();
    }
    await expectText('#selected-count', /2 selected/);
    await page.locator('.toolbar').getByRole('button', { name: 'Delete' }).click();
    await dialog({}, 'Delete');
    await dialogClosed();
    await page.locator('tr[data-volume="web-dr"]').waitFor({ state: 'detached', timeout: 60_000 });
    await page.locator('tr[data-volume="web-restored"]').waitFor({ state: 'detached', timeout: 60_000 });
    await expectText('tbody', /web/);
  });
  await step('expand a volume, change its replica count, delete a snapshot', async () => {
    await go('/volumes');
    const row = 'tr[data-volume="web"]';
    await page.locator(row).getByRole('button', { name: 'Expand' }).click();
    await dialog({ size: '50Gi' }, 'Expand');
    await dialogClosed();
    await expectText(`${row} td:nth-child(5)`, /^50 GiB$/);
    await page.locator(row).getByRole('button', { name: 'Replicas' }).click();
    await dialog({ count: 2 }, 'Save');
    await dialogClosed();
    await expectText(`${row} td:nth-child(6)`, /^2\/2$/, 60_000);
    await go('/volumes/web');
    await page.locator('tr[data-snapshot="snap1"]').getByRole('button', { name: 'Delete' }).click();
    await dialog({}, 'Delete');
    await dialogClosed();
    await page.locator('tr[data-snapshot="snap1"]').waitFor({ state: 'detached', timeout: 60_000 });
    await expectText('#volume-robustness', /healthy/);
    await screenshot('volume-expanded');
  });
  await step('an engine upgrade to an image that is not there fails, the volume untouched', async () => {
    await go('/volumes/web');
    await page.locator('#upgrade-engine').click();
    await dialog({ image: '/nonexistent/shorthorn' }, 'Upgrade');
    await dialogClosed();
    await expectText('#engine-upgrade', /to \/nonexistent\/shorthorn: failed: running \/nonexistent\/shorthorn: No such file/, 60_000);
    await expectText('#volume-robustness', /healthy/);
    await screenshot('engine-upgrade-failed');
  });
  console.log(`console test passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
} catch (err) {
  console.log(`FAILED: ${err.message}`);
  await screenshot('failure').catch(() => {});
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.close();
}
