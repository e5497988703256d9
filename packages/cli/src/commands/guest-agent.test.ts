import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { guestAgentCommand } from './guest-agent';

describe('nqvm guest-agent files', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'nqvm-ga-files-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('writes the static agent and its installer into a folder and names them', async () => {
    const out: string[] = [];
    const write = vi.spyOn(process.stdout, 'write').mockImplementation((s) => {
      out.push(String(s));
      return true;
    });
    try {
      await guestAgentCommand().parseAsync(['files', path.join(dir, 'ga')], { from: 'user' });
    } finally {
      write.mockRestore();
    }
    const binary = path.join(dir, 'ga', 'nqvm-guest-agent');
    const installer = path.join(dir, 'ga', 'nqvm-guest-agent-install.sh');
    expect(out.join('')).toBe(`${binary}\n${installer}\n`);
    expect(statSync(binary).mode & 0o111).not.toBe(0);
    // A static ELF binary, and the installer for it.
    expect(readFileSync(binary).subarray(0, 4).toString('latin1')).toBe('\x7fELF');
    expect(readFileSync(installer, 'utf8')).toMatch(/^#!\/bin\/sh\n# nqvm: installs nqvm's guest agent/);
  }, 120_000);
});
