/**
 * Time travel over a recording (docs/recording.md, "Bisect"): "when did the rootkit land?". The introspection
 * checks (src/introspection) run on a replica's RAM at points of the replay. A replay only moves forward, so the
 * search is two passes of evenly spaced probes rather than a binary search: the first over the whole recording
 * finds the interval in which the check first reports; the second, in a fresh replica, probes inside that interval.
 * With N probes a pass, the window is 1/N² of the recording, from 2 replays.
 *
 * The baseline is the replica's own, taken at the first probe where the guest's kernel can be modelled (early in
 * boot it cannot): the search then finds the first point where the check differs from that baseline.
 */
import { VigilError, messageOf, q } from "../errors.ts";
import { FilePhysicalMemory, parseMtreeFlat, ramRegionsFromMtree } from "../introspection/physical-memory.ts";
import { parseControlRegisters } from "../introspection/page-walk.ts";
import { buildKernelModel, type KernelModelCache } from "../introspection/kernel-model.ts";
import { sweep, takeBaseline, type Baseline, type CheckId, type Finding } from "../introspection/sweep.ts";
import { openGuestRam } from "../host/guest-ram.ts";

/** The checks a bisect can look for (the sweep's integrity checks; cross-view checks need the guest's agent). */
export const BISECT_CHECKS: readonly CheckId[] = ["syscall-table", "syscall-text", "kernel-text", "kernel-rodata", "idt-base", "idt-gate", "cr0-wp", "cr4-smep", "cr4-smap", "page-permissions", "hidden-module", "hidden-process", "kernel-taint", "module-loaded", "module-untrusted"];
export const MAX_PROBES = 64;

/** What bisect needs of a replica (replica.ts): tests give a fake. */
export interface ProbeTarget {
  readonly pid: number;
  readonly ramBytes: number;
  qmp: { hmp(cmd: string): Promise<string> };
  runTo(icount: number, timeoutMs: number): Promise<number>;
  serial(): Buffer;
  close(): Promise<void>;
}

export interface BisectOptions {
  recording: string;
  check: string;
  probes: number;
  end: number;
  timeoutMs: number;
  launch: () => Promise<ProbeTarget>;
  /** Reads the checks at the replica's current point; default: the real sweep over its RAM. */
  inspect?: (t: ProbeTarget, baseline: Baseline | undefined) => Promise<Inspection>;
}

export interface Inspection {
  baseline: Baseline | undefined;
  findings: Finding[];
}

export interface BisectResult {
  recording: string;
  check: string;
  found: boolean;
  /** The instructions between the last probe where the check was quiet and the first where it reported. */
  window: { from: number; to: number } | null;
  baselineAt: number | null;
  finding: Finding | null;
  /** The guest's serial output written in the window, with some context before it. */
  serial: { before: string; during: string } | null;
  probes: { icount: number; reported: boolean | null }[];
  replays: number;
}

const SERIAL_CONTEXT = 400;

/** The real inspection: RAM through the memfd, registers and RAM layout through the replica's monitor. */
export function sweepInspector(cache: KernelModelCache = new Map()) {
  return async (t: ProbeTarget, baseline: Baseline | undefined): Promise<Inspection> => {
    const ranges = parseMtreeFlat(await t.qmp.hmp("info mtree -f"));
    const regions = ramRegionsFromMtree(ranges, ranges.some((r) => r.name === "ram0") ? "ram0" : undefined);
    const mem = FilePhysicalMemory.fromFd(openGuestRam(t.pid, t.ramBytes), regions, { maxCachedPages: 4096 }, `the RAM of replica ${t.pid}`);
    try {
      const regs = parseControlRegisters(await t.qmp.hmp("info registers -a"));
      const cpu0 = regs[0];
      if (!cpu0) throw new VigilError("VIGIL_INTROSPECTION", "the replica reported no vCPU registers");
      const model = buildKernelModel(mem, { cr3: cpu0.cr3, cr4: cpu0.cr4, cache });
      const input = { model, phys: mem, regs };
      const b = baseline ?? takeBaseline(input);
      return { baseline: b, findings: baseline ? [...sweep(input, b).report.findings] : [] };
    } finally {
      mem.close?.();
    }
  };
}

