/**
 * Limits a VM spec must respect on the host that runs it. The spec schema is pure and host-independent; these
 * checks need host facts (how much memory the host has), so they run where a VM is created or started — on
 * the host that will run it, which may not be the host it was created on.
 */
import { readFileSync } from "node:fs";
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
