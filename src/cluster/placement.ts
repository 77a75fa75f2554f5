/**
 * Placement, balancing and consolidation (docs/cluster.md "Placement"): pure functions over host capacity
 * (`HostLoad`) and VM demands. Nothing here talks to a host; the manager feeds in what the agents reported and
 * acts on the plans. What must hold, for every input: no plan leaves a host above its memory limit
 * (usable = total − reserved, times `maxMemoryLoad`) or its vCPU limit (cpus × `vcpuRatio`); pinned VMs and the
 * VMs of hosts that are not ready never move; a balance move always lowers the spread of memory load; the moves of
 * a consolidation plan fit all at once. Every decision carries a sentence a person can check.
 */
import { VigilError, listWords, q } from "../errors.ts";
import type { HostLoad } from "./types.ts";

/** What a VM needs from a host. */
export interface VmDemand {
  memoryMiB: number;
  vcpus: number;
}

/** Limits every plan respects. */
export interface CapacityOptions {
  /** vCPUs committed per physical CPU at most (default 4). */
  vcpuRatio?: number;
  /** Fraction of usable memory (total − reserved) a host may be filled to (default 1: never overcommitted). */
  maxMemoryLoad?: number;
}

export const DEFAULT_VCPU_RATIO = 4;

/** A host's load as the plans see it (before or after). `load` is used/usable memory (0..1, above 1 overcommitted). */
export interface HostSummary {
  host: string;
  ready: boolean;
  memUsedMiB: number;
  memUsableMiB: number;
  load: number;
  vcpusUsed: number;
  vcpusAllowed: number;
  vms: number;
}

export type Placement =
  | { ok: true; host: string; reasons: string[] }
  | { ok: false; refusals: { host: string; reasons: string[] }[]; message: string };

interface SimVm {
  name: string;
  memoryMiB: number;
  vcpus: number;
  pinned: boolean;
}

interface SimHost {
  name: string;
  ready: boolean;
  usable: number;
  cpus: number;
  memUsed: number;
  vcpusUsed: number;
  vms: SimVm[];
}

interface Limits {
  vcpuRatio: number;
  maxMemoryLoad: number;
}

// ---------------------------------------------------------------------------------------------------------
// Validation: every plan starts here, so a bad report from an agent is an error naming the field, not a plan.

const isCount = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v >= 0;
const isPositiveInt = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v) && v > 0;

function bad(field: string, message: string): VigilError {
  return new VigilError("VIGIL_BAD_REQUEST", message, { field });
}

function limitsOf(opts: CapacityOptions | undefined, field = "options"): Limits {
  const vcpuRatio = opts?.vcpuRatio ?? DEFAULT_VCPU_RATIO;
  const maxMemoryLoad = opts?.maxMemoryLoad ?? 1;
  if (typeof vcpuRatio !== "number" || !Number.isFinite(vcpuRatio) || vcpuRatio <= 0) {
    throw bad(`${field}.vcpuRatio`, `vcpuRatio must be a number above 0 (vCPUs per CPU), not ${q(vcpuRatio)}`);
  }
  if (typeof maxMemoryLoad !== "number" || !Number.isFinite(maxMemoryLoad) || maxMemoryLoad <= 0 || maxMemoryLoad > 1) {
    throw bad(`${field}.maxMemoryLoad`, `maxMemoryLoad must be a fraction above 0 and at most 1, not ${q(maxMemoryLoad)}`);
  }
  return { vcpuRatio, maxMemoryLoad };
}

/** Checks a VM demand; `field` names it in the error. */
export function validateDemand(vm: VmDemand, field = "vm"): void {
  if (typeof vm !== "object" || vm === null) throw bad(field, `${field} must be an object with memoryMiB and vcpus`);
  if (!isPositiveInt(vm.memoryMiB)) throw bad(`${field}.memoryMiB`, `memoryMiB must be a whole number of MiB above 0, not ${q(vm.memoryMiB)}`);
  if (!isPositiveInt(vm.vcpus)) throw bad(`${field}.vcpus`, `vcpus must be a whole number above 0, not ${q(vm.vcpus)}`);
}

