import { ConfigError, createAgent, loadAgentConfig } from '@nqvm/agent';
import { Command } from 'commander';
import { waitForSignal } from './run';

interface AgentFlags {
  manager?: string;
  joinToken?: string;
  bind?: string;
  stateDir?: string;
  name?: string;
}

export function agentCommand(): Command {
  return new Command('agent')
    .description('run the host agent: registers with a manager, runs its VMs, reports their state')
    .option('--manager <url>', 'manager URL (MANAGER_BASE); stored at registration')
    .option('--join-token <token>', 'join token for the first start (NQVM_JOIN_TOKEN keeps it out of ps)')
    .option('--bind <host:port>', 'address of the agent API (AGENT_BIND, default 127.0.0.1:9090)')
    .option('--state-dir <dir>', 'agent state: identity and VM folders (FC_RUN_DIR)')
    .option('--name <name>', 'host name to register under (NQVM_AGENT_NAME)')
    .addHelpText(
      'after',
      `
Example:
  # an admin creates a join token: POST /api/v1/join-tokens on the manager; then on the host:
  $ NQVM_JOIN_TOKEN=nqvm_join_... nqvm agent --manager https://manager:8080 --bind 0.0.0.0:9090

Later starts reuse <state-dir>/identity.json and need no token. Stopping the agent (Ctrl-C,
SIGTERM) leaves its VMs running; the next start adopts them. Other settings come from the
environment; see README.md ("Configuration").`,
    )
    .action(async (flags: AgentFlags) => {
      const overrides: Record<string, string | undefined> = {
        MANAGER_BASE: flags.manager,
        NQVM_JOIN_TOKEN: flags.joinToken,
        AGENT_BIND: flags.bind,
        FC_RUN_DIR: flags.stateDir,
        NQVM_AGENT_NAME: flags.name,
      };
      const env = { ...process.env };
      for (const [k, v] of Object.entries(overrides)) if (v !== undefined) env[k] = v;
      let config: ReturnType<typeof loadAgentConfig>;
      try {
        config = loadAgentConfig(env);
      } catch (err) {
        if (!(err instanceof ConfigError)) throw err;
        process.stderr.write(`nqvm: ${err.message}\n`);
        process.exit(2);
      }
      const agent = await createAgent(config);
      const manager = config.managerBase ?? 'the manager in identity.json';
      process.stdout.write(
        [
          agent.hostId
            ? `nqvm agent "${config.name}" is host ${agent.hostId} at ${manager} (${agent.registered ? 'registered now' : 'from identity.json'})`
            : `nqvm agent "${config.name}" runs without a manager`,
          `  API       ${agent.url} (the manager calls ${agent.advertiseUrl})`,
          `  state     ${config.stateDir}`,
          `  VMs       ${agent.vms().length} adopted`,
          '',
        ].join('\n'),
      );
      const outcome = await Promise.race([waitForSignal().then(() => null), agent.stopped]);
      await agent.close();
      if (outcome?.reason === 'credential-revoked') {
        process.stderr.write(
          `nqvm: the manager revoked this host's credential; the agent stopped (its VMs keep running). Join again with a new --join-token.\n`,
        );
        process.exit(1);
      }
      process.exit(0);
    });
}
