/**
 * The guest agent's installer, run for real against a root folder (as in an image): it puts the
 * binary, the start script and a systemd unit enabled for multi-user.target in place, and the
 * start script it writes is valid shell that serves the config drive's token.
 */
import { execFile } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { ensureGuestAgent } from '@nqvm/guest-agent';
import { afterAll, describe, expect, it } from 'vitest';
import { GUEST_AGENT_CLOUD_CONFIG, guestAgentDriveFiles } from './guest-agent-install';
import { applyGuestConfig } from './guest-config';

const run = promisify(execFile);

describe('the guest agent installer', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'nqvm-ga-install-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('installs the binary, its start script and an enabled systemd unit into a root', async () => {
    const binary = (await ensureGuestAgent()).path;
    // The config drive's files, as the guest sees them once mounted.
    const drive = path.join(dir, 'drive');
    mkdirSync(drive);
    for (const [name, content] of await guestAgentDriveFiles(binary))
      writeFileSync(path.join(drive, name), content);
    const root = path.join(dir, 'root');
    mkdirSync(path.join(root, 'etc', 'systemd', 'system'), { recursive: true });

    const out = await run('sh', [path.join(drive, 'nqvm-guest-agent-install.sh')], {
      env: { ...process.env, NQVM_ROOT: root },
    });
    expect(out.stdout).toContain('nqvm: guest agent installed');
    const installed = path.join(root, 'usr', 'local', 'sbin', 'nqvm-guest-agent');
    expect(readFileSync(installed).equals(readFileSync(binary))).toBe(true);
    expect(statSync(installed).mode & 0o777).toBe(0o755);
    const start = path.join(root, 'usr', 'local', 'sbin', 'nqvm-guest-agent-start');
    await run('sh', ['-n', start]);
    expect(readFileSync(start, 'utf8')).toContain(
      'exec /usr/local/sbin/nqvm-guest-agent serve $ch --token-file "$d/nqvm-agent-token"',
    );
    const unit = readFileSync(
      path.join(root, 'etc', 'systemd', 'system', 'nqvm-guest-agent.service'),
      'utf8',
    );
    expect(unit).toContain('ExecStart=/usr/local/sbin/nqvm-guest-agent-start');
    expect(
      readlinkSync(
        path.join(root, 'etc', 'systemd', 'system', 'multi-user.target.wants', 'nqvm-guest-agent.service'),
      ),
    ).toBe('../nqvm-guest-agent.service');
    // The installed binary is the agent itself: it knows its commands.
    const usage = await run(installed, ['--help']).catch((e: { stdout: string; stderr: string }) => e);
    expect(`${usage.stdout}${usage.stderr}`).toMatch(/usage: .* serve\|container/);

    // Run again (a second instance of the image): the same result, no error.
    await run('sh', [path.join(drive, 'nqvm-guest-agent-install.sh')], {
      env: { ...process.env, NQVM_ROOT: root },
    });
    expect(existsSync(installed)).toBe(true);
  }, 120_000);

  it('is what cloud-init runs once per instance, from the config drive', () => {
    const [cmd] = GUEST_AGENT_CLOUD_CONFIG.runcmd as string[][];
    expect(cmd!.slice(0, 2)).toEqual(['sh', '-c']);
    expect(cmd![2]).toContain('mount -o ro -L CIDATA /run/nqvm-cidata');
    expect(cmd![2]).toMatch(/sh \/run\/nqvm-cidata\/nqvm-guest-agent-install\.sh$/);
  });

  it("rides on the config drive of a guest that may run cloud-init, and not on nqvm's own guest", async () => {
    const binary = (await ensureGuestAgent()).path;
    const config = {
      mode: 'cloud-init' as const,
      instance_id: '0f6a3c1e-8d57-4b8e-a1e4-5c9b2d7f3a10',
      hostname: 'any-linux',
      username: null,
      password_hash: null,
      ssh_authorized_keys: [],
      user_data: '#cloud-config\nruncmd:\n  - [touch, /theirs]\n',
      network_config: null,
    };
    const drive = async (hasCloudInit: boolean | null) => {
      const vmDir = mkdtempSync(path.join(dir, 'vm-'));
      const applied = await applyGuestConfig({
        vmDir,
        vmm: 'qemu',
        config,
        hasCloudInit,
        rootDisk: null,
        agentToken: 'a'.repeat(64),
        guestAgentBinary: binary,
      });
      const img = applied.configDrive!.path;
      const names = (await run('mdir', ['-i', img, '-b', '::/'])).stdout.split('\n').filter(Boolean).sort();
      const userData = (await run('mtype', ['-i', img, '::/user-data'])).stdout;
      return { names, userData, img };
    };
    const cloud = await drive(null);
    expect(cloud.names).toEqual([
      '::/meta-data',
      '::/nqvm-agent-token',
      '::/nqvm-guest-agent',
      '::/nqvm-guest-agent-install.sh',
      '::/user-data',
    ]);
    // The install step joins the user's own commands (theirs kept, after ours).
    expect(cloud.userData).toContain('sh /run/nqvm-cidata/nqvm-guest-agent-install.sh');
    expect(cloud.userData).toContain('/theirs');
    const copy = path.join(dir, 'copied-agent');
    await run('mcopy', ['-i', cloud.img, '::/nqvm-guest-agent', copy]);
    expect(readFileSync(copy).equals(readFileSync(binary))).toBe(true);

    const own = await drive(false);
    expect(own.names).not.toContain('::/nqvm-guest-agent');
    expect(own.userData).not.toContain('nqvm-guest-agent-install');
  }, 120_000);
});