/** Checks host loads (names unique, VM names unique across hosts, sizes whole and sane) and copies them. */
function simulate(hosts: readonly HostLoad[]): SimHost[] {
  if (!Array.isArray(hosts as unknown)) throw bad("hosts", "hosts must be a list of host loads");
  const hostNames = new Set<string>();
  const vmNames = new Set<string>();
  return hosts.map((h, i) => {
    const f = `hosts.${i}`;
    if (typeof h?.name !== "string" || h.name === "") throw bad(`${f}.name`, "A host needs a non-empty name");
    if (hostNames.has(h.name)) throw bad(`${f}.name`, `Host ${q(h.name)} is listed twice`);
    hostNames.add(h.name);
    if (!isPositiveInt(h.memTotalMiB)) throw bad(`${f}.memTotalMiB`, `memTotalMiB of host ${q(h.name)} must be a whole number above 0, not ${q(h.memTotalMiB)}`);
    if (!isCount(h.memReservedMiB) || h.memReservedMiB >= h.memTotalMiB) {
      throw bad(`${f}.memReservedMiB`, `memReservedMiB of host ${q(h.name)} must be a whole number from 0 to below memTotalMiB (${h.memTotalMiB}), not ${q(h.memReservedMiB)}`);
    }
    if (!isPositiveInt(h.cpus)) throw bad(`${f}.cpus`, `cpus of host ${q(h.name)} must be a whole number above 0, not ${q(h.cpus)}`);
    if (typeof h.ready !== "boolean") throw bad(`${f}.ready`, `ready of host ${q(h.name)} must be true or false`);
    if (!Array.isArray(h.vms as unknown)) throw bad(`${f}.vms`, `vms of host ${q(h.name)} must be a list`);
    const vms = h.vms.map((vm, j) => {
      const vf = `${f}.vms.${j}`;
      if (typeof vm?.name !== "string" || vm.name === "") throw bad(`${vf}.name`, `A VM on host ${q(h.name)} needs a non-empty name`);
      if (vmNames.has(vm.name)) throw bad(`${vf}.name`, `VM ${q(vm.name)} is listed on more than one host (or twice)`);
      vmNames.add(vm.name);
      validateDemand(vm, vf);
      if (vm.pinned !== undefined && typeof vm.pinned !== "boolean") throw bad(`${vf}.pinned`, `pinned of VM ${q(vm.name)} must be true or false`);
      return { name: vm.name, memoryMiB: vm.memoryMiB, vcpus: vm.vcpus, pinned: vm.pinned === true };
    });
    return {
      name: h.name,
      ready: h.ready,
      usable: h.memTotalMiB - h.memReservedMiB,
      cpus: h.cpus,
      memUsed: vms.reduce((s, v) => s + v.memoryMiB, 0),
      vcpusUsed: vms.reduce((s, v) => s + v.vcpus, 0),
      vms,
    };
  });
}

// ---------------------------------------------------------------------------------------------------------
// Capacity arithmetic.

const memLimit = (h: SimHost, l: Limits) => Math.floor(h.usable * l.maxMemoryLoad);
const vcpuLimit = (h: SimHost, l: Limits) => Math.floor(h.cpus * l.vcpuRatio);
const freeMem = (h: SimHost, l: Limits) => memLimit(h, l) - h.memUsed;
const loadOf = (h: SimHost) => h.memUsed / h.usable;

function fits(h: SimHost, vm: VmDemand, l: Limits): boolean {
  return h.ready && h.memUsed + vm.memoryMiB <= memLimit(h, l) && h.vcpusUsed + vm.vcpus <= vcpuLimit(h, l);
}

