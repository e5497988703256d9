/**
 * Browser tests: the built web UI served by a real manager (SQLite), driven in Debian's
 * headless Chromium with playwright-core. At first no agent runs, so created VMs wait for a
 * host; the console test starts a real agent booting the QEMU test guest, which the template,
 * snapshot and container tests after it use too.
 * Screenshots of the main pages land in test-results/screenshots/ (git-ignored).
 */
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { type Agent, createAgent, loadAgentConfig } from '@nqvm/agent';
import { registerPathImage } from '@nqvm/manager/images/images';
import {
  BOOT_MARKER,
  buildImageFromEntries,
  busyboxLayer,
  ensureContainerInit,
  ensureTestGuest,
  pushImage,
  startOciRegistry,
} from '@nqvm/testkit';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { webRoutes } from '../../manager/src/http/web';
import { ADMIN_PASSWORD, client, startManager, type TestManager } from '../../manager/test/harness';
import { rawDisk } from '../../manager/test/image-fixtures';

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

let realHost: { agent: Agent; stateDir: string; cordoned: string[] } | undefined;

/**
 * One real agent booting the QEMU test guest, for the tests that need running guests (started
 * by the first of them, closed after all). The guest's images become the defaults, so forms that
 * leave the image pickers alone boot it; the fake hosts are cordoned so only this agent takes VMs.
 */
async function ensureRealAgent(): Promise<void> {
  if (realHost) return;
  const guest = await ensureTestGuest();
  const store = t.manager.services.store;
  for (const kind of ['kernel', 'initrd', 'rootfs'] as const) {
    await registerPathImage(store, { name: `guest-${kind}`, kind, path: guest[kind], isDefault: true });
  }
  const cordoned = ((await api.get('/api/v1/hosts')).body.items as { id: string; schedulable: boolean }[])
    .filter((h) => h.schedulable)
    .map((h) => h.id);
  for (const id of cordoned) expect((await api.post(`/api/v1/hosts/${id}/cordon`)).status).toBe(200);
  const stateDir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-web-agent-'));
  const join = await api.post('/api/v1/join-tokens', { ttl_s: 600 });
  const agent = await createAgent(
    loadAgentConfig({
      MANAGER_BASE: t.url,
      AGENT_BIND: '127.0.0.1:0',
      FC_RUN_DIR: stateDir,
      NQVM_AGENT_NAME: 'web-qemu',
      NQVM_JOIN_TOKEN: join.body.token,
      NQVM_HEARTBEAT_INTERVAL_S: '1',
      NQVM_LOG_LEVEL: 'silent',
    }),
  );
  realHost = { agent, stateDir, cordoned };
}

async function stopRealAgent(): Promise<void> {
  if (!realHost) return;
  const { agent, stateDir, cordoned } = realHost;
  realHost = undefined;
  await agent.close();
  fs.rmSync(stateDir, { recursive: true, force: true });
  for (const id of cordoned) await api.post(`/api/v1/hosts/${id}/uncordon`);
}

/** Deletes a VM by force and waits until it is gone (its QEMU process with it). */
async function removeVm(id: string): Promise<void> {
  await api.del(`/api/v1/vms/${id}?force=true`);
  await expect.poll(async () => (await api.get(`/api/v1/vms/${id}`)).status, { timeout: 30_000 }).toBe(404);
}

async function waitVmState(name: string, state: string, timeout = 150_000): Promise<string> {
  let id = '';
  await expect
    .poll(
      async () => {
        const vm = (await api.get(`/api/v1/vms?name=${name}`)).body.items.find(
          (v: { name: string }) => v.name === name,
        );
        id = vm?.id ?? '';
        return vm?.state;
      },
      { timeout, interval: 1000 },
    )
    .toBe(state);
  return id;
}

/** A busybox image for the container test, with a marker folder that `ls /` in the exec terminal shows. */
async function tickerImage() {
  return buildImageFromEntries({
    layers: [
      {
        compression: 'gzip',
        entries: [
          { name: 'web-ui-marker/', type: 'directory' },
          ...(await busyboxLayer({
            files: [{ path: 'web-ui-marker/README', mode: 0o644, text: 'made by web-ui.test.ts\n' }],
          })),
        ],
      },
    ],
    config: {
      Entrypoint: ['/bin/sh', '-c'],
      Cmd: ['echo no command given'],
      Env: ['PATH=/bin:/sbin:/usr/bin:/usr/sbin'],
    },
  });
}

/** Deletes a container by force and waits until it is gone. */
async function removeContainer(id: string): Promise<void> {
  await api.del(`/api/v1/containers/${id}?force=true`);
  await expect
    .poll(async () => (await api.get(`/api/v1/containers/${id}`)).status, { timeout: 60_000 })
    .toBe(404);
}

let viewerCreds: { username: string; password: string } | undefined;

/** A page signed in as a viewer (the user is made once). */
async function viewerPage(): Promise<{ p: Page; close: () => Promise<void> }> {
  if (!viewerCreds) {
    viewerCreds = { username: 'victor', password: `pw-${randomBytes(6).toString('hex')}` };
    expect((await api.post('/api/v1/users', { ...viewerCreds, role: 'viewer' })).status).toBe(201);
  }
  const c = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  const p = await newPage(c);
  await login(p, viewerCreds.username, viewerCreds.password);
  return { p, close: () => c.close() };
}

