#!/usr/bin/env bash
# One command from a fresh clone to a running nqvm: packages, npm install, build, `nqvm up`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-packages.sh

major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -lt 20 ]; then
  echo "nqvm needs Node.js 20 or newer (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi
nqvm_install_packages scripts/debian-packages.txt
[ -d node_modules ] && [ node_modules/.package-lock.json -nt package-lock.json ] || npm ci --no-audit --no-fund
npm run build --silent
exec node packages/cli/bin/nqvm.mjs up "$@"
