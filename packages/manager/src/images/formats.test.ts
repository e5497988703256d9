import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { detectCloudInit } from './formats';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nqvm-formats-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function file(name: string, bytes: Buffer): string {
  const p = path.join(dir, name);
  fs.writeFileSync(p, bytes);
  return p;
}

function ext4(name: string, files: Record<string, string>): string {
  const tree = path.join(dir, `${name}-tree`);
  for (const [f, text] of Object.entries(files)) {
    fs.mkdirSync(path.dirname(path.join(tree, f)), { recursive: true });
    fs.writeFileSync(path.join(tree, f), text);
  }
  fs.mkdirSync(tree, { recursive: true });
  const out = path.join(dir, `${name}.ext4`);
  execFileSync('mkfs.ext4', ['-q', '-F', '-d', tree, out, '2M']);
  return out;
}

describe('detectCloudInit', () => {
  it('finds /usr/bin/cloud-init without mounting; unknown for what is not ext4', async () => {
    expect(await detectCloudInit(ext4('ci', { 'usr/bin/cloud-init': '#!/bin/sh\n' }))).toBe(true);
    expect(await detectCloudInit(ext4('noci', { 'usr/bin/env': '#!/bin/sh\n' }))).toBe(false);
    expect(await detectCloudInit(file('junk.img', Buffer.alloc(8192)))).toBeNull();
  });
});