/** Why `vm` does not fit on `h` (empty when it does). */
function whyNot(h: SimHost, vm: VmDemand, l: Limits): string[] {
  const out: string[] = [];
  if (!h.ready) out.push("host is not ready");
  if (h.memUsed + vm.memoryMiB > memLimit(h, l)) {
    out.push(`memory: needs ${vm.memoryMiB} MiB, ${Math.max(0, freeMem(h, l))} MiB free of ${memLimit(h, l)} MiB allowed`);
  }
  if (h.vcpusUsed + vm.vcpus > vcpuLimit(h, l)) {
    out.push(`vCPUs: ${h.vcpusUsed} + ${vm.vcpus} would exceed ${vcpuLimit(h, l)} allowed (${h.cpus} CPUs × ${l.vcpuRatio})`);
  }
  return out;
}

function add(h: SimHost, vm: SimVm): void {
  h.vms.push(vm);
  h.memUsed += vm.memoryMiB;
  h.vcpusUsed += vm.vcpus;
}

function remove(h: SimHost, vm: SimVm): void {
  const i = h.vms.indexOf(vm);
  if (i < 0) return;
  h.vms.splice(i, 1);
  h.memUsed -= vm.memoryMiB;
  h.vcpusUsed -= vm.vcpus;
}

function summary(h: SimHost, l: Limits): HostSummary {
  return {
    host: h.name,
    ready: h.ready,
    memUsedMiB: h.memUsed,
    memUsableMiB: h.usable,
    load: loadOf(h),
    vcpusUsed: h.vcpusUsed,
    vcpusAllowed: vcpuLimit(h, l),
    vms: h.vms.length,
  };
}

const vcpuWord = (n: number) => `${n} ${n === 1 ? "vCPU" : "vCPUs"}`;

/** A load ratio as a percentage for people: 0.625 → "62.5%". */
export function pct(ratio: number): string {
  return `${Math.round(ratio * 1000) / 10}%`;
}

/** A spread (standard deviation of load ratios) in percentage points: 0.0312 → "3.1 points". */
export function points(spread: number): string {
  const n = Math.round(spread * 1000) / 10;
  return `${n} ${n === 1 ? "point" : "points"}`;
}

/** Population standard deviation of the memory load ratios of the given hosts (0 for fewer than two). */
export function spreadOf(loads: readonly number[]): number {
  if (loads.length < 2) return 0;
  const mean = loads.reduce((s, x) => s + x, 0) / loads.length;
  return Math.sqrt(loads.reduce((s, x) => s + (x - mean) ** 2, 0) / loads.length);
}

/** The spread of memory load over the ready hosts of a list of host loads. */
export function memorySpread(hosts: readonly HostLoad[]): number {
  return spreadOf(simulate(hosts).filter((h) => h.ready).map(loadOf));
}

// ---------------------------------------------------------------------------------------------------------
// Initial placement.

/** Orders candidate hosts: most free memory first, then the lower vCPU commitment, then by name. */
function better(a: SimHost, b: SimHost, l: Limits): number {
  return freeMem(b, l) - freeMem(a, l) || a.vcpusUsed / vcpuLimit(a, l) - b.vcpusUsed / vcpuLimit(b, l) || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
}

