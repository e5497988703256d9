/**
 * The guest side of the built-in guest: every script and config file it carries, as text. All of
 * it is an input of the cache key, so editing anything here rebuilds the cached images.
 */

/** Printed on the console once the guest is ready for commands (followed by a few `key=value`). */
export const BOOT_MARKER = 'NQVM-GUEST-READY';

/** Where the guests carry nqvm's guest agent. */
export const GUEST_AGENT_PATH = '/usr/sbin/nqvm-guest-agent';
/** The token file the agent puts on the config drive (packages/agent guest-config). */
const GUEST_TOKEN_FILE = 'nqvm-agent-token';

/**
 * Kernel modules loaded by the initramfs, in dependency order (Debian's cloud kernel builds
 * these as modules). `evdev` and `button` turn the ACPI power button into an input event that
 * busybox `acpid` acts on; `fat`, `vfat` and the code pages its defaults name (cp437, ascii)
 * read nqvm's config drive.
 */
export const GUEST_MODULES: readonly string[] = [
  'virtio_ring',
  'virtio',
  'virtio_mmio',
  'virtio_pci_legacy_dev',
  'virtio_pci_modern_dev',
  'virtio_pci',
  'virtio_blk',
  'failover',
  'net_failover',
  'virtio_net',
  'virtio_console',
  'virtio-rng',
  // vsock to the guest agent under Firecracker (QEMU uses the virtio-serial port above).
  'vsock',
  'vmw_vsock_virtio_transport_common',
  'vmw_vsock_virtio_transport',
  'evdev',
  'button',
  'fat',
  'vfat',
  'nls_cp437',
  'nls_ascii',
];

export interface GuestFile {
  path: string;
  mode: number;
  text: string;
}

const PATH = 'export PATH=/sbin:/bin:/usr/sbin:/usr/bin';

/** PID 1 of the initramfs: load drivers, then switch to the root disk or stay here. */
function initramfsInit(modules: readonly string[]): string {
  return `#!/bin/sh
# nqvm test guest: initramfs /init. Options come from the kernel command line.
${PATH}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ${modules.join(' ')}; do
  if [ -f /lib/modules/$m.ko ]; then insmod /lib/modules/$m.ko || echo "nqvm: insmod $m failed"; fi
done
root=
rootmode=rw
for a in $(cat /proc/cmdline); do
  case "$a" in
    root=*) root=\${a#root=} ;;
    ro) rootmode=ro ;;
  esac
done
if [ -n "$root" ]; then
  if [ -b "$root" ] && mount -t ext4 -o "$rootmode" "$root" /newroot; then
    # /sbin/init may be an absolute link (Debian's, to /lib/systemd/systemd): it resolves in the new root.
    if [ -x /newroot/sbin/init ] || [ -L /newroot/sbin/init ]; then
      mount --move /dev /newroot/dev
      mount --move /proc /newroot/proc
      mount --move /sys /newroot/sys
      exec switch_root /newroot /sbin/init
    fi
    echo "nqvm: $root has no /sbin/init, staying in the initramfs"
    umount /newroot
  else
    echo "nqvm: no root file system on $root, staying in the initramfs"
  fi
fi
/etc/nqvm/rc
# PID 1 keeps the console open, so input typed between two shells is not lost.
while :; do setsid cttyhack /bin/sh -l; done
`;
}

/**
 * Shell functions of a guest init that configure its NICs from the kernel command line, as
 * the agent writes it (packages/agent vm-network.ts `networkBootArgs`): `nqvm.net.<i>=` per NIC
 * with comma-separated fields `ADDR/PREFIX`, `gw=GW`, `dhcp` and `mac=MAC` (the interface with
 * that MAC; without it eth<i>). A command line without any (older agents) configures eth0
 * from `nqvm.ip=ADDR/PREFIX nqvm.gw=GW` or `nqvm.dhcp=1`. The init defines `nqvm_dhcp DEV`,
 * how it runs the DHCP client, and calls `nqvm_network`. `tag` starts its messages.
 */
