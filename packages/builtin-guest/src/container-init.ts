/**
 * The init of container microVMs: an initramfs with busybox, tini-static, nqvm's guest agent and
 * the virtio modules of the cloud kernel. Its /init mounts the container's disk (the OCI image's
 * ext4, the VM's own copy-on-write disk of it) as the root, reads the container's settings from
 * a small vfat drive labelled NQVMCTR (argv, env, cwd, user, token), sets the host name and the
 * network, puts nqvm's tools on a tmpfs at /.nqvm inside the container (the image itself stays
 * as it is), and switches root into tini, which runs the guest agent, which runs the container's
 * process: no Docker daemon, nothing listening on the guest's network. Cached like the built-in
 * guest, rebuilt when an input changes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { ensureGuestAgent } from '@nqvm/guest-agent/build';
import { type BuiltinGuest, ensureBuiltinGuest } from './builtin-guest';
import { HOST_BUSYBOX } from './debian-packages';
import { GUEST_AGENT_PATH, GUEST_MODULES, type GuestFile, nicSetupShell, UDHCPC_SCRIPT } from './guest-files';
import { busyboxApplets, initramfsTree } from './guest-images';
import { encodeInitramfs } from './newc';

/** Debian's tini package: PID 1 duties (reaping, signal forwarding) for the container. */
export const HOST_TINI = '/usr/bin/tini-static';
/** The label of the container settings drive the agent writes. */
export const CONTAINER_DRIVE_LABEL = 'NQVMCTR';

export interface ContainerInit {
  dir: string;
  /** The cloud kernel (the built-in guest's bzImage). */
  kernel: string;
  /** gzip'd newc initramfs with /init below. */
  initrd: string;
}

const FORMAT = 1;

function containerInitScript(modules: readonly string[]): string {
  return `#!/bin/sh
# nqvm container init. Kernel options: root= nqvm.hostname= nqvm.net.<i>=... (see
# nqvm_network) nqvm.dns=A[,B] nqvm.halt=poweroff|reboot
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in ${modules.join(' ')}; do
  if [ -f /lib/modules/$m.ko ]; then insmod /lib/modules/$m.ko 2>/dev/null; fi
done
root= host=container dns= halt=poweroff
for a in $(cat /proc/cmdline); do
  case "$a" in
    root=*) root=\${a#root=} ;;
    nqvm.hostname=*) host=\${a#nqvm.hostname=} ;;
    nqvm.dns=*) dns=\${a#nqvm.dns=} ;;
    nqvm.halt=reboot) halt=reboot ;;
  esac
done
fail() {
  echo "nqvm-init: $*"
  echo "NQVM-CONTAINER-EXIT kind=unstartable value=125"
  sync
  if [ "$halt" = reboot ]; then reboot -f; else poweroff -f; fi
}
cfg=
for _ in $(seq 1 50); do
  cfg=$(findfs LABEL=${CONTAINER_DRIVE_LABEL} 2>/dev/null) && break
  sleep 0.1
done
[ -n "$cfg" ] || fail "no container settings drive (label ${CONTAINER_DRIVE_LABEL})"
mkdir -p /cfg
mount -t vfat -o ro "$cfg" /cfg || fail "cannot mount the settings drive $cfg"
[ -b "$root" ] || fail "no container disk at '$root'"
mount -t ext4 -o rw "$root" /newroot || fail "cannot mount the container's disk $root"

# nqvm's tools and the settings, on a tmpfs inside the container: its disk is not changed.
mkdir -p /newroot/.nqvm || fail "cannot make /.nqvm in the container"
mount -t tmpfs -o mode=0755,size=32m tmpfs /newroot/.nqvm
mkdir -p /newroot/.nqvm/config /newroot/.nqvm/acpi/PWRF
cp /bin/busybox ${GUEST_AGENT_PATH} /usr/bin/tini-static /newroot/.nqvm/
cp /cfg/* /newroot/.nqvm/config/
chmod 0600 /newroot/.nqvm/config/*
umount /cfg
# The power button (QEMU system_powerdown) asks tini, hence the process, to stop.
printf '#!/.nqvm/busybox sh\\n/.nqvm/busybox kill -TERM 1\\n' > /newroot/.nqvm/acpi/PWRF/00000080
chmod 0755 /newroot/.nqvm/acpi/PWRF/00000080

hostname "$host"
ip link set lo up
${nicSetupShell('nqvm-init')}
# One lease, taken before the switch to the container's root (no client runs in the container).
nqvm_dhcp() {
  udhcpc -i "$1" -n -q -t 5 -T 1 -s /etc/udhcpc/default.script || echo "nqvm-init: no DHCP lease on $1"
}
nqvm_network
# What a container expects in /etc (written into its own disk copy, as Docker's bind mounts show them).
if [ -d /newroot/etc ]; then
  echo "$host" > /newroot/etc/hostname
  printf '127.0.0.1\\tlocalhost\\n127.0.1.1\\t%s\\n' "$host" > /newroot/etc/hosts
  if [ -n "$dns" ]; then
    : > /newroot/etc/resolv.conf
    for s in $(echo "$dns" | tr , ' '); do echo "nameserver $s" >> /newroot/etc/resolv.conf; done
  elif [ -s /etc/resolv.conf ]; then cp /etc/resolv.conf /newroot/etc/resolv.conf; fi
fi

mkdir -p /newroot/dev /newroot/proc /newroot/sys /newroot/tmp
mount --move /dev /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /newroot/dev/pts
mount -t tmpfs -o mode=1777 shm /newroot/dev/shm
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
chroot /newroot /.nqvm/busybox acpid -c /.nqvm/acpi -l /dev/null -p /.nqvm/acpid.pid 2>/dev/null

if [ -n "$(ls /sys/class/virtio-ports 2>/dev/null)" ] || [ -n "$(ls /newroot/sys/class/virtio-ports 2>/dev/null)" ]; then
  channel="--device auto"
else
  channel="--vsock 1024"
fi
exec switch_root /newroot /.nqvm/tini-static -- /.nqvm/nqvm-guest-agent container --config /.nqvm/config $channel --halt "$halt"
`;
}