function choose(sims: SimHost[], vm: VmDemand, l: Limits): Placement {
  const fitting = sims.filter((h) => fits(h, vm, l)).sort((a, b) => better(a, b, l));
  const refusals = sims.filter((h) => !fits(h, vm, l)).map((h) => ({ host: h.name, reasons: whyNot(h, vm, l) }));
  const best = fitting[0];
  if (!best) {
    const detail = refusals.map((r) => `${q(r.host)}: ${r.reasons.join("; ")}`).join(". ");
    return { ok: false, refusals, message: sims.length === 0 ? "No host is known" : `No host fits ${vm.memoryMiB} MiB and ${vcpuWord(vm.vcpus)}. ${detail}` };
  }
  const reasons = [
    `${q(best.name)} has the most free memory of the ${fitting.length === 1 ? "1 host" : `${fitting.length} hosts`} that fit: ${freeMem(best, l)} MiB free of ${memLimit(best, l)} MiB allowed, ${freeMem(best, l) - vm.memoryMiB} MiB after`,
    `vCPUs: ${best.vcpusUsed} + ${vm.vcpus} of ${vcpuLimit(best, l)} allowed (${best.cpus} CPUs × ${l.vcpuRatio})`,
  ];
  const others = fitting.slice(1).map((h) => `${q(h.name)} (${freeMem(h, l)} MiB free)`);
  if (others.length > 0) reasons.push(`also fit: ${others.join(", ")}`);
  for (const r of refusals) reasons.push(`not ${q(r.host)}: ${r.reasons.join("; ")}`);
  return { ok: true, host: best.name, reasons };
}

/**
 * Where a new VM goes: the ready host with the most free memory on which it fits without exceeding the memory
 * or vCPU limit; or, when none fits, every host with why not.
 */
export function placeVm(hosts: readonly HostLoad[], vm: VmDemand, opts?: CapacityOptions): Placement {
  const l = limitsOf(opts);
  validateDemand(vm);
  return choose(simulate(hosts), vm, l);
}

/** placeVm for callers that act on it: the chosen host, or a VIGIL_CONFLICT listing why each host refused. */
export function requirePlacement(hosts: readonly HostLoad[], vm: VmDemand, opts?: CapacityOptions): { host: string; reasons: string[] } {
  const p = placeVm(hosts, vm, opts);
  if (!p.ok) throw new VigilError("VIGIL_CONFLICT", `Cannot place the VM: ${p.message}`);
  return { host: p.host, reasons: p.reasons };
}

// ---------------------------------------------------------------------------------------------------------
// Balancing (DRS-like).

export interface BalanceOptions extends CapacityOptions {
  /** At most this many migrations (default 5). */
  maxMoves?: number;
  /** A move must lower the spread by at least this much (a ratio: 0.01 = 1 point; default 0.01). */
  minGain?: number;
}

export interface BalanceMove {
  vm: string;
  from: string;
  to: string;
  memoryMiB: number;
  vcpus: number;
  spreadBefore: number;
  spreadAfter: number;
  reason: string;
}

export interface BalancePlan {
  moves: BalanceMove[];
  spreadBefore: number;
  spreadAfter: number;
  before: HostSummary[];
  after: HostSummary[];
  /** Why the plan stopped, and what it left alone (pinned VMs, hosts that are not ready). */
  notes: string[];
}

const EPSILON = 1e-12;

/**
 * Migrations that even out memory load: greedily, the single move that lowers the spread (standard deviation of
 * used/usable memory over ready hosts) the most, as long as it lowers it by at least `minGain`, the VM fits on
 * the target, and at most `maxMoves`. Each VM moves at most once; pinned VMs and hosts that are not ready are
 * left alone. Ties go to the smaller VM (the cheaper migration), then by names.
 */