export function nicSetupShell(tag: string): string {
  return `# nqvm_nic INDEX FIELDS: one NIC, from nqvm.net.INDEX=FIELDS.
nqvm_nic() {
  n_addr= n_gw= n_dhcp= n_mac= n_dev=
  for f in $(echo "$2" | tr , ' '); do
    case "$f" in
      mac=*) n_mac=\${f#mac=} ;;
      gw=*) n_gw=\${f#gw=} ;;
      dhcp) n_dhcp=1 ;;
      */*) n_addr=$f ;;
      *) echo "${tag}: NIC $1: unknown setting $f" ;;
    esac
  done
  if [ -n "$n_mac" ]; then
    for d in /sys/class/net/*; do
      if [ "$(cat "$d/address" 2>/dev/null)" = "$n_mac" ]; then n_dev=\${d##*/}; fi
    done
  elif [ -e "/sys/class/net/eth$1" ]; then n_dev=eth$1; fi
  if [ -z "$n_dev" ]; then echo "${tag}: NIC $1 has no interface \${n_mac:+with MAC $n_mac}"; return 0; fi
  ip link set "$n_dev" up
  if [ -n "$n_addr" ]; then
    ip addr add "$n_addr" dev "$n_dev"
    if [ -n "$n_gw" ]; then
      ip route add default via "$n_gw" dev "$n_dev" 2>/dev/null || echo "${tag}: $n_dev: a default route was set by an earlier NIC"
    fi
  elif [ -n "$n_dhcp" ]; then
    nqvm_dhcp "$n_dev"
  fi
}
# nqvm_network: every NIC the kernel command line names, in its order.
nqvm_network() {
  nets= l_addr= l_gw= l_dhcp=
  for a in $(cat /proc/cmdline); do
    case "$a" in
      nqvm.net.*=*) nets="$nets \${a#nqvm.net.}" ;;
      nqvm.ip=*) l_addr=\${a#nqvm.ip=} ;;
      nqvm.gw=*) l_gw=\${a#nqvm.gw=} ;;
      nqvm.dhcp=1) l_dhcp=1 ;;
    esac
  done
  if [ -z "$nets" ]; then
    if [ -n "$l_addr" ]; then nets="0=$l_addr\${l_gw:+,gw=$l_gw}"; elif [ -n "$l_dhcp" ]; then nets=0=dhcp; fi
  fi
  for n in $nets; do
    case "\${n%%=*}" in
      ''|*[!0-9]*) echo "${tag}: ignoring nqvm.net.$n" ;;
      *) nqvm_nic "\${n%%=*}" "\${n#*=}" ;;
    esac
  done
}
`;
}

/**
 * The udhcpc event handler of nqvm's guests: applies the lease to $interface (the address
 * stays as it is on a renewal that keeps it), a default route when none is set yet, and the
 * lease's DNS servers unless the kernel command line names them (nqvm.dns=).
 */
export const UDHCPC_SCRIPT = `#!/bin/sh
case "$1" in
  deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    if ! ip -4 addr show dev "$interface" | grep -q "inet $ip/"; then
      ip -4 addr flush dev "$interface"
      ip addr add "$ip/\${mask:-24}" dev "$interface"
    fi
    if [ -n "$router" ]; then ip route add default via "\${router%% *}" dev "$interface" 2>/dev/null; fi
    case " $(cat /proc/cmdline) " in
      *" nqvm.dns="*) ;;
      *)
        if [ -n "$dns" ]; then
          : > /etc/resolv.conf
          for s in $dns; do echo "nameserver $s" >> /etc/resolv.conf; done
        fi
        ;;
    esac
    ;;
esac
`;

/** Shared by the initramfs fallback and the root disk's busybox init (as its sysinit). */
function runtimeScript(marker: string): string {
  return `#!/bin/sh
# nqvm test guest runtime: mounts, hostname, network, power button, config drive, then the
# ready marker. The config drive (label CIDATA) is mounted read-only at /run/cidata, readable
# by every user, as cloud-init would read it: this guest has no cloud-init.
# Understands nqvm.hostname= nqvm.net.<i>=... (see nqvm_network) nqvm.dns=A[,B]
${PATH}
mounted() { grep -q "^[^ ]* $1 " /proc/mounts 2>/dev/null; }
mounted /proc || mount -t proc proc /proc
mounted /sys || mount -t sysfs sysfs /sys
mounted /dev || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mounted /dev/pts || mount -t devpts devpts /dev/pts
mounted /run || mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mounted /tmp || mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp

host= dns=
for a in $(cat /proc/cmdline); do
  case "$a" in
    nqvm.hostname=*) host=\${a#nqvm.hostname=} ;;
    nqvm.dns=*) dns=\${a#nqvm.dns=} ;;
  esac
done
if [ -n "$host" ]; then hostname "$host"; elif [ -s /etc/hostname ]; then hostname -F /etc/hostname; fi
ip link set lo up
${nicSetupShell('nqvm')}
# udhcpc stays and renews the lease; the boot waits for its first 5 tries, 1 s apart.
nqvm_dhcp() {
  udhcpc -i "$1" -b -t 5 -T 1 -p "/run/udhcpc.$1.pid" -s /etc/udhcpc/default.script </dev/null >"/run/udhcpc.$1.log" 2>&1
  ip -4 addr show dev "$1" | grep -q 'inet ' || echo "nqvm: no DHCP lease on $1 yet (udhcpc keeps asking)"
}
nqvm_network
if [ -n "$dns" ]; then
  : > /etc/resolv.conf
  for s in $(echo "$dns" | tr , ' '); do echo "nameserver $s" >> /etc/resolv.conf; done
fi

acpid -l /run/acpid.log -p /run/acpid.pid
cidata=$(findfs LABEL=CIDATA 2>/dev/null || findfs LABEL=cidata 2>/dev/null)
if [ -n "$cidata" ]; then
  mkdir -p /run/cidata
  if mount -t vfat -o ro,umask=0222 "$cidata" /run/cidata; then
    echo "nqvm: config drive $cidata at /run/cidata"
  else
    echo "nqvm: cannot mount the config drive $cidata"
  fi
fi
# The guest agent serves the host-to-guest channel: virtio-serial (QEMU) or vsock (Firecracker).
token=/run/cidata/${GUEST_TOKEN_FILE}
if [ -x ${GUEST_AGENT_PATH} ] && [ -s "$token" ]; then
  if [ -n "$(ls /sys/class/virtio-ports 2>/dev/null)" ]; then channel="--device auto"; else channel="--vsock 1024"; fi
  setsid ${GUEST_AGENT_PATH} serve $channel --token-file "$token" </dev/null >/run/nqvm-guest-agent.log 2>&1 &
fi
echo "${marker} hostname=$(hostname) root=$(grep -q '^[^ ]* / ext4 ' /proc/mounts && echo disk || echo initramfs) uptime=$(cut -d' ' -f1 /proc/uptime)"
`;
}