export function checkBisectOptions(check: string, probes: number): void {
  if (!BISECT_CHECKS.includes(check as CheckId)) throw new VigilError("VIGIL_BAD_REQUEST", `check: ${q(check)} is not one bisect can run; one of ${BISECT_CHECKS.join(", ")}`, { field: "check" });
  if (!Number.isInteger(probes) || probes < 2 || probes > MAX_PROBES) throw new VigilError("VIGIL_BAD_REQUEST", `probes: between 2 and ${MAX_PROBES}`, { field: "probes" });
}

export async function bisectCheck(o: BisectOptions): Promise<BisectResult> {
  checkBisectOptions(o.check, o.probes);
  const inspect = o.inspect ?? sweepInspector();
  const probes: BisectResult["probes"] = [];
  const reports = (f: Finding[]) => f.find((x) => x.check === o.check);

  /** One pass from a fresh replica: baseline at `from` (or the first modellable probe), probes up to `to`. */
  const pass = async (from: number, to: number, baselineAtStart: boolean) => {
    const t = await o.launch();
    try {
      let baseline: Baseline | undefined;
      let baselineAt: number | null = null;
      let lastQuiet: { icount: number; serial: number } | null = null;
      const step = Math.max(1, Math.floor((to - from) / o.probes));
      const points: number[] = [];
      if (baselineAtStart) points.push(from);
      for (let p = from + step; p < to; p += step) points.push(p);
      points.push(to);
      for (const p of points) {
        const at = await t.runTo(p, o.timeoutMs);
        let r: Inspection;
        try {
          r = await inspect(t, baseline);
        } catch (err) {
          // Early in boot there is no kernel to model yet: not a result, the next probe tries again.
          if (!baseline) {
            probes.push({ icount: at, reported: null });
            continue;
          }
          throw new VigilError("VIGIL_INTROSPECTION", `The checks failed on the replica at instruction ${at}: ${messageOf(err)}`);
        }
        if (!baseline) {
          baseline = r.baseline;
          baselineAt = at;
          probes.push({ icount: at, reported: false });
          lastQuiet = { icount: at, serial: t.serial().length };
          continue;
        }
        const hit = reports(r.findings);
        probes.push({ icount: at, reported: !!hit });
        if (hit) return { hit, at, lastQuiet, baselineAt, serialNow: t.serial() };
        lastQuiet = { icount: at, serial: t.serial().length };
      }
      return { hit: undefined, at: to, lastQuiet, baselineAt, serialNow: t.serial() };
    } finally {
      await t.close();
    }
  };

  const first = await pass(0, o.end, false);
  if (first.baselineAt === null) throw new VigilError("VIGIL_INTROSPECTION", `Recording ${q(o.recording)}: the guest's kernel could not be modelled at any probe (no kernel booted?)`);
  if (!first.hit || !first.lastQuiet) return { recording: o.recording, check: o.check, found: false, window: null, baselineAt: first.baselineAt, finding: null, serial: null, probes, replays: 1 };
  // Second pass: a fresh replica, baselined at the last quiet probe, probing inside the interval.
  const second = await pass(first.lastQuiet.icount, first.at, true);
  const hit = second.hit ?? first.hit;
  const from = second.hit && second.lastQuiet ? second.lastQuiet.icount : first.lastQuiet.icount;
  const to = second.hit ? second.at : first.at;
  const serial = second.hit && second.lastQuiet ? second.serialNow : first.serialNow;
  const quietBytes = second.hit && second.lastQuiet ? second.lastQuiet.serial : first.lastQuiet.serial;
  return {
    recording: o.recording, check: o.check, found: true, window: { from, to }, baselineAt: first.baselineAt, finding: hit, probes, replays: 2,
    serial: { before: serial.subarray(Math.max(0, quietBytes - SERIAL_CONTEXT), quietBytes).toString("utf8"), during: serial.subarray(quietBytes).toString("utf8") },
  };
}
