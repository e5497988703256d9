// Keeps package.json's "engines" honest: every installed package (the build's dev tools too,
// since quickstart builds from source) must accept every Node.js release line the range admits,
// from its lowest version up to the newest line released (NEWEST_MAJOR).
import fs from 'node:fs';
import path from 'node:path';
import semver from 'semver';

const NEWEST_MAJOR = 26;
const root = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
const ours = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')).engines.node;
const lock = JSON.parse(fs.readFileSync(path.join(root, 'package-lock.json'), 'utf8'));

const lowest = semver.minVersion(ours).version;
const versions = [lowest];
for (let major = semver.major(lowest) + 1; major <= NEWEST_MAJOR; major++) versions.push(`${major}.0.0`);
const claimed = versions.filter((v) => semver.satisfies(v, ours));

const problems = [];
for (const [where, pkg] of Object.entries(lock.packages)) {
  const range = pkg.engines?.node;
  if (!where || !range || pkg.optional) continue;
  const refused = claimed.filter((v) => !semver.satisfies(v, range));
  if (refused.length)
    problems.push(`${where} (engines.node "${range}") refuses Node.js ${refused.join(', ')}`);
}
if (problems.length) {
  console.error(`package.json claims Node.js "${ours}", but:\n${problems.join('\n')}`);
  process.exit(1);
}
console.log(`engines "${ours}": every dependency accepts Node.js ${claimed.join(', ')}`);
