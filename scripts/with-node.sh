#!/usr/bin/env bash
# Runs a command on a Node.js that nqvm supports (see lib-node.sh), with native modules built
# for it: `npm test` and `npm run build` go through here, so they work on a machine whose own
# Node is older.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-node.sh
nqvm_use_node ${NQVM_NODE_MAJOR:-}
nqvm_native_modules_match
exec "$@"
