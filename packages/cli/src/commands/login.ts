/**
 * `nqvm login`, `nqvm logout` and `nqvm context`: the CLI trades a user name and password for an
 * API token once and keeps only the token, per named context.
 */
import os from 'node:os';
import { Command } from 'commander';
import { ApiClient, ApiError } from '../client/api';
import { configPath, contextNameFor, loadConfig, saveConfig, TlsSettings } from '../client/config';
import { makePrinter, printList, UsageError } from '../client/output';
import { ask, askHidden, readStdinLine } from '../client/prompt';
import { action, type GlobalOptions, resolveContext } from '../client/session';

interface Me {
  id: string;
  username: string;
  role: string;
}

export function loginCommand(): Command {
  return new Command('login')
    .description('log in to a manager and keep an API token for it (mode 0600 in your config folder)')
    .argument('[url]', 'manager URL, e.g. https://nqvm.lan:8080 (default: the current context)')
    .option('-u, --username <name>', 'user name (asked when omitted)')
    .option('--password-stdin', 'read the password from standard input')
    .option('--with-token', 'read an existing API token from standard input instead of logging in')
    .option('--name <context>', 'context name to save it under (default: derived from the URL)')
    .option('--expires-in-days <n>', 'token lifetime in days', '90')
    .addHelpText(
      'after',
      `
Examples:
  $ nqvm login http://127.0.0.1:8080
  $ echo "$PW" | nqvm login https://nqvm.lan:8443 -u admin --password-stdin --tls-fingerprint sha256:AB:CD:...
  $ echo "$NQVM_TOKEN" | nqvm login https://nqvm.lan:8443 --with-token --name lab`,
    )
    .action(
      action(async (url: string | undefined, opts, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions & typeof opts>();
        const existing = await resolveContext({ ...g, server: url ?? g.server, token: 'x' });
        const server = (url ?? existing?.server)?.replace(/\/+$/, '');
        if (!server) throw new UsageError('which manager? give its URL: nqvm login <url>');
        try {
          new URL(server);
        } catch {
          throw new UsageError(`"${server}" is not a URL (e.g. http://127.0.0.1:8080)`);
        }
        const tls = TlsSettings.parse(existing?.server === server ? existing.tls : {});
        const bare = new ApiClient({ server, token: null, tls });
        let token: string;
        let me: Me;
        if (opts.withToken) {
          token = (await readStdinLine()).trim();
          if (!token) throw new UsageError('no token on standard input');
          me = await new ApiClient({ server, token, tls }).get<Me>('/api/v1/auth/me');
        } else {
          const username = opts.username ?? (await ask('User name: ')).trim();
          const password = opts.passwordStdin ? await readStdinLine() : await askHidden('Password: ');
          ({ token, me } = await tradePasswordForToken(bare, username, password, Number(opts.expiresInDays)));
        }
        const config = await loadConfig();
        const name = opts.name ?? g.context ?? contextNameFor(server);
        config.contexts[name] = { server, token, username: me.username, tls };
        config.current = name;
        await saveConfig(config);
        process.stderr.write(
          `Logged in to ${server} as ${me.username} (${me.role}); context "${name}" saved in ${configPath()}\n`,
        );
      }),
    );
}

/** Logs in with a session, creates an API token with it, and ends the session. */
async function tradePasswordForToken(
  api: ApiClient,
  username: string,
  password: string,
  days: number,
): Promise<{ token: string; me: Me }> {
  let cookies = '';
  const login = await api.request<{ user: Me; csrf_token: string }>('POST', '/api/v1/auth/login', {
    body: { username, password },
    onHeaders: (h) => {
      cookies = (h['set-cookie'] ?? []).map((c) => c.split(';')[0]).join('; ');
    },
  });
  const headers = { cookie: cookies, 'x-csrf-token': login.csrf_token };
  try {
    const created = await api.request<{ token: string }>('POST', '/api/v1/tokens', {
      body: {
        name: `cli-${os
          .hostname()
          .replace(/[^a-zA-Z0-9_.-]/g, '-')
          .slice(0, 40)}-${Date.now().toString(36)}`,
        expires_in_days: days,
      },
      headers,
    });
    return { token: created.token, me: login.user };
  } finally {
    await api.request('POST', '/api/v1/auth/logout', { body: {}, headers }).catch(() => undefined);
  }
}

export function logoutCommand(): Command {
  return new Command('logout')
    .description("revoke this context's API token on the manager and forget it")
    .option('--name <context>', 'context to log out of (default: the current one)')
    .action(
      action(async (opts, cmd: Command) => {
        const g = cmd.optsWithGlobals<GlobalOptions>();
        const config = await loadConfig();
        const name = opts.name ?? g.context ?? config.current;
        const ctx = name ? config.contexts[name] : undefined;
        if (!name || !ctx) throw new UsageError('not logged in');
        const api = new ApiClient({ server: ctx.server, token: ctx.token, tls: ctx.tls });
        try {
          const me = await api.get<{ token_id?: string | null }>('/api/v1/auth/me');
          if (me.token_id) await api.delete(`/api/v1/tokens/${me.token_id}`);
        } catch (err) {
          if (!(err instanceof ApiError) || (err.status !== 401 && err.status !== 0)) throw err;
        }
        delete config.contexts[name];
        if (config.current === name) config.current = null;
        await saveConfig(config);
        process.stderr.write(`Logged out of ${ctx.server}\n`);
      }),
    );
}

export function contextCommand(): Command {
  const cmd = new Command('context').description('named managers you are logged in to');
  cmd
    .command('list')
    .alias('ls')
    .description('list contexts (* marks the current one)')
    .action(
      action(async (_opts, c: Command) => {
        const print = makePrinter(c.optsWithGlobals<GlobalOptions>().output);
        const config = await loadConfig();
        const rows = Object.entries(config.contexts).map(([name, ctx]) => ({
          name,
          current: name === config.current,
          server: ctx.server,
          username: ctx.username ?? null,
          tls: ctx.tls.fingerprint ? 'pinned' : ctx.tls.ca_file ? 'ca-file' : 'system',
        }));
        printList(print, rows, rows, [
          { header: '', value: (r) => (r.current ? '*' : ' ') },
          { header: 'NAME', value: (r) => r.name },
          { header: 'SERVER', value: (r) => r.server },
          { header: 'USER', value: (r) => r.username },
          { header: 'TLS', value: (r) => r.tls },
        ]);
      }),
    );
  cmd
    .command('use')
    .argument('<name>')
    .description('make a context the current one')
    .action(
      action(async (name: string) => {
        const config = await loadConfig();
        if (!config.contexts[name]) throw new UsageError(`no context named "${name}"`);
        config.current = name;
        await saveConfig(config);
      }),
    );
  cmd
    .command('delete')
    .alias('rm')
    .argument('<name>')
    .description('forget a context (its token stays valid until revoked: see nqvm logout)')
    .action(
      action(async (name: string) => {
        const config = await loadConfig();
        if (!config.contexts[name]) throw new UsageError(`no context named "${name}"`);
        delete config.contexts[name];
        if (config.current === name) config.current = null;
        await saveConfig(config);
      }),
    );
  return cmd;
}
