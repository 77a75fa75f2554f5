/**
 * Where a VM's disk layers may live, from vigil's own records — never from where a qcow2 header says to go. The
 * headers are written by QEMU (which a guest may have compromised, and a template's disk was once a running VM's),
 * so a backing file is accepted only if vigil put it there: a file in this VM's disk directory, a disk or snapshot
 * base of a VM it was cloned from (`baseVmId`, transitively), or a backing file recorded in one of their specs
 * (the image). Export (storage/bundle) and start (jail-launch) both walk chains through this one rule.
 */
import { realpathSync } from "node:fs";
import { dirname, join } from "node:path";
import { VigilError, q } from "../errors.ts";
import type { VmRecord } from "./vm-repository.ts";

/** Deepest chain (and template lineage) followed. */
export const MAX_CHAIN = 16;

export interface RecordedPlaces {
  /** Whether `file` (resolved through symlinks) is one of the places vigil recorded for this VM's layers. */
  has(file: string): boolean;
}

function real(p: string): string | undefined {
  try {
    return realpathSync(p);
  } catch {
    return undefined;
  }
}

export async function recordedPlaces(vm: VmRecord, vmsDir: string, byId: (id: string) => Promise<VmRecord | undefined>): Promise<RecordedPlaces> {
  const dirs = new Set<string>();
  const files = new Set<string>();
  const addDir = (p: string) => {
    const r = real(p);
    if (r !== undefined) dirs.add(r);
  };
  addDir(join(vmsDir, vm.id, "disks"));
  let cur: VmRecord | undefined = vm;
  for (let depth = 0; cur !== undefined; depth++) {
    if (depth >= MAX_CHAIN) throw new VigilError("VIGIL_HOST", `VM ${q(vm.name)} descends from more than ${MAX_CHAIN} templates`);
    for (const d of cur.spec.disks) {
      const f = d.backing !== undefined ? real(d.backing) : undefined;
      if (f !== undefined) files.add(f);
    }
    if (cur !== vm) {
      addDir(join(vmsDir, cur.id, "disks"));
      addDir(join(vmsDir, cur.id, "snapbases"));
    }
    cur = cur.baseVmId ? await byId(cur.baseVmId) : undefined;
  }
  return {
    has(file: string): boolean {
      const r = real(file);
      return r !== undefined && (files.has(r) || dirs.has(dirname(r)));
    },
  };
}
