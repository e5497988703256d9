/** `nqvm audit list`: who changed what, when, with what result (admins only, as the API rules). */
import { Command, Option } from 'commander';
import { type Page, printPage, stateColour, UsageError } from '../client/output';
import { action, parseLimit, session } from '../client/session';

interface AuditEventJson {
  id: string;
  at: string;
  actor: { type: string; id: string | null; name: string | null };
  action: string;
  target: { type: string; id: string } | null;
  result: 'success' | 'failure';
  status_code: number;
  ip: string | null;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const UNITS: Record<string, number> = { s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 };

/**
 * An RFC 3339 time as given, or an age (`90s`, `15m`, `2h`, `7d`, `1w`) counted back from `now`.
 * @example parseTime('2h', '--since', Date.parse('2030-01-01T02:00:00Z')) // '2030-01-01T00:00:00.000Z'
 */
export function parseTime(text: string, flag: string, now = Date.now()): string {
  const rel = /^(\d+)([smhdw])$/.exec(text.trim());
  if (rel) return new Date(now - Number(rel[1]) * (UNITS[rel[2] as string] as number) * 1000).toISOString();
  if (/^\d{4}-\d{2}-\d{2}T.*(Z|[+-]\d{2}:\d{2})$/i.test(text) && !Number.isNaN(Date.parse(text))) return text;
  throw new UsageError(`${flag} must be an RFC 3339 time (2030-01-31T12:00:00Z) or an age like 15m, 2h, 7d`);
}

export function auditCommand(): Command {
  const audit = new Command('audit').description('the audit log: every change, who made it and its result');

  audit
    .command('list')
    .alias('ls')
    .description('list audit events, newest first, one page at a time (admins only)')
    .option('--actor <name-or-id>', 'who: a user name (their API tokens included), a host name, or an id')
    .addOption(
      new Option('--actor-type <type>', 'only this kind of actor').choices([
        'user',
        'token',
        'host',
        'anonymous',
        'system',
      ]),
    )
    .option('--action <action>', 'only this action, e.g. vm.create or auth.login')
    .option('--target <id>', 'only events on this resource id')
    .option('--target-type <type>', 'only events on this kind of resource, e.g. vm, user, token')
    .addOption(
      new Option('--result <result>', 'only successes or only failures').choices(['success', 'failure']),
    )
    .option('--since <time>', 'events at or after this time (RFC 3339, or an age: 15m, 2h, 7d)')
    .option('--until <time>', 'events before this time (RFC 3339, or an age)')
    .option('--limit <n>', 'events per page (1-500)', '50')
    .option('--cursor <cursor>', 'the page after a previous one (its "next")')
    .option('--all', 'every page')
    .addHelpText(
      'after',
      `
Examples:
  $ nqvm audit list                                   # the 50 newest events
  $ nqvm audit list --actor alice --since 24h
  $ nqvm audit list --action vm.delete --result failure
  $ nqvm audit list --target-type user --since 2030-01-01T00:00:00Z --until 2030-02-01T00:00:00Z
  $ nqvm audit list --target 0b6f...e1 -o yaml
  $ nqvm audit list --all --since 7d -o json | jq -r '.items[] | [.at, .actor.name, .action] | @tsv'

Tables print the next page's cursor on stderr; JSON and YAML print the page as the API answers
it: {"items": [...], "next": <cursor or null>}.`,
    )
    .action(
      action(async (opts, cmd: Command) => {
        const { api, print } = await session(cmd);
        const actor = opts.actor as string | undefined;
        const query = {
          actor_id: actor && UUID.test(actor) ? actor.toLowerCase() : undefined,
          actor_name: actor && !UUID.test(actor) ? actor : undefined,
          actor_type: opts.actorType,
          action: opts.action,
          target_id: opts.target,
          target_type: opts.targetType,
          result: opts.result,
          since: opts.since ? parseTime(opts.since, '--since') : undefined,
          until: opts.until ? parseTime(opts.until, '--until') : undefined,
        };
        const limit = parseLimit(opts.limit);
        const page: Page<AuditEventJson> = opts.all
          ? { items: await api.all<AuditEventJson>('/api/v1/audit', query), next: null }
          : await api.get<Page<AuditEventJson>>('/api/v1/audit', { ...query, limit, cursor: opts.cursor });
        printPage(print, page, [
          { header: 'TIME', value: (e) => e.at },
          {
            header: 'ACTOR',
            value: (e) =>
              (e.actor.name ?? e.actor.id) ? `${e.actor.type}:${e.actor.name ?? e.actor.id}` : e.actor.type,
          },
          { header: 'ACTION', value: (e) => e.action },
          { header: 'TARGET', value: (e) => (e.target ? `${e.target.type}/${e.target.id}` : null) },
          {
            header: 'RESULT',
            value: (e) => `${e.result} ${e.status_code}`,
            colour: (text) => stateColour(text.startsWith('success') ? 'succeeded' : 'failed'),
          },
          { header: 'IP', value: (e) => e.ip },
        ]);
      }),
    );
  return audit;
}
