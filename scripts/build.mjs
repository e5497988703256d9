// Bundles the nqvm command (CLI + manager + agent) into one ESM file; npm packages stay external.
//
// An external package is loaded at run time from the bundle's own folder (packages/cli/dist), not
// from the workspace package that imports it. So the build refuses an import that the importing
// package does not declare in its package.json, and one for which the bundle would load a
// version outside the range its importer declares (npm nests a second version when two workspaces, or a
// workspace and a dependency, ask for different ones: tar-stream 2 for better-sqlite3's
// prebuild tooling at the root, 3 for the manager).
import fs from 'node:fs';
import { isBuiltin } from 'node:module';
import path from 'node:path';
import { build } from 'esbuild';
import semver from 'semver';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const outdir = path.join(root, 'packages/cli/dist');
// Node resolves the bundle's imports from outdir upwards: packages/cli is the same search, and
// exists before the first build.
const bundleRoot = path.join(root, 'packages/cli');

const manifests = new Map();
/** The package.json that owns `file` (its nearest one). */
function ownerOf(file) {
  for (let dir = path.dirname(file); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const p = path.join(dir, 'package.json');
    if (!manifests.has(dir) && fs.existsSync(p)) manifests.set(dir, JSON.parse(fs.readFileSync(p, 'utf8')));
    if (manifests.has(dir)) return { dir, manifest: manifests.get(dir) };
  }
  throw new Error(`no package.json above ${file}`);
}

/** The version of package `name` that `file` (a resolved entry point) belongs to. */
function versionOf(name, file) {
  for (let dir = path.dirname(file); dir !== path.dirname(dir); dir = path.dirname(dir)) {
    const p = path.join(dir, 'package.json');
    if (!fs.existsSync(p)) continue;
    const m = JSON.parse(fs.readFileSync(p, 'utf8'));
    if (m.name === name) return m.version;
  }
  return 'unknown';
}

function packageName(specifier) {
  const parts = specifier.split('/');
  return specifier.startsWith('@') ? parts.slice(0, 2).join('/') : parts[0];
}

const external = {
  name: 'npm-external',
  setup(b) {
    b.onResolve({ filter: /^[^./]/ }, async (args) => {
      if (args.pluginData?.probing) return undefined;
      if (isBuiltin(args.path)) return { path: args.path, external: true };
      const name = packageName(args.path);
      const { dir, manifest } = ownerOf(args.importer);
      const declared = {
        ...manifest.dependencies,
        ...manifest.optionalDependencies,
        ...manifest.peerDependencies,
      };
      const where = path.relative(root, args.importer);
      if (!(name in declared) && name !== manifest.name) {
        return {
          errors: [
            {
              text: `${where} imports "${name}", which ${path.relative(root, dir)}/package.json does not declare`,
            },
          ],
        };
      }
      if (name.startsWith('@nqvm/')) return undefined; // workspace sources are bundled
      const probe = (resolveDir) =>
        b.resolve(args.path, { kind: args.kind, resolveDir, pluginData: { probing: true } });
      const [fromImporter, fromBundle] = await Promise.all([probe(args.resolveDir), probe(bundleRoot)]);
      if (fromImporter.errors.length) return { errors: fromImporter.errors };
      const wanted = versionOf(name, fromImporter.path);
      const loaded = fromBundle.errors.length ? 'nothing' : versionOf(name, fromBundle.path);
      if (loaded === 'nothing' || !semver.satisfies(loaded, declared[name])) {
        return {
          errors: [
            {
              text:
                `${where} imports ${name}@${declared[name]} (${wanted} here), but the bundle in ${path.relative(root, outdir)} ` +
                `would load ${loaded === 'nothing' ? 'nothing' : `${name}@${loaded}`}: ` +
                `declare "${name}": "${declared[name]}" in packages/cli/package.json too`,
            },
          ],
        };
      }
      return { path: args.path, external: true };
    });
  },
};

await build({
  entryPoints: [path.join(root, 'packages/cli/src/main.ts')],
  outfile: path.join(outdir, 'nqvm.mjs'),
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node22',
  sourcemap: true,
  plugins: [external],
  logLevel: 'warning',
});
console.log('built packages/cli/dist/nqvm.mjs');
