/** The completion scripts come from the command tree: new commands complete without more code. */
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../program';
import { commandTree } from './completion';
import { runCli } from './testing';

describe('nqvm completion', () => {
  it('knows the snapshot, container and exec commands and their flags', async () => {
    const tree = new Map(commandTree(buildProgram()).map((n) => [n.path.join(' '), n]));
    expect(tree.get('')?.subcommands).toEqual(expect.arrayContaining(['snapshot', 'container']));
    expect(tree.get('vm')?.subcommands).toContain('exec');
    expect(tree.get('snapshot')?.subcommands).toEqual(
      expect.arrayContaining(['list', 'show', 'create', 'restore', 'instantiate', 'delete']),
    );
    expect(tree.get('container')?.subcommands).toEqual(
      expect.arrayContaining([
        'run',
        'ps',
        'logs',
        'exec',
        'stop',
        'start',
        'restart',
        'pause',
        'resume',
        'rm',
      ]),
    );
    expect(tree.get('container run')?.options).toEqual(
      expect.arrayContaining(['--detach', '--env', '--publish', '--entrypoint', '--registry-password-stdin']),
    );
    expect(tree.get('vm exec')?.options).toEqual(
      expect.arrayContaining(['--interactive', '--tty', '--timeout']),
    );

    for (const shell of ['bash', 'zsh', 'fish']) {
      const r = await runCli('http://127.0.0.1:9', ['completion', shell]);
      expect(r.code, r.err).toBe(0);
      expect(r.out).toContain('container');
      expect(r.out).toContain('instantiate');
    }
    const bash = await runCli('http://127.0.0.1:9', ['completion', 'bash']);
    expect(bash.out).toContain('"container run") words="--name --detach --env --publish');
    const fish = await runCli('http://127.0.0.1:9', ['completion', 'fish']);
    expect(fish.out).toContain("complete -c nqvm -n '__fish_seen_subcommand_from snapshot' -a 'restore'");
  });
});
