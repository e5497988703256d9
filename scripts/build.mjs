// Bundles the nqvm command (CLI + manager + agent) into one ESM file; npm packages stay external.
import { build } from 'esbuild';

const external = {
  name: 'npm-external',
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, (args) =>
      args.path.startsWith('@nqvm/') ? undefined : { path: args.path, external: true },
    );
  },
};

await build({
  entryPoints: ['packages/cli/src/main.ts'],
  outfile: 'packages/cli/dist/nqvm.mjs',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: true,
  plugins: [external],
  logLevel: 'warning',
});
console.log('built packages/cli/dist/nqvm.mjs');
