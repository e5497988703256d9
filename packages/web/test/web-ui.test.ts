/**
 * Browser tests: the built web UI served by a real manager (SQLite), driven in Debian's
 * headless Chromium with playwright-core. No agent runs, so created VMs wait for a host.
 * Screenshots of the main pages land in test-results/screenshots/ (git-ignored).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { webRoutes } from '../../manager/src/http/web';
import { ADMIN_PASSWORD, client, startManager, type TestManager } from '../../manager/test/harness';

const here = path.dirname(fileURLToPath(import.meta.url));
const webDir = path.resolve(here, '..');
const distDir = path.join(webDir, 'dist');
const repoRoot = path.resolve(webDir, '../..');
const shots = path.join(repoRoot, 'test-results', 'screenshots');
const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

let t: TestManager;
let browser: Browser;
let ctx: BrowserContext;
let page: Page;
let api: ReturnType<typeof client>;
const heartbeats: NodeJS.Timeout[] = [];

async function shot(p: Page, name: string): Promise<void> {
  // Let bars and badges settle (CSS transitions) before the picture.
  await p.evaluate(() => window.scrollTo(0, 0));
  await p.waitForTimeout(350);
  await p.screenshot({
    path: path.join(shots, `${name}.png`),
    fullPage: true,
    style: '.toasts { display: none }',
  });
}

/** A raw GET (fetch would normalise the dot segments away); answers the status code. */
function rawStatus(url: string, target: string): Promise<number> {
  const u = new URL(url);
  return new Promise((resolve, reject) => {
    const sock = net.connect(Number(u.port), u.hostname, () =>
      sock.write(`GET ${target} HTTP/1.1\r\nHost: ${u.host}\r\nConnection: close\r\n\r\n`),
    );
    let head = '';
    sock.on('data', (d) => {
      head += d.toString('latin1');
    });
    sock.on('end', () => resolve(Number(head.split(' ')[1])));
    sock.on('error', reject);
  });
}

async function newPage(c: BrowserContext): Promise<Page> {
  const p = await c.newPage();
  p.setDefaultTimeout(10_000);
  p.on('pageerror', (err) => {
    throw new Error(`page error: ${err.message}`);
  });
  return p;
}

async function login(p: Page, username: string, password: string): Promise<void> {
  await p.goto(`${t.url}/`);
  await p.waitForURL(/\/login/);
  await p.getByLabel('User name').fill(username);
  await p.getByLabel('Password').fill(password);
  await p.getByRole('button', { name: 'Log in' }).click();
  await p.getByRole('heading', { name: 'Dashboard' }).waitFor();
}

/** A host registered through the agent protocol, heartbeating from the test (no real agent). */
async function fakeHost(
  name: string,
  cap: { vcpu: number; mem_mib: number; disk_mib: number },
): Promise<string> {
  const jt = await api.post('/api/v1/join-tokens', { description: `for ${name}` });
  expect(jt.status).toBe(201);
  const capacity = {
    ...cap,
    kvm: false,
    drivers: [{ kind: 'qemu', available: true, version: '8.2.2', kvm: false, features: [] }],
  };
  const reg = await client(t.url, jt.body.token).post('/api/v1/agent/register', {
    name,
    address: 'http://127.0.0.1:9',
    agent_version: '0.1.0',
    capacity,
    labels: { zone: 'lab' },
  });
  expect(reg.status).toBe(201);
  const host = client(t.url, reg.body.credential);
  const beat = () => host.post('/api/v1/agent/heartbeat', { capacity, vms: [] }).catch(() => undefined);
  heartbeats.push(setInterval(beat, 2000));
  return reg.body.host_id as string;
}