/** Run by busybox acpid on the ACPI power button (QEMU `system_powerdown`). */
const POWER_BUTTON_HANDLER = `#!/bin/sh
# With busybox init (root disk), \`poweroff\` runs the inittab shutdown actions first; a script
# PID 1 (initramfs) ignores that signal, so there the guest syncs and powers off directly.
echo "nqvm: power button, shutting down" > /dev/console
if [ -f /etc/inittab ]; then exec poweroff; fi
sync
exec poweroff -f
`;

/**
 * The serial console of the root disk: busybox getty + login (which check /etc/shadow) once an
 * account has a password, as after nqvm wrote a user into the disk; a root shell otherwise.
 */
const CONSOLE_SCRIPT = `#!/bin/sh
if grep -q '^[^:]*:[^:*!]' /etc/shadow 2>/dev/null; then
  tty=$(cat /sys/class/tty/console/active 2>/dev/null)
  exec getty -L 115200 "\${tty##* }" vt100
fi
exec cttyhack /bin/sh -l
`;

/**
 * busybox init on the root disk. At shutdown, disk file systems are unmounted (or remounted
 * read-only when busy, as / is).
 */
const INITTAB = `::sysinit:/etc/nqvm/rc
::respawn:/etc/nqvm/console
::ctrlaltdel:/sbin/poweroff
::shutdown:/bin/umount -a -r -t noproc,sysfs,devtmpfs,devpts,tmpfs
`;

const BASE_ETC: readonly GuestFile[] = [
  {
    path: 'etc/passwd',
    mode: 0o644,
    text: 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n',
  },
  { path: 'etc/group', mode: 0o644, text: 'root:x:0:\nnogroup:x:65534:\n' },
  // Locked root password: the console shell needs no login; later work injects real users.
  { path: 'etc/shadow', mode: 0o600, text: 'root:*:19000:0:99999:7:::\nnobody:*:19000:0:99999:7:::\n' },
  { path: 'etc/hostname', mode: 0o644, text: 'nqvm-guest\n' },
  { path: 'etc/hosts', mode: 0o644, text: '127.0.0.1\tlocalhost\n' },
  { path: 'etc/shells', mode: 0o644, text: '/bin/sh\n/bin/ash\n' },
  // login sets HOME for the user it logs in; the shells init starts have none.
  {
    path: 'etc/profile',
    mode: 0o644,
    text: `${PATH}\nif [ "$(id -u)" = 0 ]; then export HOME=/root; fi\nPS1='\\h:\\w\\$ '\n`,
  },
  { path: 'etc/udhcpc/default.script', mode: 0o755, text: UDHCPC_SCRIPT },
  { path: 'etc/acpi/PWRF/00000080', mode: 0o755, text: POWER_BUTTON_HANDLER },
  { path: 'etc/nqvm/rc', mode: 0o755, text: runtimeScript(BOOT_MARKER) },
];

/** Text files of the initramfs (besides busybox and the modules). */
export function initramfsFiles(modules: readonly string[]): GuestFile[] {
  return [{ path: 'init', mode: 0o755, text: initramfsInit(modules) }, ...BASE_ETC];
}

/** Text files of the root disk (besides busybox). */
export function rootfsFiles(): GuestFile[] {
  return [
    ...BASE_ETC,
    { path: 'etc/inittab', mode: 0o644, text: INITTAB },
    { path: 'etc/nqvm/console', mode: 0o755, text: CONSOLE_SCRIPT },
  ];
}
