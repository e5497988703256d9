/** The `nqvm` command: servers (`server`, `agent`, `up`) and API clients. */
import { buildProgram } from './program';

buildProgram()
  .parseAsync(process.argv)
  .catch((err: unknown) => {
    process.stderr.write(`nqvm: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
