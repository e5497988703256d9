/**
 * Guest configuration written before boot, by mode:
 * - `none`: nothing;
 * - `cloud-init`: the NoCloud config drive, plus MMDS on Firecracker;
 * - `inject`: the settings written into the root ext4 with debugfs, nothing else;
 * - `auto`: the config drive (and MMDS) always, plus injection when the image is not known to
 *   run cloud-init and its root disk holds ext4 that can be edited.
 * The config drive is rebuilt on every boot; injection runs when the disk is new or the
 * settings changed since the last one (a hash of them is kept in the VM folder).
 */
import { createHash } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { AgentGuestConfig } from '@nqvm/api';
import type { DiskSpec, VmmKind } from '../drivers/types';
import { cloudInitData } from './cloud-config';
import { writeConfigDrive } from './config-drive';
import { GUEST_AGENT_CLOUD_CONFIG, guestAgentDriveFiles } from './guest-agent-install';
import { checkGuestConfig, GuestConfigError } from './guest-values';
import { injectGuestConfig } from './inject';
import { MMDS_MAX_BYTES, mmdsDocument } from './mmds';

export const CONFIG_DRIVE_FILE = 'cidata.img';
/** The guest agent's token on the config drive (cloud-init ignores files it does not know). */
export const GUEST_TOKEN_DRIVE_FILE = 'nqvm-agent-token';
/** What the last boot did: hash of the settings last injected, and notes. */
export const RECORD_FILE = 'guest-config.json';

export interface GuestConfigPlan {
  configDrive: boolean;
  mmds: boolean;
  inject: boolean;
}

/**
 * Whether `cfg` asks for an offline edit of an ext4 root disk; decides, before the disk is made,
 * that QEMU gets a raw disk instead of a qcow2 overlay (debugfs cannot write inside one).
 */
export function wantsInjection(cfg: AgentGuestConfig | null, hasCloudInit: boolean | null): boolean {
  if (!cfg) return false;
  return cfg.mode === 'inject' || (cfg.mode === 'auto' && hasCloudInit !== true);
}

/**
 * What to write for `cfg`. `editableRoot`: the root disk is a raw file holding ext4.
 *
 * @example
 * planGuestConfig(cfg, { vmm: 'qemu', hasCloudInit: null, editableRoot: true });
 * // auto -> { configDrive: true, mmds: false, inject: true }
 */
export function planGuestConfig(
  cfg: AgentGuestConfig,
  target: { vmm: VmmKind; hasCloudInit: boolean | null; editableRoot: boolean },
): GuestConfigPlan {
  const cloud = cfg.mode === 'cloud-init' || cfg.mode === 'auto';
  const inject = wantsInjection(cfg, target.hasCloudInit);
  if (cfg.mode === 'inject' && !target.editableRoot) {
    throw new GuestConfigError('mode inject needs a root disk holding ext4 in a raw file; this VM has none');
  }
  return {
    configDrive: cloud,
    mmds: cloud && target.vmm === 'firecracker',
    inject: inject && target.editableRoot,
  };
}

/** The settings injection depends on; the instance id and user-data reach only cloud-init. */
function injectionHash(cfg: AgentGuestConfig): string {
  const { hostname, username, password_hash, ssh_authorized_keys, network_config } = cfg;
  return createHash('sha256')
    .update(JSON.stringify({ hostname, username, password_hash, ssh_authorized_keys, network_config }))
    .digest('hex');
}

/** `guest-config.json`: what the last boot wrote, read by the next one (and by people). */
interface GuestConfigRecord {
  /** Hash of the settings last injected into the root disk; null when none were. */
  injected_hash: string | null;
  injected_at: string | null;
  injected: string[];
  /** Why the last boot left something out. */
  notes: string[];
}

async function readRecord(vmDir: string): Promise<GuestConfigRecord | null> {
  try {
    return JSON.parse(await readFile(path.join(vmDir, RECORD_FILE), 'utf8')) as GuestConfigRecord;
  } catch {
    return null;
  }
}

export interface GuestConfigTarget {
  vmDir: string;
  vmm: VmmKind;
  config: AgentGuestConfig;
  /** From the rootfs image: true, false, or null when unknown. */
  hasCloudInit: boolean | null;
  /** The VM's root disk; `editable` when it is a raw file holding ext4. */
  rootDisk: { path: string; editable: boolean; created: boolean } | null;
  /** The guest agent's token, put on the config drive (`nqvm-agent-token`) for the guest to read. */
  agentToken?: string;
  /**
   * The guest agent's static binary: a guest that may run cloud-init (not nqvm's own, which has
   * the agent) gets it on its config drive with an installer cloud-init runs once.
   */
  guestAgentBinary?: string;
}