export function recommendBalance(hosts: readonly HostLoad[], opts: BalanceOptions = {}): BalancePlan {
  const l = limitsOf(opts);
  const maxMoves = opts.maxMoves ?? 5;
  const minGain = opts.minGain ?? 0.01;
  if (!isCount(maxMoves)) throw bad("options.maxMoves", `maxMoves must be a whole number from 0, not ${q(maxMoves)}`);
  if (typeof minGain !== "number" || !Number.isFinite(minGain) || minGain < 0) throw bad("options.minGain", `minGain must be a number from 0 (a load ratio), not ${q(minGain)}`);
  const sims = simulate(hosts).sort((a, b) => (a.name < b.name ? -1 : 1));
  const before = sims.map((h) => summary(h, l));
  const ready = sims.filter((h) => h.ready);
  const spread = () => spreadOf(ready.map(loadOf));
  const notes: string[] = [];
  for (const h of sims) if (!h.ready) notes.push(`${q(h.name)} is not ready: its VMs stay and it takes none`);
  const pinned = ready.flatMap((h) => h.vms.filter((v) => v.pinned).map((v) => `${q(v.name)} (on ${q(h.name)})`));
  if (pinned.length > 0) notes.push(`pinned, never moved: ${listWords(pinned, "and")}`);
  const spreadBefore = spread();
  const moved = new Set<string>();
  const moves: BalanceMove[] = [];
  let stop = "";
  while (stop === "") {
    if (ready.length < 2) {
      stop = "fewer than 2 ready hosts: nothing to balance";
      break;
    }
    if (moves.length >= maxMoves) {
      stop = `stopped at the limit of ${maxMoves === 1 ? "1 move" : `${maxMoves} moves`}`;
      break;
    }
    const current = spread();
    let best: { vm: SimVm; from: SimHost; to: SimHost; after: number } | undefined;
    for (const from of ready) {
      for (const vm of [...from.vms].sort((a, b) => (a.name < b.name ? -1 : 1))) {
        if (vm.pinned || moved.has(vm.name)) continue;
        for (const to of ready) {
          if (to === from || !fits(to, vm, l)) continue;
          remove(from, vm);
          add(to, vm);
          const after = spread();
          remove(to, vm);
          add(from, vm);
          const gain = current - after;
          if (gain <= EPSILON || gain < minGain) continue;
          const bestGain = best ? current - best.after : -Infinity;
          if (gain > bestGain + EPSILON || (Math.abs(gain - bestGain) <= EPSILON && best !== undefined && vm.memoryMiB < best.vm.memoryMiB)) {
            best = { vm, from, to, after };
          }
        }
      }
    }
    if (!best) {
      stop = moves.length === 0
        ? `already balanced: no move lowers the spread (${points(current)}) by at least ${points(minGain)}`
        : `no further move lowers the spread by at least ${points(minGain)}`;
      break;
    }
    const { vm, from, to, after } = best;
    const fromBefore = loadOf(from);
    const toBefore = loadOf(to);
    remove(from, vm);
    add(to, vm);
    moved.add(vm.name);
    moves.push({
      vm: vm.name,
      from: from.name,
      to: to.name,
      memoryMiB: vm.memoryMiB,
      vcpus: vm.vcpus,
      spreadBefore: current,
      spreadAfter: after,
      reason: `move ${q(vm.name)} (${vm.memoryMiB} MiB) from ${q(from.name)} (memory ${pct(fromBefore)} → ${pct(loadOf(from))}) to ${q(to.name)} (${pct(toBefore)} → ${pct(loadOf(to))}): spread ${points(current)} → ${points(after)}`,
    });
  }
  notes.push(stop);
  return { moves, spreadBefore, spreadAfter: spread(), before, after: sims.map((h) => summary(h, l)), notes };
}

// ---------------------------------------------------------------------------------------------------------
// Consolidation (DPM-like).

export interface ConsolidateOptions extends CapacityOptions {
  /** Ready hosts that stay powered on whatever the load (default 1). */
  minHosts?: number;
}

export interface EvacuationMove {
  vm: string;
  to: string;
  memoryMiB: number;
  vcpus: number;
}

export interface ConsolidationPlan {
  /** Hosts that can be emptied (and powered down), with where each of their VMs goes. */
  emptied: { host: string; moves: EvacuationMove[]; reason: string }[];
  /** Ready hosts that stay, and why. */
  kept: { host: string; reason: string }[];
  before: HostSummary[];
  after: HostSummary[];
  notes: string[];
}

/**
 * Hosts whose VMs all fit on the other ready hosts, taken least-used first: each VM (largest first) goes where
 * placeVm would put it given the moves already planned, so the whole plan fits at once. A host that receives VMs
 * stays; at least `minHosts` ready hosts stay.
 */
