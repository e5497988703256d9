import { defineConfig } from 'vitest/config';

/** Test files that boot real guests or drive a browser: run one file at a time (2-core machines). */
const heavy = [
  'packages/testkit/src/guest/boot.test.ts',
  'packages/agent/src/drivers/qemu/qemu-driver.test.ts',
  'packages/agent/src/agent/qemu.test.ts',
  'packages/agent/src/agent/qemu-snapshots.test.ts',
  'packages/agent/src/agent/qemu-containers.test.ts',
  'packages/agent/src/agent/qemu-disk-full.test.ts',
  // Root, network namespaces, nft and dnsmasq; the guests file boots real VMs on TAPs.
  'packages/agent/src/network/host-network.netns.test.ts',
  'packages/agent/src/network/host-network.guests.test.ts',
  // Root and network namespaces: injected network files brought up by ifup and systemd-networkd.
  'packages/agent/src/guest-config/inject-network.netns.test.ts',
  'packages/cli/test/**/*.test.ts',
  'packages/web/test/web-ui.test.ts',
];

export default defineConfig({
  test: {
    testTimeout: 30_000,
    hookTimeout: 120_000,
    pool: 'forks',
    projects: [
      {
        extends: true,
        test: {
          name: 'unit',
          include: ['packages/*/src/**/*.test.ts', 'packages/*/test/**/*.test.ts'],
          exclude: [...heavy, '**/node_modules/**'],
        },
      },
      {
        extends: true,
        test: { name: 'vm', include: heavy, fileParallelism: false },
      },
    ],
  },
});