const UDHCPC: GuestFile = { path: 'etc/udhcpc/default.script', mode: 0o755, text: UDHCPC_SCRIPT };

function defaultCacheRoot(): string {
  const base = process.env.NQVM_CACHE_DIR;
  return base ? join(base, 'container-init') : join(homedir(), '.cache', 'nqvm', 'container-init');
}

async function sha256(file: string): Promise<string> {
  return createHash('sha256')
    .update(await readFile(file))
    .digest('hex');
}

async function exists(file: string): Promise<boolean> {
  return stat(file).then(
    () => true,
    () => false,
  );
}

/**
 * Returns the cached container init, building it (a second or so) when an input changed: the
 * built-in guest's kernel and modules, busybox, tini, the guest agent or the script.
 *
 * @example
 * const init = await ensureContainerInit();
 * // boot: kernel init.kernel, initrd init.initrd, root=/dev/vda (the container's disk)
 */
export async function ensureContainerInit(opts: { cacheDir?: string } = {}): Promise<ContainerInit> {
  const root = resolve(opts.cacheDir ?? defaultCacheRoot());
  if (!(await exists(HOST_TINI)))
    throw new Error(`${HOST_TINI} is missing: install Debian's tini package (apt-get install tini)`);
  const guest: BuiltinGuest = await ensureBuiltinGuest();
  const agent = await ensureGuestAgent();
  const script = containerInitScript(GUEST_MODULES);
  const key = createHash('sha256')
    .update(
      JSON.stringify({
        format: FORMAT,
        guest: guest.dir,
        agent: agent.sha256,
        busybox: await sha256(HOST_BUSYBOX),
        tini: await sha256(HOST_TINI),
        script,
        udhcpc: UDHCPC.text,
      }),
    )
    .digest('hex')
    .slice(0, 16);
  const dir = join(root, key);
  const initrd = join(dir, 'initrd.img');
  if (await exists(initrd)) return { dir, kernel: guest.kernel, initrd };

  await mkdir(root, { recursive: true });
  const modules = new Map<string, Buffer>();
  const modulesDir = guest.modulesDir ?? join(guest.dir, 'modules');
  const available = new Set(await readdir(modulesDir));
  for (const name of GUEST_MODULES) {
    if (available.has(`${name}.ko`)) modules.set(name, await readFile(join(modulesDir, `${name}.ko`)));
  }
  const busybox = { binary: await readFile(HOST_BUSYBOX), applets: await busyboxApplets(HOST_BUSYBOX) };
  const tree = initramfsTree(busybox, [{ path: 'init', mode: 0o755, text: script }, UDHCPC], modules, [
    { path: GUEST_AGENT_PATH.slice(1), data: await readFile(agent.path) },
    { path: 'usr/bin/tini-static', data: await readFile(HOST_TINI) },
  ]);
  // Built beside its final place, then renamed: readers never see half an image.
  const tmp = join(root, `.build-${key}-${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(tmp, { recursive: true });
  try {
    await writeFile(join(tmp, 'initrd.img'), encodeInitramfs(tree));
    await rename(tmp, dir).catch(async (err: NodeJS.ErrnoException) => {
      // Another process published the same inputs first.
      if (err.code !== 'ENOTEMPTY' && err.code !== 'EEXIST') throw err;
    });
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
  return { dir, kernel: guest.kernel, initrd };
}
