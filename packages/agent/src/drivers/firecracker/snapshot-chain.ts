import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { SnapshotFiles } from '../types';

/** What `snapshot()` writes beside the two Firecracker files. */
export interface SnapshotManifest {
  format: 'nqvm-firecracker-snapshot/1';
  /** Names the snapshot in Diff chains (absent in manifests written before chains were checked). */
  id?: string;
  firecrackerVersion: string;
  type: 'Full' | 'Diff';
  /**
   * Diff: the snapshot whose memory its pages go over (the previous snapshot of the same VMM
   * run, or the one the run was restored from); null when the run was booted and took no
   * snapshot before: the Diff then holds every page the guest wrote.
   */
  baseId?: string | null;
  vmId: string;
  createdAt: string;
  /** GET /vm/config at snapshot time, paths as Firecracker saw them. */
  vmConfig: Record<string, unknown>;
  /** Copies of the writable disks, taken while paused (the disks are not in the snapshot). */
  disks: { id: string; file: string }[];
  mode: 'direct' | 'jailer';
}

export const SNAPSHOT_MANIFEST = 'snapshot.json';

/** A chain of snapshots that does not describe one guest memory: refused before any load. */
export class SnapshotChainError extends Error {
  readonly code = 'SNAPSHOT_CHAIN_INVALID';
  constructor(message: string) {
    super(message);
    this.name = 'SnapshotChainError';
  }
}

/** A snapshot's manifest, or null when it has none (written by hand or by another tool). */
export async function readSnapshotManifest(snap: SnapshotFiles): Promise<SnapshotManifest | null> {
  const text = await readFile(join(dirname(snap.statePath), SNAPSHOT_MANIFEST), 'utf8').catch(() => null);
  return text === null ? null : (JSON.parse(text) as SnapshotManifest);
}

export interface SnapshotLayer {
  files: SnapshotFiles & { memPath: string };
  manifest: SnapshotManifest | null;
}

/** Longer chains mean a loop or a caller that never takes a Full. */
const MAX_CHAIN = 1000;

/**
 * The memory layers a snapshot restores from, oldest first: the base that holds every page (a
 * Full, or a Diff whose run wrote every page into it) then each Diff over it. Where manifests
 * exist each Diff's base must be the snapshot it was taken over; a Diff without a manifest and
 * without a base is taken as complete, as SnapshotFiles documents.
 *
 * @example
 * const layers = await resolveSnapshotChain({ ...diff2, base: { ...diff1, base: full } });
 * layers.map((l) => l.files.memPath); // [full, diff1, diff2]
 */
export async function resolveSnapshotChain(snap: SnapshotFiles): Promise<SnapshotLayer[]> {
  const layers: SnapshotLayer[] = [];
  const seen = new Set<string>();
  for (let cur: SnapshotFiles | undefined = snap; cur; ) {
    const name = dirname(cur.statePath);
    if (seen.has(cur.statePath)) {
      throw new SnapshotChainError(`the chain of snapshot ${dirname(snap.statePath)} loops back to ${name}`);
    }
    if (layers.length >= MAX_CHAIN) {
      throw new SnapshotChainError(
        `the chain of snapshot ${dirname(snap.statePath)} is over ${MAX_CHAIN} Diffs long`,
      );
    }
    seen.add(cur.statePath);
    if (!cur.memPath) throw new SnapshotChainError(`snapshot ${name} has no memory file`);
    const manifest = await readSnapshotManifest(cur);
    if (manifest?.type && manifest.type !== cur.type) {
      throw new SnapshotChainError(`snapshot ${name} is a ${manifest.type} snapshot, not ${cur.type}`);
    }
    const top = layers.at(-1)?.manifest;
    if (top && manifest && top.vmId !== manifest.vmId) {
      throw new SnapshotChainError(`snapshot ${name} is of VM ${manifest.vmId}, its Diff of VM ${top.vmId}`);
    }
    layers.push({ files: { ...cur, memPath: cur.memPath }, manifest });
    if (cur.type === 'Full') break;
    const base: SnapshotFiles | undefined = cur.base;
    if (manifest?.baseId === null) {
      if (base) {
        throw new SnapshotChainError(
          `Diff snapshot ${name} holds every page its run wrote (its VM had no snapshot before it): it has no base, but ${dirname(base.statePath)} was given as one`,
        );
      }
      break;
    }
    if (manifest?.baseId !== undefined) {
      if (!base) {
        throw new SnapshotChainError(
          `Diff snapshot ${name} holds only the pages written since snapshot ${manifest.baseId}, which was not given as its base: a Diff restores only with its whole chain`,
        );
      }
      const baseManifest = await readSnapshotManifest(base);
      if (baseManifest?.id !== manifest.baseId) {
        const given = baseManifest
          ? `is ${baseManifest.id ? `snapshot ${baseManifest.id}` : 'another one'}`
          : 'has no manifest (a snapshot that did not complete?)';
        throw new SnapshotChainError(
          `Diff snapshot ${name} was taken over snapshot ${manifest.baseId}; the base given, ${dirname(base.statePath)}, ${given}`,
        );
      }
    }
    cur = base;
  }
  return layers.reverse();
}