/** Dark and phone-width screenshots of a page: `${name}-dark`, `${name}-phone`. */
async function darkAndPhoneShots(to: string, ready: string, name: string): Promise<void> {
  // Dark before the page loads: the theme follows prefers-color-scheme from its first paint.
  await page.emulateMedia({ colorScheme: 'dark' });
  await page.goto(`${t.url}${to}`);
  await page.locator(ready).first().waitFor();
  await expect.poll(() => page.evaluate(() => document.documentElement.dataset.theme)).toBe('dark');
  await shot(page, `${name}-dark`);
  await page.emulateMedia({ colorScheme: 'light' });
  await expect.poll(() => page.evaluate(() => document.documentElement.dataset.theme)).toBe('light');
  const phone = await browser.newContext({
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
    colorScheme: 'light',
  });
  try {
    const p = await newPage(phone);
    await login(p, 'admin', ADMIN_PASSWORD);
    await p.goto(`${t.url}${to}`);
    await p.locator(ready).first().waitFor();
    expect(await p.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
    await shot(p, `${name}-phone`);
  } finally {
    await phone.close();
  }
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
  // URL imports come from a server on 127.0.0.1, which imports refuse unless allowed.
  t = await startManager(
    'sqlite',
    { NQVM_IMAGE_FETCH_ALLOW: '127.0.0.1' },
    { extend: (app) => webRoutes(app, distDir) },
  );
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
  await stopRealAgent();
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
    // The images API answers: the pickers offer the registered images (default preselected).
    await dialog.getByLabel('Kernel image').waitFor();
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
    // The bars count as the scheduler does: 16 cores x 4 (the default overcommit) = 64 vCPUs.
    await card.getByText(/^[1-9]\d* \/ 64 \(\d+%\)$/).waitFor();
    await expect
      .poll(async () => {
        const alloc = (await api.get(`/api/v1/hosts/${hostA}`)).body.allocated.vcpu as number;
        const note = await card.getByTestId('capacity-bars').locator('.bar-note').first().textContent();
        return note === `16 cores × 4 overcommit · ${64 - alloc} free`;
      })
      .toBe(true);
    await shot(page, 'hosts-light');
  });

  test('actions report their end where they started; force stop during a shutdown; live heartbeats; used join tokens; one date format', async () => {
    // A host of its own: its join token is then "used", and it keeps heartbeating every 2 s.
    await fakeHost('hv-03', { vcpu: 2, mem_mib: 4096, disk_mib: 100_000 });
    const c = await browser.newContext({ viewport: { width: 1280, height: 800 }, colorScheme: 'light' });
    const p = await newPage(c);
    try {
      await login(p, 'admin', ADMIN_PASSWORD);
      await p.goto(`${t.url}/vms`);
      await p.getByRole('button', { name: 'Create VM' }).click();
      const wizard = p.getByRole('dialog', { name: 'Create virtual machine' });
      await wizard.getByLabel('Name').fill('too-big');
      await wizard.getByRole('button', { name: 'Next' }).click();
      await wizard.getByLabel('Memory (MiB)').fill('200000');
      await wizard.getByRole('button', { name: 'Next' }).click();
      await wizard.getByRole('button', { name: 'Next' }).click();
      await wizard.getByRole('button', { name: 'Create' }).click();
      // Refused at admission: the wizard stays open with the scheduler's reason, where Create was pressed.
      const refused = wizard.getByRole('alert').filter({ hasText: 'The manager refused the VM' });
      await refused.waitFor({ timeout: 20_000 });
      expect(await refused.textContent()).toMatch(/no host has room for .*too little memory free/);
      expect((await api.get('/api/v1/vms?name=too-big')).body.items).toEqual([]);
      await wizard.getByRole('button', { name: 'Cancel' }).click();
      await wizard.waitFor({ state: 'hidden' });

      // A VM on a host that never answers stays "stopping" after Shut down: Force stop still works.
      const kernelPath = path.join(t.dataDir, 'slow-stop-vmlinux');
      fs.writeFileSync(kernelPath, Buffer.alloc(4096, 1));
      const kernel = await registerPathImage(t.manager.services.store, {
        name: 'slow-stop-kernel',
        kind: 'kernel',
        path: kernelPath,
      });
      const slow = await api.post('/api/v1/vms', {
        name: 'slow-stop',
        vcpu: 1,
        mem_mib: 256,
        kernel_image_id: kernel,
        start: true,
      });
      expect(slow.status).toBe(202);
      await expect
        .poll(async () => (await api.get(`/api/v1/vms/${slow.body.vm.id}`)).body.host_id, { timeout: 10_000 })
        .toBeTruthy();
      await p.goto(`${t.url}/vms/${slow.body.vm.id}`);
      const actions = p.getByTestId('vm-actions');
      await actions.getByRole('button', { name: 'Shut down' }).click();
      await p
        .getByRole('dialog', { name: /Shut down slow-stop/ })
        .getByTestId('confirm')
        .click();
      await p.locator('.page-head').locator('.badge', { hasText: 'stopping' }).waitFor();
      const force = actions.getByRole('button', { name: 'Force stop' });
      expect(await force.isEnabled()).toBe(true);
      await force.click();
      await p
        .getByRole('dialog', { name: /Force stop slow-stop/ })
        .getByTestId('confirm')
        .click();
      await p.getByTestId('toast').filter({ hasText: 'Force stop slow-stop' }).first().waitFor();
      await p.waitForTimeout(1000);
      expect(
        await p
          .getByTestId('toast')
          .filter({ hasText: /slow-stop failed/ })
          .count(),
      ).toBe(0);
      const ops = (await api.get(`/api/v1/operations?target_id=${slow.body.vm.id}`)).body.items;
      expect(ops.some((o: { kind: string }) => o.kind === 'vm.stop')).toBe(true);

      // Hosts: the heartbeat is kept current by the event stream and redrawn every few seconds.
      await p.goto(`${t.url}/hosts`);
      const beat = p.locator('[data-host="hv-03"]').getByTestId('heartbeat');
      await beat.waitFor();
      await p.waitForTimeout(13_000);
      expect(await beat.textContent()).toMatch(/^(just now|[1-7] s ago)$/);
      // The hover shows the absolute time, in the one locale-neutral format.
      expect(await beat.locator('time').getAttribute('title')).toMatch(
        /^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC([+-]\d{2}:\d{2})?$/,
      );
      // The join token hv-03 registered with says "used", not "expired" or "valid".
      const tokenRow = p.getByRole('row').filter({ hasText: 'for hv-03' });
      await tokenRow.getByText('used', { exact: true }).waitFor();
      expect(await tokenRow.getByRole('button', { name: 'Revoke' }).count()).toBe(1);
    } finally {
      await c.close();
    }
  }, 90_000);

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

  test('images page: an upload shows its progress and the image becomes ready', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Images' }).click();
    await page.getByRole('heading', { name: /Images/ }).waitFor();
    await page.getByRole('button', { name: 'Upload image' }).click();
    const dialog = page.getByRole('dialog', { name: 'Upload image' });
    const bytes = rawDisk(2 * 1024 * 1024);
    await dialog
      .getByLabel('File')
      .setInputFiles({ name: 'tiny rootfs.img', mimeType: 'application/octet-stream', buffer: bytes });
    // The name is suggested from the file name.
    expect(await dialog.getByLabel('Name').inputValue()).toBe('tiny-rootfs.img');
    await dialog.getByLabel('Name').fill('uploaded-rootfs');
    await dialog.getByLabel('Kind').selectOption('rootfs');
    await dialog.getByRole('button', { name: 'Upload' }).click();
    const bar = dialog.getByTestId('upload-progress').getByRole('progressbar', { name: 'Upload' });
    await expect.poll(() => bar.getAttribute('aria-valuenow')).toBe('100');
    await dialog.getByText('2 MiB of 2 MiB sent').waitFor();
    await dialog.getByRole('status').filter({ hasText: 'uploaded-rootfs is ready' }).waitFor();
    await shot(page, 'image-upload-light');
    await dialog.getByRole('button', { name: 'Done' }).click();
    await dialog.waitFor({ state: 'hidden' });

    const row = page.locator('tr[data-image="uploaded-rootfs"]');
    await row.getByText('ready', { exact: true }).waitFor();
    const sha = createHash('sha256').update(bytes).digest('hex');
    expect(await row.locator('code').textContent()).toBe(sha.slice(0, 12));
    expect(await row.textContent()).toContain('2 MiB');
    // A disk of random bytes holds no zero block: what is stored is the whole length.
    expect(await row.textContent()).toContain('2 MiB stored');
    const image = (await api.get('/api/v1/images?name=uploaded-rootfs')).body.items[0];
    expect(image).toMatchObject({ status: 'ready', kind: 'rootfs', sha256: sha, size_bytes: bytes.length });

    // Set as the default: the marker moves to it through the event stream.
    await row.getByRole('button', { name: 'Set default' }).click();
    await row.getByText('default', { exact: true }).waitFor();
    expect(await row.getByRole('button', { name: 'Set default' }).count()).toBe(0);
  });

  test('images page: URL imports show the operation, its success or its error', async () => {
    const payload = rawDisk(1024 * 1024);
    const server = http.createServer((req, res) => {
      if (req.url === '/disk.img') {
        res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': payload.length });
        res.end(payload);
      } else {
        res.writeHead(404).end('not here');
      }
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    try {
      for (const [name, file, outcome] of [
        ['url-rootfs', 'disk.img', 'ready'],
        ['url-missing', 'missing.img', 'answered 404'],
      ] as const) {
        await page.getByRole('button', { name: 'Import' }).click();
        const dialog = page.getByRole('dialog', { name: 'Import image' });
        await dialog.getByLabel('Source').selectOption('url');
        await dialog.getByLabel('Name').fill(name);
        await dialog.getByLabel('Kind').selectOption('rootfs');
        await dialog.getByLabel('URL').fill(`${base}/${file}`);
        await dialog.getByRole('button', { name: 'Import' }).click();
        const progress = dialog.getByTestId('import-progress');
        await progress.waitFor();
        if (outcome === 'ready') {
          await progress
            .getByRole('status')
            .filter({ hasText: `${name} is ready` })
            .waitFor();
          await expect
            .poll(() => progress.getByRole('progressbar', { name: 'Import' }).getAttribute('aria-valuenow'))
            .toBe('100');
          await shot(page, 'image-import-light');
        } else {
          await progress.getByRole('alert').filter({ hasText: outcome }).waitFor();
        }
        await dialog.getByRole('button', { name: 'Done' }).click();
        await dialog.waitFor({ state: 'hidden' });
      }
    } finally {
      server.close();
    }
    const row = page.locator('tr[data-image="url-rootfs"]');
    await row.getByText('ready', { exact: true }).waitFor();
    expect(await row.locator('code').textContent()).toBe(
      createHash('sha256').update(payload).digest('hex').slice(0, 12),
    );
    // A failed import leaves no image behind: its row went with it.
    await page.locator('tr[data-image="url-missing"]').waitFor({ state: 'detached' });
    expect((await api.get('/api/v1/images?name=url-missing')).body.items).toEqual([]);

    // The OCI form takes a registry password, and it is gone once submitted.
    await page.getByRole('button', { name: 'Import' }).click();
    const oci = page.getByRole('dialog', { name: 'Import image' });
    await oci.getByLabel('Source').selectOption('oci');
    await oci.getByLabel('Name').fill('bad ref');
    await oci.getByLabel('Reference').fill('127.0.0.1:9/none:latest');
    await oci.getByLabel('Registry user').fill('robot');
    await oci.getByLabel('Registry password').fill('registry-secret-1');
    await oci.getByRole('button', { name: 'Import' }).click();
    await oci.getByRole('alert').filter({ hasText: 'name:' }).waitFor();
    expect(await oci.getByLabel('Registry password').inputValue()).toBe('');
    expect(await page.content()).not.toContain('registry-secret-1');
    await oci.getByRole('button', { name: 'Cancel' }).click();
    await oci.waitFor({ state: 'hidden' });
    await shot(page, 'images-light');
  });

  test('images page: delete asks first and shows why the manager refuses', async () => {
    const image = (await api.get('/api/v1/images?name=url-rootfs')).body.items[0];
    const vm = await api.post('/api/v1/vms', { name: 'img-user', start: false, rootfs_image_id: image.id });
    expect(vm.status).toBe(202);
    const row = page.locator('tr[data-image="url-rootfs"]');
    await row.getByRole('button', { name: 'Delete' }).click();
    const dialog = page.getByRole('dialog', { name: 'Delete image url-rootfs' });
    await dialog.getByTestId('confirm').click();
    await dialog.getByRole('alert').filter({ hasText: 'is used by vm img-user' }).waitFor();
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    expect((await api.del(`/api/v1/vms/${vm.body.vm.id}`)).status).toBe(202);
    await expect.poll(async () => (await api.get(`/api/v1/vms/${vm.body.vm.id}`)).status).toBe(404);

    await row.getByRole('button', { name: 'Delete' }).click();
    await page.getByRole('dialog', { name: 'Delete image url-rootfs' }).getByTestId('confirm').click();
    await row.waitFor({ state: 'detached' });
  });

  test('networks page: create, pick one in the wizard, delete', async () => {
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Networks' }).click();
    await page.getByRole('heading', { name: /Networks/ }).waitFor();
    for (const [name, cidr] of [
      ['lab-nat', '10.213.7.0/24'],
      ['scratch', '10.213.8.0/24'],
    ] as const) {
      await page.getByRole('button', { name: 'Create network' }).click();
      const dialog = page.getByRole('dialog', { name: 'Create network' });
      await dialog.getByLabel('Name').fill(name);
      await dialog.getByLabel('Kind').selectOption('nat');
      await dialog.getByLabel('Subnet').fill(cidr);
      await dialog.getByRole('button', { name: 'Create' }).click();
      await dialog.waitFor({ state: 'hidden' });
      await page.locator(`tr[data-network="${name}"]`).getByText(cidr).waitFor();
    }
    // An overlapping subnet: the manager's message is shown.
    await page.getByRole('button', { name: 'Create network' }).click();
    const dup = page.getByRole('dialog', { name: 'Create network' });
    await dup.getByLabel('Name').fill('overlap');
    await dup.getByLabel('Subnet').fill('10.213.7.0/25');
    await dup.getByRole('button', { name: 'Create' }).click();
    await dup.getByRole('alert').waitFor();
    await dup.getByRole('button', { name: 'Cancel' }).click();

    // The wizard puts the VM's NIC on the chosen network.
    await page
      .getByRole('navigation', { name: 'Main' })
      .getByRole('link', { name: 'Virtual machines' })
      .click();
    await page.getByRole('button', { name: 'Create VM' }).click();
    const wizard = page.getByRole('dialog', { name: 'Create virtual machine' });
    await wizard.getByLabel('Name').fill('net-vm');
    await wizard.getByLabel('Start after creation').uncheck();
    await wizard.getByRole('button', { name: 'Next' }).click();
    await wizard.getByLabel('Network').selectOption({ label: 'lab-nat (nat 10.213.7.0/24)' });
    for (let i = 0; i < 2; i++) await wizard.getByRole('button', { name: 'Next' }).click();
    expect(await wizard.getByTestId('wizard-summary').textContent()).toContain('lab-nat');
    await wizard.getByRole('button', { name: 'Create' }).click();
    await wizard.waitFor({ state: 'hidden' });
    const netVm = (await api.get('/api/v1/vms?name=net-vm')).body.items[0];
    const lab = (await api.get('/api/v1/networks?name=lab-nat')).body.items[0];
    expect(netVm.networks).toHaveLength(1);
    expect(netVm.networks[0].network_id).toBe(lab.id);

    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Networks' }).click();
    const labRow = page.locator('tr[data-network="lab-nat"]');
    await labRow.locator('td.num').filter({ hasText: '1' }).waitFor();
    await labRow.getByRole('button', { name: 'Delete' }).click();
    const refuse = page.getByRole('dialog', { name: 'Delete network lab-nat' });
    await refuse.getByTestId('confirm').click();
    await refuse.getByRole('alert').filter({ hasText: 'has NICs' }).waitFor();
    await refuse.getByRole('button', { name: 'Cancel' }).click();

    await labRow.getByRole('button', { name: 'Set default' }).click();
    await labRow.getByText('default', { exact: true }).waitFor();
    // Unset elsewhere (later VMs must not get a NIC here): the badge goes without a reload.
    expect((await api.patch(`/api/v1/networks/${lab.id}`, { is_default: false })).status).toBe(200);
    await labRow.getByText('default', { exact: true }).waitFor({ state: 'detached' });
    await page.locator('tr[data-network="scratch"]').getByRole('button', { name: 'Delete' }).click();
    await page.getByRole('dialog', { name: 'Delete network scratch' }).getByTestId('confirm').click();
    await page.locator('tr[data-network="scratch"]').waitFor({ state: 'detached' });
    await shot(page, 'networks-light');
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
      ['/images', 'images-dark', 'tr[data-image="uploaded-rootfs"]'],
      ['/networks', 'networks-dark', 'tr[data-network="lab-nat"]'],
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
    for (const [to, name, ready] of [
      ['Images', 'images-phone', 'tr[data-image="uploaded-rootfs"]'],
      ['Networks', 'networks-phone', 'tr[data-network="lab-nat"]'],
    ] as const) {
      await p.getByRole('button', { name: 'Menu' }).click();
      await nav.getByRole('link', { name: to }).click();
      await p.locator(ready).waitFor();
      expect(await p.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(390);
      await shot(p, name);
    }
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

    await nav.getByRole('link', { name: 'Images' }).click();
    await p.locator('tr[data-image="uploaded-rootfs"]').waitFor();
    for (const name of ['Upload image', 'Import', 'Set default', 'Delete'])
      expect(await p.getByRole('button', { name }).count()).toBe(0);
    await nav.getByRole('link', { name: 'Networks' }).click();
    await p.locator('tr[data-network="lab-nat"]').waitFor();
    for (const name of ['Create network', 'Set default', 'Delete'])
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

  test('a real guest end to end: created in the wizard, running without a reload, console over the WebSocket, shut down and deleted', async () => {
    await ensureRealAgent();
    let vmId: string | undefined;
    try {
      await page.goto(`${t.url}/vms`);
      await page.getByRole('heading', { name: /Virtual machines/ }).waitFor();
      await page.evaluate(() => {
        (window as unknown as { __noReload: boolean }).__noReload = true;
      });
      await page.getByRole('button', { name: 'Create VM' }).click();
      const wizard = page.getByRole('dialog', { name: 'Create virtual machine' });
      await wizard.getByLabel('Name').fill('console-vm');
      await wizard.getByLabel('VMM').selectOption('qemu');
      await wizard.getByRole('button', { name: 'Next' }).click();
      await wizard.getByLabel('Memory (MiB)').fill('256');
      await wizard.getByLabel('Kernel image').waitFor();
      await wizard.getByRole('button', { name: 'Next' }).click();
      await wizard.getByRole('button', { name: 'Next' }).click();
      await wizard.getByRole('button', { name: 'Create' }).click();
      await wizard.waitFor({ state: 'hidden' });
      // The list follows the VM to running through the event stream: no reload.
      const listRow = page.locator('tr[data-vm="console-vm"]');
      await listRow.locator('.badge', { hasText: 'running' }).waitFor({ timeout: 150_000 });
      expect(await page.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload)).toBe(
        true,
      );
      vmId = (await api.get('/api/v1/vms?name=console-vm')).body.items[0].id as string;
      expect(vmId).toBeTruthy();

      await page.goto(`${t.url}/vms/${vmId}`);
      await page.getByRole('heading', { name: /console-vm/ }).waitFor();
      await page.getByRole('tab', { name: 'Console' }).click();
      const rows = page.getByTestId('console').locator('.xterm-rows');
      // The scrollback holds the boot output.
      await rows.filter({ hasText: BOOT_MARKER }).waitFor({ timeout: 150_000 });
      await page.getByTestId('console-status').filter({ hasText: 'Connected' }).waitFor();
      expect(await page.getByTestId('console-role').textContent()).toBe('You are typing');
      // The writer's terminal size reached the console: a new viewer's hello carries it.
      const size = await page.evaluate(
        (id) =>
          new Promise<{ cols: number; rows: number } | null>((resolve, reject) => {
            const ws = new WebSocket(`ws://${location.host}/api/v1/vms/${id}/console/ws?scrollback=0`);
            ws.onmessage = (e) => {
              if (typeof e.data !== 'string') return;
              const m = JSON.parse(e.data) as { type: string; size?: { cols: number; rows: number } | null };
              if (m.type !== 'hello') return;
              ws.close();
              resolve(m.size ?? null);
            };
            ws.onerror = () => reject(new Error('console WebSocket failed'));
          }),
        vmId,
      );
      const rowsShown = await rows.locator(':scope > div').count();
      expect(size?.rows).toBe(rowsShown);
      expect(size?.cols).toBeGreaterThan(20);

      await page.getByTestId('console').click();
      await page.keyboard.type('echo NQVM-$((6*7))-OK');
      await page.keyboard.press('Enter');
      await rows.filter({ hasText: 'NQVM-42-OK' }).waitFor({ timeout: 20_000 });
      await shot(page, 'vm-console-live-light');

      // Another tab of the same user watches, takes over, and its typing reaches the guest.
      const second = await newPage(ctx);
      await second.goto(`${t.url}/vms/${vmId}`);
      await second.getByRole('tab', { name: 'Console' }).click();
      await second.getByTestId('console-role').filter({ hasText: 'Watching' }).waitFor();
      await second.getByTestId('console').locator('.xterm-rows').filter({ hasText: 'NQVM-42-OK' }).waitFor();
      await second.getByRole('button', { name: 'Take over' }).click();
      await second.getByTestId('console-role').filter({ hasText: 'You are typing' }).waitFor();
      await page
        .getByTestId('console-role')
        .filter({ hasText: /Watching: admin is typing/ })
        .waitFor();
      await second.getByTestId('console').click();
      await second.keyboard.type('echo SECOND-$((2+3))');
      await second.keyboard.press('Enter');
      await rows.filter({ hasText: 'SECOND-5' }).waitFor({ timeout: 20_000 });
      await second.close();

      // Shutting it down in the UI (after confirmation) ends the session with the reason.
      const actions = page.getByTestId('vm-actions');
      await actions.getByRole('button', { name: 'Force stop' }).click();
      await page
        .getByRole('dialog', { name: /Force stop console-vm/ })
        .getByTestId('confirm')
        .click();
      await page
        .getByTestId('console-status')
        .filter({ hasText: 'the VM was stopped' })
        .waitFor({ timeout: 30_000 });
      await page.locator('.badge', { hasText: 'stopped' }).first().waitFor({ timeout: 30_000 });

      // Deleting it asks for its name first; it leaves the list without a reload.
      await actions.getByRole('button', { name: 'Delete' }).click();
      const del = page.getByRole('dialog', { name: /Delete console-vm/ });
      await del.getByLabel('Type "console-vm" to confirm').fill('console-vm');
      await del.getByTestId('confirm').click();
      await page.waitForURL(/\/vms$/);
      await page.locator('tr[data-vm="console-vm"]').waitFor({ state: 'detached', timeout: 30_000 });
      await expect
        .poll(async () => (await api.get(`/api/v1/vms/${vmId}`)).status, { timeout: 30_000 })
        .toBe(404);
      vmId = undefined;
    } finally {
      if (vmId) await removeVm(vmId);
    }
  }, 300_000);

  test('templates page: a template made in the form becomes a running VM; a bad override shows the field error', async () => {
    await ensureRealAgent();
    const made: string[] = [];
    try {
      await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Templates' }).click();
      await page.getByRole('heading', { name: /Templates/ }).waitFor();
      await page.getByRole('button', { name: 'Create template' }).click();
      const form = page.getByRole('dialog', { name: 'Create template' });
      // The wizard's field groups: resources with the image pickers, general, guest.
      await form.getByLabel('Kernel image').waitFor();
      await form.getByLabel('Initrd image').waitFor();
      await form.getByLabel('Name', { exact: true }).fill('-bad');
      await form.getByLabel('Password').fill('tpl-secret-1');
      await form.getByRole('button', { name: 'Create template' }).click();
      await form.getByText('starting alphanumeric').waitFor();
      // The password is cleared by every submission, even one that fails.
      expect(await form.getByLabel('Password').inputValue()).toBe('');

      await form.getByLabel('Name', { exact: true }).fill('tpl-small');
      await form.getByLabel('Description').fill('small QEMU guest');
      await form.getByLabel('vCPUs').fill('1');
      await form.getByLabel('Memory (MiB)').fill('256');
      await form.getByLabel('VMM').selectOption('qemu');
      await form.getByLabel('Restart policy').selectOption('on-failure');
      await form.getByLabel('Labels').fill('tier=test');
      await form.getByLabel('User', { exact: true }).fill('debian');
      await form.getByLabel('Password').fill('tpl-secret-1');
      await form
        .getByLabel('SSH authorized keys')
        .fill('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIO0test web@test');
      await shot(page, 'template-create-light');
      await form.getByRole('button', { name: 'Create template' }).click();
      await form.waitFor({ state: 'hidden' });
      const row = page.locator('tr[data-template="tpl-small"]');
      await row.waitFor();
      expect(await row.textContent()).toContain('password set');
      expect(await row.textContent()).toContain('qemu');
      expect(await page.content()).not.toContain('tpl-secret-1');
      const tpl = (await api.get('/api/v1/templates?name=tpl-small')).body.items[0];
      expect(tpl).toMatchObject({
        description: 'small QEMU guest',
        spec: {
          vcpu: 1,
          mem_mib: 256,
          vmm: 'qemu',
          restart_policy: 'on-failure',
          labels: { tier: 'test' },
          networks: null,
          guest_config: { username: 'debian', has_password: true },
        },
      });
      await shot(page, 'templates-light');

      // A bad override: the manager's field error lands on the field.
      await row.getByRole('button', { name: 'Instantiate' }).click();
      const use = page.getByRole('dialog', { name: 'Create a VM from tpl-small' });
      expect(await use.getByLabel('vCPUs').inputValue()).toBe('1');
      await use.getByLabel('VM name').fill('from-tpl');
      await use.getByLabel('vCPUs').fill('64');
      await use.getByRole('button', { name: 'Create VM' }).click();
      await use.getByRole('alert').filter({ hasText: 'overrides.vcpu' }).waitFor();
      await use.locator('.field.invalid').filter({ hasText: 'vCPUs' }).getByText(/32/).waitFor();
      await shot(page, 'template-instantiate-error-light');
      expect((await api.get('/api/v1/vms?name=from-tpl')).body.items).toHaveLength(0);

      await use.getByLabel('vCPUs').fill('1');
      await use.getByLabel('Labels').fill('from=template');
      await use.getByRole('button', { name: 'Create VM' }).click();
      await use.waitFor({ state: 'hidden' });
      // The new VM's page follows it to running through the event stream.
      await page.getByRole('heading', { name: /from-tpl/ }).waitFor();
      const vm = (await api.get('/api/v1/vms?name=from-tpl')).body.items[0];
      made.push(vm.id);
      expect(vm).toMatchObject({
        vcpu: 1,
        mem_mib: 256,
        vmm: 'qemu',
        restart_policy: 'on-failure',
        labels: { tier: 'test', from: 'template' },
        guest_config: { username: 'debian', has_password: true },
      });
      await page
        .locator('.page-head')
        .locator('.badge', { hasText: 'running' })
        .waitFor({ timeout: 150_000 });

      // Save as template, from the VM's page.
      await page.getByTestId('vm-actions').getByRole('button', { name: 'Save as template' }).click();
      const save = page.getByRole('dialog', { name: 'Save from-tpl as a template' });
      await save.getByLabel('Template name').fill('from-tpl-copy');
      await save.getByRole('button', { name: 'Save template' }).click();
      await save.waitFor({ state: 'hidden' });
      const copy = (await api.get('/api/v1/templates?name=from-tpl-copy')).body.items[0];
      expect(copy.spec).toMatchObject({ vmm: 'qemu', labels: { tier: 'test', from: 'template' } });
      expect(copy.spec.guest_config.has_password).toBe(true);

      await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Templates' }).click();
      await page.locator('tr[data-template="from-tpl-copy"]').waitFor();
      await darkAndPhoneShots('/templates', 'tr[data-template="tpl-small"]', 'templates');

      // A viewer sees the templates but none of the buttons.
      const viewer = await viewerPage();
      await viewer.p.goto(`${t.url}/templates`);
      await viewer.p.locator('tr[data-template="tpl-small"]').waitFor();
      for (const name of ['Create template', 'Instantiate', 'Delete'])
        expect(await viewer.p.getByRole('button', { name }).count()).toBe(0);
      await viewer.close();

      // Delete after confirmation: it leaves the list through the event stream.
      await page.goto(`${t.url}/templates`);
      await page.locator('tr[data-template="from-tpl-copy"]').getByRole('button', { name: 'Delete' }).click();
      await page
        .getByRole('dialog', { name: 'Delete template from-tpl-copy' })
        .getByTestId('confirm')
        .click();
      await page.locator('tr[data-template="from-tpl-copy"]').waitFor({ state: 'detached' });
    } finally {
      for (const id of made) await removeVm(id);
    }
  }, 300_000);

  test("snapshots: taken from a running VM's page and followed to ready, instantiated into a running VM, deleted", async () => {
    await ensureRealAgent();
    const made: string[] = [];
    try {
      const src = await api.post('/api/v1/vms', { name: 'snap-src', vmm: 'qemu', mem_mib: 256, start: true });
      expect(src.status).toBe(202);
      made.push(src.body.vm.id);
      await waitVmState('snap-src', 'running');
      // The manager side of snapshots may not exist yet: say so plainly rather than time out.
      const probe = await api.get(`/api/v1/vms/${src.body.vm.id}/snapshots`);
      expect(probe.status, `GET /api/v1/vms/{id}/snapshots answered ${probe.status}`).toBe(200);

      await page.goto(`${t.url}/vms/${src.body.vm.id}`);
      await page.getByRole('heading', { name: /snap-src/ }).waitFor();
      await page.getByTestId('vm-actions').getByRole('button', { name: 'Take snapshot' }).click();
      const take = page.getByRole('dialog', { name: 'Take a snapshot of snap-src' });
      // Diff needs Firecracker: offered, disabled, and explained.
      expect(await take.getByLabel(/^Diff/).isDisabled()).toBe(true);
      await take.getByTestId('diff-why').filter({ hasText: 'Firecracker' }).waitFor();
      await take.getByLabel('Snapshot name').fill('snap-1');
      await take.getByLabel('Description').fill('before the upgrade');
      await take.getByRole('button', { name: 'Take snapshot' }).click();
      const progress = take.getByTestId('snapshot-progress');
      await Promise.race([
        progress.waitFor({ timeout: 20_000 }),
        take
          .getByRole('alert')
          .waitFor({ timeout: 20_000 })
          .then(async () => {
            throw new Error(`the snapshot was refused: ${await take.getByRole('alert').textContent()}`);
          }),
      ]);
      await progress.getByRole('status').filter({ hasText: 'snap-1 is ready' }).waitFor({ timeout: 120_000 });
      await shot(page, 'snapshot-take-light');
      await take.getByRole('button', { name: 'Done' }).click();
      await take.waitFor({ state: 'hidden' });

      // The VM's Snapshots tab lists it, live.
      await page.getByRole('tab', { name: 'Snapshots' }).click();
      const tabRow = page.locator('tr[data-snapshot="snap-1"]');
      await tabRow.getByText('ready', { exact: true }).waitFor();
      await shot(page, 'vm-snapshots-light');

      await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Snapshots' }).click();
      const row = page.locator('tr[data-snapshot="snap-1"]');
      await row.getByText('ready', { exact: true }).waitFor();
      expect(await row.getByRole('link', { name: 'snap-src' }).count()).toBe(1);
      expect(await row.textContent()).toContain('Full');
      expect(await row.textContent()).toMatch(/\d (B|KiB|MiB|GiB)/);
      const snap = (await api.get(`/api/v1/snapshots?vm_id=${src.body.vm.id}`)).body.items[0];
      expect(snap).toMatchObject({ name: 'snap-1', status: 'ready', snapshot_type: 'Full', vmm: 'qemu' });

      // Restore asks first and says what is lost (when, in the one date format); once confirmed,
      // its toast follows the restore to its end.
      await row.getByRole('button', { name: 'Restore' }).click();
      const restore = page.getByRole('dialog', { name: 'Restore snap-src to snap-1' });
      await restore.getByText('what it did since is lost').waitFor();
      expect(await restore.textContent()).toMatch(/taken \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC/);
      await restore.getByTestId('confirm').click();
      await restore.waitFor({ state: 'hidden' });
      await page
        .getByTestId('toast')
        .filter({ hasText: 'snap-src was restored to snap-1 and runs' })
        .waitFor({ timeout: 150_000 });

      // Instantiate: the placement reason and the warnings are shown, then the new VM.
      await row.getByRole('button', { name: 'Instantiate' }).click();
      const use = page.getByRole('dialog', { name: 'Create a VM from snap-1' });
      await use.getByLabel('VM name').fill('snap-clone');
      await use.getByLabel('Labels').fill('origin=snapshot');
      await use.getByRole('button', { name: 'Create VM' }).click();
      const result = use.getByTestId('snapshot-instantiated');
      await result.waitFor({ timeout: 20_000 });
      expect((await result.getByTestId('placement').textContent())?.length).toBeGreaterThan(
        'Placement: '.length,
      );
      const clone = (await api.get('/api/v1/vms?name=snap-clone')).body.items[0];
      made.push(clone.id);
      expect(clone.labels).toMatchObject({ origin: 'snapshot' });
      await shot(page, 'snapshot-instantiate-light');
      await result.getByRole('link', { name: 'Open snap-clone' }).click();
      await page.getByRole('heading', { name: /snap-clone/ }).waitFor();
      await page
        .locator('.page-head')
        .locator('.badge', { hasText: 'running' })
        .waitFor({ timeout: 150_000 });

      await darkAndPhoneShots('/snapshots', 'tr[data-snapshot="snap-1"]', 'snapshots');
      const viewer = await viewerPage();
      await viewer.p.goto(`${t.url}/snapshots`);
      await viewer.p.locator('tr[data-snapshot="snap-1"]').waitFor();
      for (const name of ['Instantiate', 'Restore', 'Delete'])
        expect(await viewer.p.getByRole('button', { name }).count()).toBe(0);
      await viewer.p.goto(`${t.url}/vms/${src.body.vm.id}`);
      await viewer.p.getByRole('heading', { name: /snap-src/ }).waitFor();
      expect(await viewer.p.getByRole('button', { name: 'Take snapshot' }).count()).toBe(0);
      await viewer.close();

      // Delete: the manager may refuse while the clone depends on it; its message is shown.
      await page.goto(`${t.url}/snapshots`);
      await row.getByRole('button', { name: 'Delete' }).click();
      const del = page.getByRole('dialog', { name: 'Delete snapshot snap-1' });
      await del.getByTestId('confirm').click();
      const outcome = await Promise.race([
        del.waitFor({ state: 'hidden' }).then(() => 'deleted' as const),
        del
          .getByRole('alert')
          .waitFor()
          .then(() => 'refused' as const),
      ]);
      if (outcome === 'refused') {
        expect(await del.getByRole('alert').textContent()).toMatch(/\w/);
        await del.getByRole('button', { name: 'Cancel' }).click();
        await removeVm(clone.id);
        made.pop();
        await row.getByRole('button', { name: 'Delete' }).click();
        await del.getByTestId('confirm').click();
        await del.waitFor({ state: 'hidden' });
      }
      await row.waitFor({ state: 'detached', timeout: 60_000 });
      await expect
        .poll(async () => (await api.get(`/api/v1/snapshots/${snap.id}`)).status, { timeout: 60_000 })
        .toBe(404);
    } finally {
      for (const id of made.reverse()) await removeVm(id);
    }
  }, 420_000);

  test('containers: created in the form, running without a reload, logs streaming, exec in a terminal, stopped and deleted', async () => {
    await ensureRealAgent();
    const init = await ensureContainerInit();
    await registerPathImage(t.manager.services.store, {
      name: 'builtin-container-init',
      kind: 'initrd',
      path: init.initrd,
    });
    const registry = await startOciRegistry();
    const made: string[] = [];
    try {
      await pushImage({ url: registry.url, repository: 'web-ticker' }, 'v1', await tickerImage());
      // The manager side of containers may not exist yet: say so plainly rather than time out.
      const probe = await api.get('/api/v1/containers');
      expect(probe.status, `GET /api/v1/containers answered ${probe.status}`).toBe(200);

      await page.goto(`${t.url}/containers`);
      await page.getByRole('heading', { name: /Containers/ }).waitFor();
      await page.evaluate(() => {
        (window as unknown as { __noReload: boolean }).__noReload = true;
      });

      // An image the registry does not have: the API's message is shown (refused at once, or
      // the create operation fails).
      await page.getByRole('button', { name: 'Create container' }).click();
      const dialog = page.getByRole('dialog', { name: 'Create container' });
      await dialog.getByLabel('Image').fill(`${registry.host}/web-missing:v1`);
      await dialog.getByLabel('Name', { exact: true }).fill('ticker-missing');
      // A registry password without its user: refused by the form, and the password is gone.
      await dialog.getByLabel('Registry password').fill('registry-secret-2');
      await dialog.getByRole('button', { name: 'Create container' }).click();
      await dialog.getByText('the registry user of this password').waitFor();
      expect(await dialog.getByLabel('Registry password').inputValue()).toBe('');
      await dialog.getByRole('button', { name: 'Create container' }).click();
      await dialog
        .getByRole('alert')
        .filter({ hasText: /web-missing|not found/i })
        .first()
        .waitFor({ timeout: 120_000 });
      expect(await page.content()).not.toContain('registry-secret-2');
      if (await dialog.getByTestId('container-progress').count()) {
        const failed = (await api.get('/api/v1/containers?name=ticker-missing')).body.items[0];
        if (failed) made.push(failed.id);
        await dialog.getByRole('button', { name: 'Close' }).click();
      } else {
        await dialog.getByRole('button', { name: 'Cancel' }).click();
      }
      await dialog.waitFor({ state: 'hidden' });
      await page.getByRole('button', { name: 'Create container' }).click();
      await dialog.getByLabel('Image').fill(`${registry.host}/web-ticker:v1`);
      await dialog.getByLabel('Name', { exact: true }).fill('ticker');
      await dialog
        .getByLabel('Command', { exact: true })
        .fill(
          `/bin/sh -c 'i=0; while true; do i=$((i+1)); echo "$GREETING tick $i"; echo "warn $i" >&2; sleep 0.5; done'`,
        );
      await dialog.getByRole('button', { name: 'Add variable' }).click();
      await dialog.getByLabel('Variable 1 name').fill('GREETING');
      await dialog.getByLabel('Variable 1 value').fill('hello-from-env');
      await dialog.getByLabel('Memory (MiB)').fill('256');
      await dialog.getByLabel('Restart policy').selectOption('never');
      await dialog.getByLabel('Labels').fill('suite=web');
      await dialog.evaluate((d) => d.scrollTo(0, 0));
      await shot(page, 'container-create-light');
      await dialog.getByRole('button', { name: 'Create container' }).click();
      // The operation is followed (pull, convert, start) until the container runs; then its page opens.
      await Promise.race([
        dialog.getByTestId('container-progress').waitFor({ timeout: 30_000 }),
        dialog
          .getByRole('alert')
          .waitFor({ timeout: 30_000 })
          .then(async () => {
            throw new Error(`the container was refused: ${await dialog.getByRole('alert').textContent()}`);
          }),
      ]);
      const created = (await api.get('/api/v1/containers?name=ticker')).body.items.find(
        (c: { name: string }) => c.name === 'ticker',
      );
      expect(created).toBeTruthy();
      made.push(created.id);
      const id = created.id as string;
      expect(created).toMatchObject({
        image: `${registry.host}/web-ticker:v1`,
        env: { GREETING: 'hello-from-env' },
        mem_mib: 256,
        labels: { suite: 'web' },
      });
      expect(created.command).toEqual([
        '/bin/sh',
        '-c',
        'i=0; while true; do i=$((i+1)); echo "$GREETING tick $i"; echo "warn $i" >&2; sleep 0.5; done',
      ]);
      await page.waitForURL(new RegExp(`/containers/${id}$`), { timeout: 240_000 });
      await page.getByRole('heading', { name: /ticker/ }).waitFor();
      await page.locator('.page-head').locator('.badge', { hasText: 'running' }).waitFor({ timeout: 30_000 });
      expect(await page.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload)).toBe(
        true,
      );
      const overview = page.getByTestId('container-overview');
      await overview.getByText('GREETING=hello-from-env').waitFor();
      expect(await page.getByTestId('effective-command').textContent()).toContain('tick');
      await overview.getByText(/sha256:[0-9a-f]{12}/).waitFor();
      await shot(page, 'container-detail-light');

      // Logs: lines stream in while the tab is open; stderr is told apart; timestamps can go.
      await page.getByRole('tab', { name: 'Logs' }).click();
      const logs = page.getByTestId('logs');
      await logs
        .locator('.log-line', { hasText: 'hello-from-env tick' })
        .first()
        .waitFor({ timeout: 30_000 });
      const lastTick = async () => {
        const texts = await logs.locator('.log-stdout .log-text').allTextContents();
        return Math.max(0, ...texts.map((x) => Number(/tick (\d+)/.exec(x)?.[1] ?? 0)));
      };
      const seen = await lastTick();
      await expect.poll(lastTick, { timeout: 20_000 }).toBeGreaterThanOrEqual(seen + 3);
      await logs
        .locator('.log-stderr', { hasText: /warn \d+/ })
        .first()
        .waitFor();
      await page.getByTestId('logs-status').filter({ hasText: 'Following' }).waitFor();
      expect(await logs.locator('.log-ts').count()).toBeGreaterThan(0);
      await shot(page, 'container-logs-light');
      await page.getByLabel('Timestamps').uncheck();
      expect(await logs.locator('.log-ts').count()).toBe(0);
      await page.getByLabel('Timestamps').check();

      // Exec: a shell by default; `ls /` shows the image's files; the exit code is shown.
      await page.getByRole('tab', { name: 'Exec' }).click();
      const status = page.getByTestId('exec-status');
      await status.filter({ hasText: 'Running /bin/sh' }).waitFor({ timeout: 30_000 });
      const rows = page.getByTestId('exec-terminal').locator('.xterm-rows');
      await page.getByTestId('exec-terminal').click();
      await page.keyboard.type('ls /');
      await page.keyboard.press('Enter');
      await rows.filter({ hasText: 'web-ui-marker' }).waitFor({ timeout: 20_000 });
      await shot(page, 'container-exec-light');
      await page.keyboard.type('exit 3');
      await page.keyboard.press('Enter');
      await status.filter({ hasText: '/bin/sh exited with code 3' }).waitFor({ timeout: 20_000 });
      await page.getByRole('button', { name: 'Run again' }).waitFor();
      await page
        .getByLabel('Command', { exact: true })
        .fill(`sh -c 'echo EXEC-$((6*7)); cat /web-ui-marker/README'`);
      await page.getByRole('button', { name: 'Run', exact: true }).click();
      await rows.filter({ hasText: 'EXEC-42' }).waitFor({ timeout: 20_000 });
      await rows.filter({ hasText: 'made by web-ui.test.ts' }).waitFor();
      await status.filter({ hasText: 'exited with code 0' }).waitFor({ timeout: 20_000 });

      // Stats, refreshed while the tab is open.
      await page.getByRole('tab', { name: 'Stats' }).click();
      const stats = page.getByTestId('container-stats');
      await stats.locator('.card').nth(1).waitFor({ timeout: 20_000 });
      await stats.getByText(/Measured/).waitFor();
      await shot(page, 'container-stats-light');

      // The list follows it live.
      await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Containers' }).click();
      const row = page.locator('tr[data-container="ticker"]');
      await row.locator('.badge', { hasText: 'running' }).waitFor();
      expect(await row.textContent()).toContain('web-ticker:v1');
      await page.getByLabel('Search by name').fill('tick');
      await page.getByLabel('Filter by status').selectOption('running');
      await row.waitFor();
      await page.getByLabel('Filter by status').selectOption('exited');
      await row.waitFor({ state: 'detached' });
      await page.getByLabel('Filter by status').selectOption('');
      await page.getByLabel('Search by name').fill('');
      await shot(page, 'containers-light');
      await darkAndPhoneShots('/containers', 'tr[data-container="ticker"]', 'containers');
      await darkAndPhoneShots(`/containers/${id}`, '[data-testid="container-overview"]', 'container-detail');
      await darkAndPhoneShots(`/containers/${id}/logs`, '[data-testid="logs"] .log-line', 'container-logs');

      // A viewer sees the container but no mutating control and no Exec tab.
      const viewer = await viewerPage();
      await viewer.p.goto(`${t.url}/containers`);
      await viewer.p.locator('tr[data-container="ticker"]').waitFor();
      expect(await viewer.p.getByRole('button', { name: 'Create container' }).count()).toBe(0);
      await viewer.p.goto(`${t.url}/containers/${id}/exec`);
      await viewer.p.getByTestId('container-overview').waitFor();
      expect(await viewer.p.getByRole('tab', { name: 'Exec' }).count()).toBe(0);
      expect(await viewer.p.getByTestId('container-actions').count()).toBe(0);
      expect(await viewer.p.getByTestId('exec-terminal').count()).toBe(0);
      await viewer.p.getByRole('tab', { name: 'Logs' }).click();
      await viewer.p.getByTestId('logs').locator('.log-line').first().waitFor({ timeout: 20_000 });
      await viewer.close();

      // Stop after confirmation: it shows exited, live.
      await page.goto(`${t.url}/containers/${id}`);
      await page.getByRole('heading', { name: /ticker/ }).waitFor();
      await page.evaluate(() => {
        (window as unknown as { __noReload: boolean }).__noReload = true;
      });
      const actions = page.getByTestId('container-actions');
      await actions.getByRole('button', { name: 'Stop' }).click();
      await page.getByRole('dialog', { name: 'Stop ticker' }).getByTestId('confirm').click();
      await page.locator('.page-head').locator('.badge', { hasText: 'exited' }).waitFor({ timeout: 60_000 });
      expect(await actions.getByRole('button', { name: 'Start', exact: true }).isEnabled()).toBe(true);
      await shot(page, 'container-exited-light');

      // Delete asks for the name; the container leaves the list without a reload.
      await actions.getByRole('button', { name: 'Delete' }).click();
      const del = page.getByRole('dialog', { name: 'Delete ticker' });
      await del.getByLabel('Type "ticker" to confirm').fill('ticker');
      await del.getByTestId('confirm').click();
      await page.waitForURL(/\/containers$/);
      await page.locator('tr[data-container="ticker"]').waitFor({ state: 'detached', timeout: 60_000 });
      await expect
        .poll(async () => (await api.get(`/api/v1/containers/${id}`)).status, { timeout: 60_000 })
        .toBe(404);
      made.splice(made.indexOf(id), 1);
      expect(await page.evaluate(() => (window as unknown as { __noReload?: boolean }).__noReload)).toBe(
        true,
      );
    } finally {
      for (const id of made) await removeContainer(id);
      await registry.stop();
    }
  }, 600_000);

  test('logs out', async () => {
    await page.getByRole('button', { name: 'Log out' }).click();
    await page.waitForURL(/\/login/);
    const me = await page.evaluate(async () => (await fetch('/api/v1/auth/me')).status);
    expect(me).toBe(401);
  });
});
