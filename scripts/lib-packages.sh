# Sourced by .ci/run and scripts/quickstart.sh: installs the Debian packages nqvm needs, idempotently.
nqvm_missing_packages() {
  local list="$1" p
  while read -r p; do
    case "$p" in ''|'#'*) continue ;; esac
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || printf '%s\n' "$p"
  done < "$list"
}

nqvm_install_packages() {
  local list="$1" missing
  missing=$(nqvm_missing_packages "$list" | tr '\n' ' ')
  # The guest builder downloads the cloud kernel package: it needs current package lists.
  if [ -n "$missing" ] || ! apt-cache policy linux-image-cloud-amd64 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    if [ "$(id -u)" != 0 ]; then
      echo "nqvm: run as root, or install these first: apt-get install -y $missing" >&2
      return 1
    fi
    apt-get update -qq
    # shellcheck disable=SC2086
    [ -z "$missing" ] || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
  fi
}
