/** Shared pieces of the long-running commands. */

export function printFirstAdmin(first: { username: string; generatedPassword?: string } | null): void {
  if (!first) return;
  if (first.generatedPassword) {
    process.stdout.write(
      `\nCreated the first admin. This password is shown once; store it now:\n  user: ${first.username}\n  password: ${first.generatedPassword}\n\n`,
    );
  } else {
    process.stdout.write(
      `Created the first admin "${first.username}" with the password from NQVM_ADMIN_PASSWORD.\n`,
    );
  }
}

/** Resolves on SIGINT or SIGTERM. */
export function waitForSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const on = (sig: NodeJS.Signals) => {
      process.off('SIGINT', on);
      process.off('SIGTERM', on);
      resolve(sig);
    };
    process.on('SIGINT', on);
    process.on('SIGTERM', on);
  });
}
