/**
 * nqvm's guest agent for any Linux guest, not only nqvm's own: the config drive carries the
 * static binary and an install script, and cloud-init runs the script once per instance. The
 * script installs the binary and a start script that mounts the config drive (for the token)
 * and picks the channel (virtio-serial under QEMU, vsock under Firecracker), then runs it at
 * every boot: a systemd unit where systemd runs, else started at once. The same files install
 * it by hand in an image without cloud-init (`nqvm guest-agent files DIR`).
 */
import { readFile } from 'node:fs/promises';
import { ensureGuestAgent } from '@nqvm/guest-agent';

/** A cloud-config document (as cloud-config.ts builds and merges them). */
type CloudConfig = Record<string, unknown>;

import { GUEST_TOKEN_DRIVE_FILE } from './guest-config';

export const GUEST_AGENT_DRIVE_BINARY = 'nqvm-guest-agent';
export const GUEST_AGENT_DRIVE_INSTALLER = 'nqvm-guest-agent-install.sh';
/** Where the start script mounts the config drive in the guest. */
const DRIVE_MOUNT = '/run/nqvm-cidata';

/**
 * The installer. `$NQVM_ROOT` (empty in a guest) prefixes every path it writes, so it can be
 * run against an image's root folder too.
 */
export function guestAgentInstaller(): string {
  return `#!/bin/sh
# nqvm: installs nqvm's guest agent (exec, clean shutdown, re-addressing of clones, metrics for
# the host) from the config drive, and runs it at every boot.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
root=\${NQVM_ROOT:-}
mkdir -p "$root/usr/local/sbin"
cp "$src/${GUEST_AGENT_DRIVE_BINARY}" "$root/usr/local/sbin/nqvm-guest-agent.new"
chmod 0755 "$root/usr/local/sbin/nqvm-guest-agent.new"
mv -f "$root/usr/local/sbin/nqvm-guest-agent.new" "$root/usr/local/sbin/nqvm-guest-agent"
cat > "$root/usr/local/sbin/nqvm-guest-agent-start" <<'EOS'
#!/bin/sh
# Mounts the config drive (the token is there), picks the host channel, serves it.
d=${DRIVE_MOUNT}
mkdir -p "$d"
grep -qs " $d " /proc/mounts || mount -o ro -L CIDATA "$d" 2>/dev/null || mount -o ro -L cidata "$d"
if [ -n "$(ls /sys/class/virtio-ports 2>/dev/null)" ]; then ch="--device auto"; else ch="--vsock 1024"; fi
exec /usr/local/sbin/nqvm-guest-agent serve $ch --token-file "$d/${GUEST_TOKEN_DRIVE_FILE}"
EOS
chmod 0755 "$root/usr/local/sbin/nqvm-guest-agent-start"
if [ -d "$root/run/systemd/system" ] || [ -d "$root/etc/systemd/system" ]; then
  mkdir -p "$root/etc/systemd/system"
  cat > "$root/etc/systemd/system/nqvm-guest-agent.service" <<'EOS'
[Unit]
Description=nqvm guest agent (the host's channel into this guest)
After=local-fs.target

[Service]
ExecStart=/usr/local/sbin/nqvm-guest-agent-start
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
EOS
  if [ -z "$root" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now nqvm-guest-agent.service
  else
    mkdir -p "$root/etc/systemd/system/multi-user.target.wants"
    ln -sf ../nqvm-guest-agent.service "$root/etc/systemd/system/multi-user.target.wants/nqvm-guest-agent.service"
  fi
elif [ -z "$root" ]; then
  setsid /usr/local/sbin/nqvm-guest-agent-start </dev/null >/var/log/nqvm-guest-agent.log 2>&1 &
fi
echo "nqvm: guest agent installed"
`;
}

/**
 * What cloud-init runs once per instance: mount the config drive and run its installer (the
 * agent's unit then starts it at every boot).
 */
export const GUEST_AGENT_CLOUD_CONFIG: CloudConfig = {
  runcmd: [
    [
      'sh',
      '-c',
      `mkdir -p ${DRIVE_MOUNT} && { grep -qs " ${DRIVE_MOUNT} " /proc/mounts || mount -o ro -L CIDATA ${DRIVE_MOUNT} || mount -o ro -L cidata ${DRIVE_MOUNT}; } && sh ${DRIVE_MOUNT}/${GUEST_AGENT_DRIVE_INSTALLER}`,
    ],
  ],
};

/**
 * The config drive files that carry the agent: its binary and its installer. Without a
 * `binaryPath`, the agent is built (once, cached) from its C source.
 */
export async function guestAgentDriveFiles(
  binaryPath?: string,
  onProgress?: (message: string) => void,
): Promise<Array<[string, string | Uint8Array]>> {
  binaryPath ??= (await ensureGuestAgent(onProgress ? { onProgress } : {})).path;
  return [
    [GUEST_AGENT_DRIVE_BINARY, await readFile(binaryPath)],
    [GUEST_AGENT_DRIVE_INSTALLER, guestAgentInstaller()],
  ];
}
