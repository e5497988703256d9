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
});