export interface AppliedGuestConfig {
  /** The config drive to attach read-only, when the plan has one. */
  configDrive: DiskSpec | null;
  /** MMDS data for Firecracker, when the plan has it. */
  mmds: Record<string, unknown> | null;
  /** Guest paths the injection changed; null when it did not run. */
  injected: string[] | null;
  /** Why something the mode could do was left out. */
  notes: string[];
}

/**
 * Writes what the plan asks for into the VM folder and the root disk; returns what to attach.
 *
 * @example
 * const applied = await applyGuestConfig({ vmDir, vmm: 'qemu', config, hasCloudInit: null, rootDisk });
 * if (applied.configDrive) extraDisks.push(applied.configDrive);
 */
export async function applyGuestConfig(target: GuestConfigTarget): Promise<AppliedGuestConfig> {
  const { config: cfg, vmDir } = target;
  const result: AppliedGuestConfig = { configDrive: null, mmds: null, injected: null, notes: [] };
  const drivePath = path.join(vmDir, CONFIG_DRIVE_FILE);
  if (cfg.mode === 'none') {
    await rm(drivePath, { force: true });
    return result;
  }
  checkGuestConfig(cfg);
  const plan = planGuestConfig(cfg, {
    vmm: target.vmm,
    hasCloudInit: target.hasCloudInit,
    editableRoot: target.rootDisk?.editable ?? false,
  });
  if (wantsInjection(cfg, target.hasCloudInit) && !plan.inject) {
    result.notes.push(
      'no raw ext4 root disk to write the settings into: the config drive alone carries them',
    );
  }

  if (plan.configDrive || plan.mmds) {
    // The agent travels on the config drive only: MMDS carries no files.
    const offerAgent = plan.configDrive && target.hasCloudInit !== false && !!target.guestAgentBinary;
    const data = cloudInitData(cfg, offerAgent ? GUEST_AGENT_CLOUD_CONFIG : {});
    if (plan.configDrive) {
      const files: Array<[string, string | Uint8Array]> = [];
      if (target.agentToken) files.push([GUEST_TOKEN_DRIVE_FILE, `${target.agentToken}\n`]);
      if (offerAgent) files.push(...(await guestAgentDriveFiles(target.guestAgentBinary)));
      await writeConfigDrive(drivePath, data, files);
      result.configDrive = { id: 'cidata', path: drivePath, format: 'raw', readOnly: true, isRoot: false };
    }
    if (plan.mmds) {
      const doc = mmdsDocument(cfg, data);
      const size = Buffer.byteLength(JSON.stringify(doc));
      if (size <= MMDS_MAX_BYTES) result.mmds = doc;
      else result.notes.push(`MMDS left empty: its data would be ${size} bytes, over ${MMDS_MAX_BYTES}`);
    }
  }
  if (!plan.configDrive) await rm(drivePath, { force: true });

  // A new disk holds none of what earlier boots injected.
  const previous = target.rootDisk?.created ? null : await readRecord(vmDir);
  const record: GuestConfigRecord = {
    injected_hash: previous?.injected_hash ?? null,
    injected_at: previous?.injected_at ?? null,
    injected: previous?.injected ?? [],
    notes: result.notes,
  };
  if (plan.inject && target.rootDisk) {
    const hash = injectionHash(cfg);
    if (previous?.injected_hash !== hash) {
      try {
        const injected = await injectGuestConfig(target.rootDisk.path, cfg);
        result.injected = injected.changed;
        result.notes.push(...injected.notes);
        Object.assign(record, {
          injected_hash: hash,
          injected_at: new Date().toISOString(),
          injected: result.injected,
        });
      } catch (err) {
        // auto: an image that is not an OS root (no /etc, no passwd) still boots, with the drive.
        if (cfg.mode !== 'auto' || !(err instanceof GuestConfigError)) throw err;
        result.notes.push(`settings not written into the root disk: ${err.message}`);
      }
    }
  }
  await writeFile(path.join(vmDir, RECORD_FILE), `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
  return result;
}
