/**
 * Limits a VM spec must respect on the host that runs it. The spec schema is pure and host-independent; these
 * checks need host facts (how much memory the host has), so they run where a VM is created or started — on
 * the host that will run it, which may not be the host it was created on.
 */
import { readFileSync } from "node:fs";
import type { QuotaLimits } from "../config.ts";
import { VigilError, q } from "../errors.ts";

/** What the checks need to know about the host. */
export interface HostFacts {
  /** MemTotal in MiB; undefined when it cannot be read (then memory is not bounded here). */
  memTotalMiB: number | undefined;
}

/** MemTotal from the text of /proc/meminfo, in MiB (undefined if the line is missing or malformed). */
export function parseMemTotalMiB(meminfo: string): number | undefined {
  const m = /^MemTotal:\s+(\d+)\s+kB$/m.exec(meminfo);
  return m ? Math.floor(Number(m[1]) / 1024) : undefined;
}

/** This host's facts, read from /proc. */
export function readHostFacts(): HostFacts {
  try {
    return { memTotalMiB: parseMemTotalMiB(readFileSync("/proc/meminfo", "utf8")) };
  } catch {
    return { memTotalMiB: undefined };
  }
}

/**
 * Refuses a VM whose memory exceeds the host's total memory: QEMU would start and the host would swap or
 * the OOM killer would end something. `context` opens the message ("Invalid VM spec", "Cannot start VM …").
 */
export function checkHostLimits(spec: { memoryMiB: number }, host: HostFacts, context = "Invalid VM spec"): void {
  if (host.memTotalMiB !== undefined && spec.memoryMiB > host.memTotalMiB) {
    throw new VigilError(
      "VIGIL_INVALID_SPEC",
      `${context}: ${q("memoryMiB")} ${spec.memoryMiB} is more than this host's memory (at most ${host.memTotalMiB} MiB)`,
      { field: "memoryMiB" },
    );
  }
}

/** What an owner holds now (without the VM being created or started). */
export interface OwnerUsage {
  vms: number;
  /** Memory of its live VMs, MiB. */
  memoryMiB: number;
  diskMiB: number;
}

/** Disk size a spec counts for against a quota: blank and grown disks by their size. */
export function specDiskMiB(spec: { disks: ReadonlyArray<{ sizeMiB?: number | undefined }> }): number {
  return spec.disks.reduce((sum, d) => sum + (d.sizeMiB ?? 0), 0);
}

function refuse(context: string, owner: string, what: string, field: string, used: number, adding: number, limit: number, unit: string): never {
  throw new VigilError("VIGIL_POLICY_DENIED", `${context}: owner ${q(owner)} would exceed its ${what} quota ${q(field)} (${used}${unit} in use + ${adding}${unit} > ${limit}${unit})`, { field });
}

/** Refuses a new VM that would take `owner` past its VM-count or disk quota. */
export function checkCreateQuota(context: string, owner: string, usage: OwnerUsage, limits: QuotaLimits, spec: { disks: ReadonlyArray<{ sizeMiB?: number | undefined }> }): void {
  if (limits.vms !== undefined && usage.vms + 1 > limits.vms) refuse(context, owner, "VM count", "quotas.vms", usage.vms, 1, limits.vms, "");
  const disk = specDiskMiB(spec);
  if (limits.diskMiB !== undefined && usage.diskMiB + disk > limits.diskMiB) refuse(context, owner, "disk", "quotas.diskMiB", usage.diskMiB, disk, limits.diskMiB, " MiB");
}

/**
 * Refuses a start that would take `owner` past its memory quota, or the host past its memory: the sum of every
 * live VM's memory (`hostLiveMiB`, all owners) plus this one must fit in MemTotal.
 */
export function checkStartQuota(context: string, owner: string, usage: OwnerUsage, limits: QuotaLimits, memoryMiB: number, hostLiveMiB: number, host: HostFacts): void {
  if (limits.memoryMiB !== undefined && usage.memoryMiB + memoryMiB > limits.memoryMiB) refuse(context, owner, "memory", "quotas.memoryMiB", usage.memoryMiB, memoryMiB, limits.memoryMiB, " MiB");
  if (host.memTotalMiB !== undefined && hostLiveMiB + memoryMiB > host.memTotalMiB) {
    throw new VigilError("VIGIL_POLICY_DENIED", `${context}: the host's memory is taken: running VMs use ${hostLiveMiB} MiB, this one needs ${memoryMiB} MiB, the host has ${host.memTotalMiB} MiB`, { field: "memoryMiB" });
  }
}