beforeAll(async () => {
  if (!fs.existsSync(path.join(distDir, 'index.html'))) {
    execFileSync('npm', ['run', 'build', '-w', '@nqvm/web'], {
      cwd: repoRoot,
      stdio: 'inherit',
      env: { ...process.env, NODE_ENV: 'production' },
    });
  }
  fs.mkdirSync(shots, { recursive: true });
  // webRoutes is idempotent: harmless if server.ts already registers the UI.
  t = await startManager('sqlite', {}, { extend: (app) => webRoutes(app, distDir) });
  api = client(t.url, t.adminToken);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--no-first-run',
    ],
  });
  ctx = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light' });
  page = await newPage(ctx);
});

afterAll(async () => {
  for (const h of heartbeats) clearInterval(h);
  await browser?.close();
  await t?.close();
});

describe('web UI', () => {
  test('serves the SPA with a fallback but leaves API, docs and health alone', async () => {
    const index = await fetch(`${t.url}/vms/some/client/route`);
    expect(index.status).toBe(200);
    expect(index.headers.get('content-type')).toMatch(/text\/html/);
    expect(index.headers.get('content-security-policy')).toContain("default-src 'self'");
    expect(await index.text()).toContain('<div id="root">');
    const missingApi = await fetch(`${t.url}/api/v1/no-such-thing`);
    expect(missingApi.status).toBe(404);
    expect(((await missingApi.json()) as { error: { code: string } }).error.code).toBe('ROUTE_NOT_FOUND');
    const missingAsset = await fetch(`${t.url}/assets/missing-file.js`);
    expect(missingAsset.status).toBe(404);
    await missingAsset.text();
    for (const target of [
      '/assets/../../package.json',
      '/assets/%2e%2e/%2e%2e/package.json',
      '/..%2fpackage.json',
    ])
      expect(await rawStatus(t.url, target)).toBe(404);
    const health = await fetch(`${t.url}/healthz`);
    expect(await health.json()).toMatchObject({ status: 'ok' });
  });

  test('logs in', async () => {
    await page.goto(`${t.url}/`);
    await page.waitForURL(/\/login/);
    await page.getByLabel('User name').waitFor();
    await shot(page, 'login-light');

    await page.getByLabel('User name').fill('admin');
    await page.getByLabel('Password').fill('wrong-password');
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('alert').filter({ hasText: 'wrong user name or password' }).waitFor();
    // The password field is cleared after every submission.
    expect(await page.getByLabel('Password').inputValue()).toBe('');

    await page.getByLabel('Password').fill(ADMIN_PASSWORD);
    await page.getByRole('button', { name: 'Log in' }).click();
    await page.getByRole('heading', { name: 'Dashboard' }).waitFor();
    await page.locator('[data-testid="live"].live-live').waitFor();
    expect(await page.locator('.user').textContent()).toContain('admin');
  });

  test('creates a VM in the wizard; it appears in the list without a reload', async () => {
    await page
      .getByRole('navigation', { name: 'Main' })
      .getByRole('link', { name: 'Virtual machines' })
      .click();
    await page.getByRole('heading', { name: /Virtual machines/ }).waitFor();
    await page.evaluate(() => {
      (window as unknown as { __noReload: boolean }).__noReload = true;
    });

    await page.getByRole('button', { name: 'Create VM' }).click();
    const dialog = page.getByRole('dialog', { name: 'Create virtual machine' });
    await dialog.waitFor();
    // Invalid name: the wizard stays on step 1 and says why.
    await dialog.getByLabel('Name').fill('-bad name');
    await dialog.getByRole('button', { name: 'Next' }).click();
    await dialog.getByText('starting alphanumeric').waitFor();

    await dialog.getByLabel('Name').fill('web-ui-1');
    await dialog.getByLabel('VMM').selectOption('qemu');
    await dialog.getByRole('button', { name: 'Next' }).click();
    await dialog.getByLabel('vCPUs').fill('2');
    await dialog.getByLabel('Memory (MiB)').fill('512');
    // No images API answers yet: the image pickers stay hidden.
    expect(await dialog.getByLabel('Kernel image').count()).toBe(0);
    await dialog.getByRole('button', { name: 'Next' }).click();
    await dialog.getByLabel('User', { exact: true }).fill('debian');
    await dialog.getByLabel('Password').fill('guest-secret-1');
    await dialog.getByLabel('Hostname').fill('web-ui-1');
    await dialog.getByRole('button', { name: 'Next' }).click();
    const summary = dialog.getByTestId('wizard-summary');
    await summary.waitFor();
    expect(await summary.textContent()).toContain('password set');
    expect(await summary.textContent()).not.toContain('guest-secret-1');
    await dialog.getByRole('button', { name: 'Create' }).click();
    await dialog.waitFor({ state: 'hidden' });

    const row = page.locator('tr[data-vm="web-ui-1"]');
    await row.waitFor();
    expect(await row.locator('.badge').textContent()).toMatch(/creating|stopped|starting/);
    expect(await page.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload)).toBe(true);
    // The guest password is nowhere in the page any more.
    expect(await page.content()).not.toContain('guest-secret-1');

    const vm = (await api.get('/api/v1/vms?name=web-ui-1')).body.items[0];
    expect(vm).toMatchObject({ vcpu: 2, mem_mib: 512, vmm: 'qemu' });
    expect(vm.guest_config).toMatchObject({ username: 'debian', has_password: true, hostname: 'web-ui-1' });
  });

  test('follows changes made elsewhere through the event stream', async () => {
    // Created and deleted by another client: only SSE can tell this page.
    const created = await api.post('/api/v1/vms', { name: 'sse-probe', start: false });
    expect(created.status).toBe(202);
    const row = page.locator('tr[data-vm="sse-probe"]');
    await row.waitFor();
    expect(await row.locator('.badge').textContent()).toContain('stopped');
    const del = await api.del(`/api/v1/vms/${created.body.vm.id}`);
    expect(del.status).toBe(202);
    await row.waitFor({ state: 'detached' });
    expect(await page.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload)).toBe(true);
  });

  test('opens the VM detail page with console and operations', async () => {
    for (const [name, start] of [
      ['db-1', false],
      ['cache-1', false],
      ['build-runner', true],
    ] as const)
      expect((await api.post('/api/v1/vms', { name, start, vcpu: 1, mem_mib: 256 })).status).toBe(202);
    await page.locator('tr[data-vm="build-runner"]').waitFor();
    await shot(page, 'vm-list-light');

    // Search and state filter work on the live list.
    await page.getByLabel('Search by name').fill('web');
    await page.locator('tr[data-vm="db-1"]').waitFor({ state: 'detached' });
    expect(await page.locator('tr[data-vm]').count()).toBe(1);
    await page.getByLabel('Search by name').fill('');
    await page.getByLabel('Filter by state').selectOption('stopped');
    await page.locator('tr[data-vm="web-ui-1"]').waitFor({ state: 'detached' });
    expect(await page.locator('tr[data-vm]').count()).toBe(2);
    await page.getByLabel('Filter by state').selectOption('');

    await page.locator('tr[data-vm="web-ui-1"]').getByRole('link', { name: 'web-ui-1' }).click();
    await page.getByRole('heading', { name: /web-ui-1/ }).waitFor();
    const actions = page.getByTestId('vm-actions');
    expect(await actions.getByRole('button', { name: 'Start' }).isDisabled()).toBe(true);
    expect(await actions.getByRole('button', { name: 'Delete' }).isEnabled()).toBe(true);
    await shot(page, 'vm-detail-light');

    await page.getByRole('tab', { name: 'Console' }).click();
    await page.getByTestId('console').locator('.xterm').waitFor();
    // No host yet: the console says so with the API's message (and keeps polling).
    await page.getByTestId('console-status').filter({ hasText: 'not been placed on a host' }).waitFor();
    await shot(page, 'vm-console-light');

    await page.getByRole('tab', { name: 'Operations' }).click();
    await page.getByTestId('operations').getByText('vm.create').waitFor();
    await page.getByRole('tab', { name: 'Summary' }).click();
  });

  test('deletes the VM after confirmation; it disappears without a reload', async () => {
    const actions = page.getByTestId('vm-actions');
    await actions.getByRole('button', { name: 'Delete' }).click();
    const dialog = page.getByRole('dialog', { name: /Delete web-ui-1/ });
    await dialog.waitFor();
    const confirm = dialog.getByTestId('confirm');
    expect(await confirm.isDisabled()).toBe(true);
    await dialog.getByLabel('Type "web-ui-1" to confirm').fill('web-ui-1');
    await confirm.click();
    await page.waitForURL(/\/vms$/);
    await page.locator('tr[data-vm="db-1"]').waitFor();
    await page.locator('tr[data-vm="web-ui-1"]').waitFor({ state: 'detached' });
    expect((await api.get('/api/v1/vms?name=web-ui-1')).body.items).toHaveLength(0);
    expect(await page.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload)).toBe(true);
  });

  test('shows API errors with their message', async () => {
    // Names are unique: the manager's message is shown in the wizard.
    await page.getByRole('button', { name: 'Create VM' }).click();
    const dialog = page.getByRole('dialog', { name: 'Create virtual machine' });
    await dialog.getByLabel('Name').fill('db-1'); // taken
    for (let i = 0; i < 3; i++) await dialog.getByRole('button', { name: 'Next' }).click();
    await dialog.getByRole('button', { name: 'Create' }).click();
    await dialog.getByRole('alert').filter({ hasText: 'a VM named "db-1" exists' }).waitFor();
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    await dialog.waitFor({ state: 'hidden' });
  });

  test('hosts page renders with capacity and admin controls', async () => {
    const hostA = await fakeHost('hv-01', { vcpu: 16, mem_mib: 65_536, disk_mib: 1_000_000 });
    await fakeHost('hv-02', { vcpu: 8, mem_mib: 32_768, disk_mib: 500_000 });
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Hosts' }).click();
    const card = page.locator('[data-host="hv-01"]');
    await card.waitFor();
    await page.locator('[data-host="hv-02"]').waitFor();
    expect(await card.getByText('ready').count()).toBeGreaterThan(0);
    expect(await card.getByRole('progressbar', { name: 'vCPU' }).count()).toBe(1);

    // Cordon: the badge appears through the event stream.
    await page.locator('[data-host="hv-02"]').getByRole('button', { name: 'Cordon' }).click();
    await page.locator('[data-host="hv-02"]').getByText('cordoned').waitFor();
    await page.locator('[data-host="hv-02"]').getByRole('button', { name: 'Uncordon' }).waitFor();

    // A join token is shown once, with the agent command.
    await page.getByRole('button', { name: 'Create join token' }).click();
    const create = page.getByRole('dialog', { name: 'Create join token' });
    await create.getByLabel('Description').fill('rack 2');
    await create.getByRole('button', { name: 'Create' }).click();
    const once = page.getByTestId('secret-once');
    await once.waitFor();
    const token = await once.getByLabel('Join token').inputValue();
    expect(token).toMatch(/^nqvm_join_/);
    await page.getByRole('button', { name: 'Done' }).click();
    await once.waitFor({ state: 'detached' });
    expect(await page.content()).not.toContain(token);
    await page.getByRole('cell', { name: 'rack 2' }).waitFor();

    // The VM waiting for a host gets placed on hv-01: allocation shows on the bars.
    await api.post('/api/v1/vms', { name: 'web-2', vcpu: 4, mem_mib: 8192, start: true });
    await expect
      .poll(async () => (await api.get(`/api/v1/hosts/${hostA}`)).body.allocated.vcpu, { timeout: 10_000 })
      .toBeGreaterThan(0);
    await card.getByText(/^[1-9]\d* \/ 16/).waitFor();
    await shot(page, 'hosts-light');
  });

  test('users page: create a user; the password is not kept', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Users' }).click();
    await page.getByRole('button', { name: 'Create user' }).click();
    const dialog = page.getByRole('dialog', { name: 'Create user' });
    await dialog.getByLabel('User name').fill('olivia');
    await dialog.getByLabel('Password').fill('olivia-password');
    await dialog.getByLabel('Role').selectOption('operator');
    await dialog.getByRole('button', { name: 'Create' }).click();
    await dialog.waitFor({ state: 'hidden' });
    await page.locator('tr[data-user="olivia"]').waitFor();
    expect(await page.content()).not.toContain('olivia-password');
    await shot(page, 'users-light');

    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Audit log' }).click();
    await page.getByTestId('audit-table').getByText('user.create').first().waitFor();
  });

  test('account page: an API token is shown once', async () => {
    await page
      .getByRole('navigation', { name: 'Main' })
      .getByRole('link', { name: 'Account & tokens' })
      .click();
    await page.getByRole('button', { name: 'Create token' }).click();
    const dialog = page.getByRole('dialog', { name: 'Create API token' });
    await dialog.getByLabel('Name').fill('laptop-cli');
    await dialog.getByLabel('Role').selectOption('operator');
    await dialog.getByRole('button', { name: 'Create' }).click();
    const once = page.getByTestId('secret-once');
    const token = await once.getByLabel('API token').inputValue();
    expect(token).toMatch(/^nqvm_tok_/);
    await page.getByRole('button', { name: 'Done' }).click();
    await once.waitFor({ state: 'detached' });
    expect(await page.content()).not.toContain(token);
    // The new token works, and appears in the list through the event stream.
    expect((await client(t.url, token).get('/api/v1/auth/me')).body.effective_role).toBe('operator');
    await page.getByTestId('tokens-table').getByRole('cell', { name: 'laptop-cli' }).waitFor();
    await shot(page, 'account-light');
  });

  test('dashboard and dark theme screenshots', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Dashboard' }).click();
    await page.getByTestId('vm-counts').waitFor();
    await page.getByTestId('host-capacity').first().waitFor();
    await page.getByTestId('operations').waitFor();
    await shot(page, 'dashboard-light');

    // prefers-color-scheme: dark is followed while the theme is "system".
    await page.emulateMedia({ colorScheme: 'dark' });
    await expect.poll(() => page.evaluate(() => document.documentElement.dataset.theme)).toBe('dark');
    await shot(page, 'dashboard-dark');
    for (const [to, name, ready] of [
      ['/vms', 'vm-list-dark', 'tr[data-vm="db-1"]'],
      ['/hosts', 'hosts-dark', '[data-host="hv-01"]'],
      ['/users', 'users-dark', 'tr[data-user="olivia"]'],
    ] as const) {
      await page.getByRole('navigation', { name: 'Main' }).locator(`a[href="${to}"]`).click();
      await page.locator(ready).waitFor();
      await shot(page, name);
    }
    await page.getByRole('navigation', { name: 'Main' }).locator('a[href="/vms"]').click();
    await page.locator('tr[data-vm="db-1"]').getByRole('link').click();
    await page.getByRole('heading', { name: /db-1/ }).waitFor();
    await shot(page, 'vm-detail-dark');

    // The toggle overrides the system preference: system -> light -> dark -> system.
    await page.getByTestId('theme-toggle').click();
    await expect.poll(() => page.evaluate(() => document.documentElement.dataset.theme)).toBe('light');
    await page.getByTestId('theme-toggle').click();
    await expect.poll(() => page.evaluate(() => document.documentElement.dataset.theme)).toBe('dark');
    await page.getByTestId('theme-toggle').click();
    await page.emulateMedia({ colorScheme: 'light' });
    await expect.poll(() => page.evaluate(() => document.documentElement.dataset.theme)).toBe('light');
  });

  test('phone width: the navigation collapses into a menu', async () => {
    const phone = await browser.newContext({
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
      colorScheme: 'light',
    });
    const p = await newPage(phone);
    await login(p, 'admin', ADMIN_PASSWORD);
    const nav = p.getByRole('navigation', { name: 'Main' });
    expect(await nav.isVisible()).toBe(false);
    await p.getByTestId('host-capacity').first().waitFor();
    await shot(p, 'dashboard-phone');
    await p.getByRole('button', { name: 'Menu' }).click();
    await nav.waitFor({ state: 'visible' });
    await shot(p, 'menu-phone');
    await nav.getByRole('link', { name: 'Virtual machines' }).click();
    await nav.waitFor({ state: 'hidden' });
    await p.locator('tr[data-vm="db-1"]').waitFor();
    // No horizontal scrolling of the page itself.
    expect(await p.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
    await shot(p, 'vm-list-phone');
    await phone.close();
  });

  test('a viewer sees no mutating controls, and forced mutations are refused', async () => {
    const password = `pw-${randomBytes(6).toString('hex')}`;
    expect((await api.post('/api/v1/users', { username: 'vera', password, role: 'viewer' })).status).toBe(
      201,
    );
    const viewerCtx = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const p = await newPage(viewerCtx);
    await login(p, 'vera', password);
    const nav = p.getByRole('navigation', { name: 'Main' });
    expect(await nav.getByRole('link', { name: 'Users' }).count()).toBe(0);
    expect(await nav.getByRole('link', { name: 'Audit log' }).count()).toBe(0);

    await nav.getByRole('link', { name: 'Virtual machines' }).click();
    await p.locator('tr[data-vm="db-1"]').waitFor();
    expect(await p.getByRole('button', { name: 'Create VM' }).count()).toBe(0);
    await p.locator('tr[data-vm="db-1"]').getByRole('link').click();
    await p.getByRole('heading', { name: /db-1/ }).waitFor();
    expect(await p.getByTestId('vm-actions').count()).toBe(0);
    for (const name of ['Start', 'Delete', 'Shut down', 'Force stop'])
      expect(await p.getByRole('button', { name }).count()).toBe(0);

    await nav.getByRole('link', { name: 'Hosts' }).click();
    await p.locator('[data-host="hv-01"]').waitFor();
    for (const name of ['Cordon', 'Uncordon', 'Drain', 'Revoke credential', 'Remove', 'Create join token'])
      expect(await p.getByRole('button', { name }).count()).toBe(0);

    await nav.getByRole('link', { name: 'Dashboard' }).click();
    await p.getByTestId('operations').waitFor();
    expect(await p.getByRole('button', { name: 'Cancel' }).count()).toBe(0);

    // Forcing it from the page, with a valid session and CSRF token: the server says no.
    const statuses = await p.evaluate(async () => {
      const csrf = decodeURIComponent(/(?:^|;\s*)nqvm_csrf=([^;]*)/.exec(document.cookie)?.[1] ?? '');
      const headers = { 'content-type': 'application/json', 'x-csrf-token': csrf };
      const vm = await fetch('/api/v1/vms', {
        method: 'POST',
        headers,
        body: JSON.stringify({ name: 'forced' }),
      });
      const list = (await (await fetch('/api/v1/vms?name=db-1')).json()) as { items: { id: string }[] };
      const del = await fetch(`/api/v1/vms/${list.items[0]?.id}`, { method: 'DELETE', headers });
      const body = (await vm.json()) as { error: { code: string } };
      return { create: vm.status, del: del.status, code: body.error.code };
    });
    expect(statuses).toEqual({ create: 403, del: 403, code: 'FORBIDDEN' });
    expect((await api.get('/api/v1/vms?name=forced')).body.items).toHaveLength(0);
    await viewerCtx.close();
  });

  test('logs out', async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.waitForURL(/\/login/);
    const me = await page.evaluate(async () => (await fetch('/api/v1/auth/me')).status);
    expect(me).toBe(401);
  });
});
