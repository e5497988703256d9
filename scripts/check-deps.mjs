// Fails when a workspace package imports a package its package.json does not declare: production
// sources need `dependencies` (or optional/peer), tests and tools may also use devDependencies
// (theirs or the monorepo root's). The bundle's own resolution check is in scripts/build.mjs.
import fs from 'node:fs';
import { isBuiltin } from 'node:module';
import path from 'node:path';

const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const rootManifest = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));
const importRe =
  /(?:^|[\s;])(?:import|export)\s[^'"]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)|^import\s+['"]([^'"]+)['"]/gm;
// Test files, and the test helpers still kept under src (testing.ts, sim-fixture.ts: they move
// out of src with the Structure issue), may use devDependencies; so may the bin's source fallback.
const isTest = (f) =>
  /\.test\.tsx?$|\/test\/|\.fixture\.ts$|\/testing\.ts$|\/sim-fixture\.ts$|\/bin\/|vite\.config\.ts$/.test(f);

function* files(dir) {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.name === 'node_modules' || e.name === 'dist') continue;
    const p = path.join(dir, e.name);
    if (e.isDirectory()) yield* files(p);
    else if (/\.(ts|tsx|mts|mjs)$/.test(e.name) && !e.name.endsWith('.d.ts')) yield p;
  }
}

const problems = [];
for (const pkg of fs.readdirSync(path.join(root, 'packages'))) {
  const dir = path.join(root, 'packages', pkg);
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  const prod = { ...manifest.dependencies, ...manifest.optionalDependencies, ...manifest.peerDependencies };
  const dev = { ...prod, ...manifest.devDependencies, ...rootManifest.devDependencies };
  for (const file of files(dir)) {
    const rel = path.relative(root, file);
    const text = fs.readFileSync(file, 'utf8');
    for (const m of text.matchAll(importRe)) {
      const spec = m[1] ?? m[2] ?? m[3];
      if (!spec || spec.startsWith('.') || spec.startsWith('/') || isBuiltin(spec)) continue;
      const name = spec.startsWith('@') ? spec.split('/').slice(0, 2).join('/') : spec.split('/')[0];
      if (name === manifest.name) continue;
      const allowed = isTest(rel) ? dev : prod;
      if (!(name in allowed))
        problems.push(`${rel} imports "${name}", not declared in packages/${pkg}/package.json`);
    }
  }
}
if (problems.length) {
  console.error([...new Set(problems)].join('\n'));
  process.exit(1);
}
console.log('every workspace package declares what it imports');