export function recommendConsolidate(hosts: readonly HostLoad[], opts: ConsolidateOptions = {}): ConsolidationPlan {
  const l = limitsOf(opts);
  const minHosts = opts.minHosts ?? 1;
  if (!isPositiveInt(minHosts)) throw bad("options.minHosts", `minHosts must be a whole number above 0, not ${q(minHosts)}`);
  const sims = simulate(hosts).sort((a, b) => (a.name < b.name ? -1 : 1));
  const before = sims.map((h) => summary(h, l));
  const notes: string[] = [];
  for (const h of sims) if (!h.ready) notes.push(`${q(h.name)} is not ready: neither emptied nor given VMs`);
  const candidates = sims.filter((h) => h.ready).sort((a, b) => a.memUsed - b.memUsed || a.vms.length - b.vms.length || (a.name < b.name ? -1 : 1));
  const emptiedSet = new Set<SimHost>();
  const receivedFrom = new Map<SimHost, string[]>();
  const emptied: ConsolidationPlan["emptied"] = [];
  const kept: ConsolidationPlan["kept"] = [];
  for (const c of candidates) {
    const staying = candidates.filter((h) => !emptiedSet.has(h));
    if (staying.length <= minHosts) {
      kept.push({ host: c.name, reason: `kept: at least ${minHosts === 1 ? "1 ready host stays" : `${minHosts} ready hosts stay`} powered on` });
      continue;
    }
    const sources = receivedFrom.get(c);
    if (sources) {
      kept.push({ host: c.name, reason: `kept: receives VMs from ${listWords(sources.map(q), "and")}` });
      continue;
    }
    const pinnedHere = c.vms.filter((v) => v.pinned).map((v) => q(v.name));
    if (pinnedHere.length > 0) {
      kept.push({ host: c.name, reason: `kept: ${listWords(pinnedHere, "and")} ${pinnedHere.length === 1 ? "is" : "are"} pinned here` });
      continue;
    }
    const receivers = staying.filter((h) => h !== c);
    const planned: { vm: SimVm; to: SimHost }[] = [];
    let failure = "";
    for (const vm of [...c.vms].sort((a, b) => b.memoryMiB - a.memoryMiB || (a.name < b.name ? -1 : 1))) {
      const p = choose(receivers, vm, l);
      if (!p.ok) {
        failure = `kept: ${q(vm.name)} (${vm.memoryMiB} MiB, ${vcpuWord(vm.vcpus)}) fits on no other host (${p.refusals.map((r) => `${q(r.host)}: ${r.reasons.join("; ")}`).join(". ")})`;
        break;
      }
      const to = receivers.find((h) => h.name === p.host)!;
      add(to, vm);
      planned.push({ vm, to });
    }
    if (failure !== "") {
      for (const { vm, to } of planned) remove(to, vm);
      kept.push({ host: c.name, reason: failure });
      continue;
    }
    for (const { vm } of planned) remove(c, vm);
    emptiedSet.add(c);
    const targets = [...new Set(planned.map((m) => m.to))];
    for (const t of targets) receivedFrom.set(t, [...(receivedFrom.get(t) ?? []), c.name]);
    const mem = planned.reduce((s, m) => s + m.vm.memoryMiB, 0);
    emptied.push({
      host: c.name,
      moves: planned.map(({ vm, to }) => ({ vm: vm.name, to: to.name, memoryMiB: vm.memoryMiB, vcpus: vm.vcpus })),
      reason: planned.length === 0
        ? "already empty: can be powered down"
        : `${planned.length === 1 ? `its VM (${mem} MiB) fits` : `its ${planned.length} VMs (${mem} MiB) fit`} on ${listWords(targets.map((t) => `${q(t.name)} (memory → ${pct(loadOf(t))})`), "and")}`,
    });
  }
  return { emptied, kept: kept.sort((a, b) => (a.host < b.host ? -1 : 1)), before, after: sims.map((h) => summary(h, l)), notes };
}
