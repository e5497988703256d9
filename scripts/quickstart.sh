#!/usr/bin/env bash
# One command from a fresh clone to a running nqvm: packages, Node.js, npm install, build, `nqvm up`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-packages.sh
. scripts/lib-node.sh

nqvm_install_packages scripts/debian-packages.txt
# The machine's Node.js when it is recent enough, else Node.js 22 from the npm registry.
nqvm_use_node
[ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund
nqvm_native_modules_match
npm run build --silent
exec node packages/cli/bin/nqvm.mjs up "$@"
