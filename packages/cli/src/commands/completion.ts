/**
 * `nqvm completion bash|zsh|fish`: shell completion scripts generated from the command tree, so
 * they never drift from the commands that exist.
 */
import { Argument, type Command, Command as CommanderCommand } from 'commander';
import { UsageError } from '../client/output';
import { action } from '../client/session';

interface Node {
  path: string[];
  subcommands: string[];
  options: string[];
}

/** Every command path with its subcommands and long options. */
export function commandTree(root: Command): Node[] {
  const out: Node[] = [];
  const walk = (cmd: Command, path: string[]) => {
    const subs = cmd.commands.filter((c) => !c.name().startsWith('_'));
    out.push({
      path,
      subcommands: subs.flatMap((c) => [c.name(), ...c.aliases()]),
      options: cmd.options.map((o) => o.long).filter((o): o is string => Boolean(o)),
    });
    for (const c of subs) {
      walk(c, [...path, c.name()]);
      for (const alias of c.aliases()) walk(c, [...path, alias]);
    }
  };
  walk(root, []);
  return out;
}

function bash(root: Command): string {
  const globals = root.options
    .map((o) => o.long)
    .filter(Boolean)
    .join(' ');
  const cases = commandTree(root)
    .map((n) => `    "${n.path.join(' ')}") words="${[...n.subcommands, ...n.options].join(' ')}" ;;`)
    .join('\n');
  return `# nqvm bash completion: source <(nqvm completion bash)
_nqvm() {
  local cur path="" i w words
  cur="\${COMP_WORDS[COMP_CWORD]}"
  for ((i = 1; i < COMP_CWORD; i++)); do
    w="\${COMP_WORDS[i]}"
    case "$w" in -*) continue ;; esac
    if [ -z "$path" ]; then path="$w"; else path="$path $w"; fi
  done
  case "$path" in
${cases}
    *) words="" ;;
  esac
  COMPREPLY=($(compgen -W "$words ${globals}" -- "$cur"))
}
complete -o default -F _nqvm nqvm
`;
}

function zsh(root: Command): string {
  return `#compdef nqvm
# nqvm zsh completion: source <(nqvm completion zsh)
autoload -U +X bashcompinit && bashcompinit
${bash(root).replace(/^# nqvm bash completion.*\n/, '')}`;
}

function fish(root: Command): string {
  const lines = ['# nqvm fish completion: nqvm completion fish | source', 'complete -c nqvm -f'];
  for (const n of commandTree(root)) {
    const cond =
      n.path.length === 0
        ? '__fish_use_subcommand'
        : `__fish_seen_subcommand_from ${n.path[n.path.length - 1]}`;
    for (const s of n.subcommands) lines.push(`complete -c nqvm -n '${cond}' -a '${s}'`);
    for (const o of n.options) lines.push(`complete -c nqvm -n '${cond}' -l '${o.replace(/^--/, '')}'`);
  }
  return `${lines.join('\n')}\n`;
}

export function completionCommand(root: () => Command): Command {
  return new CommanderCommand('completion')
    .description('print a shell completion script')
    .addArgument(new Argument('<shell>', 'your shell').choices(['bash', 'zsh', 'fish']))
    .addHelpText(
      'after',
      `
Examples:
  $ source <(nqvm completion bash)                      # this shell
  $ nqvm completion bash > /etc/bash_completion.d/nqvm  # every shell
  $ nqvm completion fish > ~/.config/fish/completions/nqvm.fish`,
    )
    .action(
      action(async (shell: string) => {
        const r = root();
        const text =
          shell === 'bash' ? bash(r) : shell === 'zsh' ? zsh(r) : shell === 'fish' ? fish(r) : null;
        if (text === null) throw new UsageError(`no completion for ${shell}`);
        process.stdout.write(text);
      }),
    );
}
