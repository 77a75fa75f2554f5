/**
 * What QEMU 7.2's record/replay can record, decided before anything is made (docs/recording.md, "What can be
 * recorded"). Pure: a spec and the host in, the reasons it cannot be recorded out (empty: it can).
 */
import type { VmSpec } from "../vm/spec.ts";

export interface RecordRefusal {
  field: string;
  reason: string;
}

export function recordRefusals(spec: VmSpec): RecordRefusal[] {
  const out: RecordRefusal[] = [];
  // icount runs the vCPUs round-robin on one thread, and QEMU's replay is only tested (and only deterministic
  // for vigil's purposes: one instruction stream, one count) with one vCPU.
  if (spec.vcpus !== 1) out.push({ field: "vcpus", reason: `it has ${spec.vcpus} vCPUs; QEMU records and replays exactly one (icount counts one instruction stream)` });
  // Record/replay needs TCG with icount: `-cpu host` exists only under KVM.
  if (spec.cpu === "host") out.push({ field: "cpu", reason: 'its CPU model is "host", which needs KVM; recording runs under TCG with instruction counting (use "max" or "qemu64")' });
  // A shared-storage VM's disks may be written by another host's QEMU after an HA restart: its start state is not ours to copy.
  if (spec.storage === "shared") out.push({ field: "storage", reason: "its disks are on shared storage; a recording copies the disks as they are at its start, which only a local disk guarantees" });
  if (spec.boot.kind === "disk" && spec.disks.length === 0) out.push({ field: "disks", reason: "it boots from a disk but has none" });
  return out;
}
