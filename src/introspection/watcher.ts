/**
 * One guest under watch: the kernel model, the per-boot baseline and the incremental sweep state of a single
 * running VM, and the step the IDS repeats — take the guest's own view (between two sweeps, so the lie detector
 * can bracket it), read the registers, sweep, and tell new findings from ones already reported.
 *
 * What it needs from the VM comes through `GuestAccess` (QMP and the guest agent in production, a synthetic
 * kernel in unit tests), so the containment rules hold for both: whatever guest memory holds, a sweep ends in a
 * report or in a finding that says why there is none; it never throws because of the guest. Only failures to
 * reach the VM at all (QMP gone: the VM exited) escape.
 */
import { IntrospectionError, hex } from "./errors.ts";
import { buildKernelModel, type KernelModel, type KernelModelCache } from "./kernel-model.ts";
import type { ControlRegisters } from "./page-walk.ts";
import type { PhysicalMemory } from "./physical-memory.ts";
import { sweep, takeBaseline, type Baseline, type Evidence, type Finding, type GuestProcess, type Severity, type SweepOptions, type SweepReport, type SweepState } from "./sweep.ts";
import { Mutex } from "../util/mutex.ts";

/** What a watch needs from a live VM. */
export interface GuestAccess {
  /** Opens the guest's RAM read-only (called once per watcher). */
  openMemory(): Promise<PhysicalMemory>;
  /** Every vCPU's control registers, now. */
  registers(): Promise<ControlRegisters[]>;
  /** What the guest itself says (its agent's `ps` and /proc/modules); undefined when it cannot tell now. */
  guestView(): Promise<GuestView | undefined>;
}

export interface GuestView {
  processes: GuestProcess[];
  /** undefined when the guest's module list could not be read completely (then it is not compared). */
  modules: string[] | undefined;
}

/** Where a watcher's baseline came from. */
export type BaselineSource =
  /** taken once the guest agent first answered after QEMU booted the guest */
  | "start"
  /** QEMU resumed a saved memory state of a boot baselined before: that boot's baseline, kept with the VM */
  | "restored"
  /** QEMU resumed a saved memory state of a boot never baselined here: taken from that state, trusted less */
  | "restored-untrusted"
  /** taken after the guest rebooted inside the same QEMU (QMP RESET) */
  | "reset"
  /** taken when first asked for, on a VM without a guest agent */
  | "on-demand"
  /** the one taken for this very QEMU process before vigil restarted, read back from the inventory */
  | "stored"
  /** a new one taken after a restart because the stored one no longer matched the running kernel */
  | "reattach";

export interface BaselineInfo {
  readonly baseline: Baseline;
  readonly source: BaselineSource;
  readonly takenAt: string;
}

export interface EstablishResult extends BaselineInfo {
  /** A stored baseline was offered but describes another kernel (or another boot): a finding to report. */
  readonly mismatch: Finding | undefined;
  readonly modelMs: number;
  readonly baselineMs: number;
  readonly modelFromCache: boolean;
}

export interface SweepOutcome {
  /** This watcher's sweep number (1, 2, ... per baseline). */
  readonly sweep: number;
  /** Undefined when the sweep could not run to the end (see `error`). */
  readonly report: SweepReport | undefined;
  /** Every finding of this sweep (the report's, or the one explaining why there is no report). */
  readonly findings: Finding[];
  /** Alarms not reported by the previous sweeps (only when the sweep is tracked). */
  readonly fresh: Finding[];
  /** Active alarms whose detail or severity changed in this sweep (only when tracked). */
  readonly changed: Finding[];
  /** Alarms this sweep cleared (only when tracked). */
  readonly cleared: Finding[];
  /** Alarms present now, after the tracker's hysteresis. */
  readonly active: Finding[];
  readonly guestView: { processes: number; modules: number | null } | null;
  readonly error: string | undefined;
  readonly durationMs: number;
}

export interface WatcherOptions {
  /** Kernel models by build id, shared by every watcher of the service. */
  cache: KernelModelCache;
  sweep?: SweepOptions;
  /** Sweeps a finding must be absent before it counts as gone (and would be new again). Default 3. */
  clearAfter?: number;
  /** Called for errors that are bugs, not guest behaviour (logged by the service). */
  onBug?: (err: unknown) => void;
}

/** Findings that are alarms: all but severity "info". */
export const isAlarm = (f: Finding): boolean => f.severity !== "info";

const KEY_FIELDS = ["address", "vector", "pid", "module", "cpu", "structure", "disagreement", "page", "function", "region", "problem", "reason", "flag"] as const;

/** What identifies "the same finding" from one sweep to the next: the check and where it points. */
export function findingKey(f: Finding): string {
  const parts: string[] = [f.check];
  for (const k of KEY_FIELDS) {
    const v = f.evidence[k];
    if (typeof v === "string" || typeof v === "number" || typeof v === "boolean") parts.push(`${k}=${String(v)}`);
  }
  // Findings without any locating evidence (rare) fall back to their message.
  if (parts.length === 1) parts.push(f.message.slice(0, 200));
  return parts.join("|");
}

/** One change in an alarm's life. */
export interface AlarmChange {
  readonly sweep: number;
  readonly at: string;
  /** raised: first seen (or seen again after it was cleared); changed: its detail or severity changed; cleared: absent for clearAfter sweeps */
  readonly change: "raised" | "changed" | "cleared";
  readonly severity: Severity;
  readonly message: string;
  /** What changed ("severity high → critical", "message", "evidence"); changes only. */
  readonly what?: string[];
}

/** An alarm and its history, as `vigil findings` shows it. */
export interface Alarm {
  readonly key: string;
  state: "active" | "cleared";
  /** The latest version of the finding (for a cleared alarm: the last one seen). */
  finding: Finding;
  firstSweep: number;
  lastSeenSweep: number;
  raisedAt: string;
  clearedAt: string | null;
  /** Oldest first; the first entry is always the first raise, then at most MAX_HISTORY - 1 of the newest. */
  history: AlarmChange[];
  /** Changes left out of `history` (between the first and the kept newest ones). */
  omittedChanges: number;
}

/** What one tracked sweep changed. */
export interface TrackerUpdate {
  /** Alarms raised now: never seen, or seen again after they were cleared. */
  fresh: Finding[];
  /** Active alarms whose severity, message or evidence changed. */
  changed: Finding[];
  /** Alarms that were cleared by this sweep (their last version). */
  cleared: Finding[];
  /** Alarms present now, after the hysteresis. */
  active: Finding[];
}

const MAX_HISTORY = 32;
const MAX_CLEARED = 200;

function stableJson(v: unknown): string {
  return JSON.stringify(v, (_k, x: unknown) => (typeof x === "bigint" ? x.toString(16) : x && typeof x === "object" && !Array.isArray(x) ? Object.fromEntries(Object.entries(x as Record<string, unknown>).sort(([p], [q]) => (p < q ? -1 : 1))) : x));
}

/** What differs between two versions of one alarm. */
function differences(a: Finding, b: Finding): string[] {
  const out: string[] = [];
  if (a.severity !== b.severity) out.push(`severity ${a.severity} → ${b.severity}`);
  if (a.message !== b.message) out.push("message");
  if (stableJson(boundEvidence(a.evidence)) !== stableJson(boundEvidence(b.evidence))) out.push("evidence");
  return out;
}

/**
 * Remembers the alarms of a watch: each is reported when raised, every change while it stays active (a new
 * detail, another severity) is recorded, and an alarm absent for `clearAfter` consecutive sweeps is CLEARED —
 * kept (with its history) among the cleared ones, raised again if it comes back. Bounded: at most `max` active
 * alarms, MAX_CLEARED cleared ones, MAX_HISTORY changes each.
 */
export class FindingTracker {
  private readonly alarms = new Map<string, Alarm & { missing: number }>();
  private sweepNo = 0;
  constructor(
    private readonly clearAfter = 3,
    private readonly max = 1000,
  ) {}

  update(findings: readonly Finding[], sweep?: number): TrackerUpdate {
    this.sweepNo = sweep ?? this.sweepNo + 1;
    const at = new Date().toISOString();
    const out: TrackerUpdate = { fresh: [], changed: [], cleared: [], active: [] };
    const now = new Set<string>();
    const push = (a: Alarm, c: AlarmChange): void => {
      a.history.push(c);
      if (a.history.length > MAX_HISTORY) {
        a.history.splice(1, 1);
        a.omittedChanges++;
      }
    };
    for (const f of findings) {
      if (!isAlarm(f)) continue;
      const key = findingKey(f);
      if (now.has(key)) continue;
      now.add(key);
      const had = this.alarms.get(key);
      if (had && had.state === "active") {
        const what = differences(had.finding, f);
        had.finding = f;
        had.missing = 0;
        had.lastSeenSweep = this.sweepNo;
        if (what.length > 0) {
          push(had, { sweep: this.sweepNo, at, change: "changed", severity: f.severity, message: f.message, what });
          out.changed.push(f);
        }
      } else if (had) {
        // Cleared before, back now: raised again, on the same alarm (its history shows both).
        had.state = "active";
        had.finding = f;
        had.missing = 0;
        had.lastSeenSweep = this.sweepNo;
        had.clearedAt = null;
        push(had, { sweep: this.sweepNo, at, change: "raised", severity: f.severity, message: f.message });
        out.fresh.push(f);
      } else if (this.activeCount() < this.max) {
        this.alarms.set(key, { key, state: "active", finding: f, firstSweep: this.sweepNo, lastSeenSweep: this.sweepNo, raisedAt: at, clearedAt: null, history: [{ sweep: this.sweepNo, at, change: "raised", severity: f.severity, message: f.message }], omittedChanges: 0, missing: 0 });
        out.fresh.push(f);
      }
    }
    for (const [key, a] of this.alarms) {
      if (now.has(key) || a.state !== "active") continue;
      if (++a.missing >= this.clearAfter) {
        a.state = "cleared";
        a.clearedAt = at;
        push(a, { sweep: this.sweepNo, at, change: "cleared", severity: a.finding.severity, message: a.finding.message });
        out.cleared.push(a.finding);
      }
    }
    // Forget the oldest cleared alarms beyond the cap (Map order: insertion, so the oldest first).
    let cleared = [...this.alarms.values()].filter((a) => a.state === "cleared").length;
    for (const [key, a] of this.alarms) {
      if (cleared <= MAX_CLEARED) break;
      if (a.state === "cleared") {
        this.alarms.delete(key);
        cleared--;
      }
    }
    out.active = this.active();
    return out;
  }

  private activeCount(): number {
    let n = 0;
    for (const a of this.alarms.values()) if (a.state === "active") n++;
    return n;
  }

  /** Alarms still considered present (seen in the latest sweep or missing for fewer than clearAfter sweeps). */
  active(): Finding[] {
    return [...this.alarms.values()].filter((a) => a.state === "active").map((a) => a.finding);
  }

  /** Every alarm remembered, active first, each with its history (copies). */
  list(): Alarm[] {
    const all = [...this.alarms.values()].map(({ missing: _missing, ...a }) => ({ ...a, history: [...a.history] }));
    return [...all.filter((a) => a.state === "active"), ...all.filter((a) => a.state === "cleared").reverse()];
  }

  reset(): void {
    this.alarms.clear();
    this.sweepNo = 0;
  }
}

/** The finding that stands in for a sweep that could not complete: a guest must not blind the IDS silently. */
export function errorFinding(err: unknown, what: string): Finding {
  if (err instanceof IntrospectionError) {
    const check = err.reason === "host-input" || err.reason === "unsupported" ? "model-disagreement" : "structure-unreadable";
    return { check, severity: "high", message: `${what} failed: ${err.message}`, evidence: { reason: err.reason } };
  }
  return { check: "structure-unreadable", severity: "high", message: `${what} failed unexpectedly (an engine bug, or guest memory it cannot cope with): ${err instanceof Error ? err.message : String(err)}`, evidence: { reason: "internal" } };
}

/** Evidence cut to a size an audit record can carry: short strings, short arrays, shallow objects. */
export function boundEvidence(e: Evidence, depth = 0): Evidence {
  const out: Evidence = {};
  let n = 0;
  for (const [k, v] of Object.entries(e)) {
    if (++n > 32) {
      out.omittedFields = Object.keys(e).length - 32;
      break;
    }
    out[k] = boundValue(v, depth);
  }
  return out;
}

function boundValue(v: unknown, depth: number): unknown {
  if (typeof v === "string") return v.length > 512 ? `${v.slice(0, 512)}…` : v;
  if (typeof v === "number" || typeof v === "boolean" || v === null) return v;
  if (typeof v === "bigint") return hex(v);
  if (Array.isArray(v)) {
    const head = v.slice(0, 16).map((x) => (depth < 2 ? boundValue(x, depth + 1) : "…"));
    return v.length > 16 ? [...head, `… ${v.length - 16} more`] : head;
  }
  if (typeof v === "object" && v !== undefined) return depth < 2 ? boundEvidence(v as Evidence, depth + 1) : "…";
  return undefined;
}

/** Module names from /proc/modules text (first word of each line); undefined when a line is not a module line. */
export function parseProcModules(text: string, maxModules = 8192): string[] | undefined {
  const names: string[] = [];
  for (const line of text.split("\n", maxModules + 2)) {
    if (line === "") continue;
    const name = line.split(" ", 1)[0] ?? "";
    if (!/^[A-Za-z0-9_-]{1,64}$/.test(name)) return undefined;
    names.push(name);
  }
  return names.length > maxModules ? undefined : names;
}

const ms = (t0: number): number => Math.round((performance.now() - t0) * 1000) / 1000;

/**
 * The model, baseline and sweep state of one VM for one boot. All work on the guest runs under one lock, so
 * a one-off sweep and a watch's sweeps interleave correctly (the guest view must be taken between two sweeps).
 */
export class VmWatcher {
  private mem: PhysicalMemory | undefined;
  private model: KernelModel | undefined;
  private info: BaselineInfo | undefined;
  private state: SweepState | undefined;
  private count = 0;
  private generation = 0;
  private closed = false;
  private readonly lock = new Mutex();
  readonly tracker: FindingTracker;
  /** The latest complete report (one-off or watch). */
  lastReport: SweepReport | undefined;

  constructor(
    private readonly access: GuestAccess,
    private readonly options: WatcherOptions,
  ) {
    this.tracker = new FindingTracker(options.clearAfter ?? 3);
  }

  /** Whether a baseline is in place and sweeps can run. */
  get ready(): boolean {
    return this.info !== undefined && this.model !== undefined && !this.closed;
  }

  get baselineInfo(): BaselineInfo | undefined {
    return this.info;
  }

  /** Sweeps done since the baseline. */
  get sweeps(): number {
    return this.count;
  }

  get kernel(): KernelModel | undefined {
    return this.model;
  }

  /** Forgets the baseline (the guest rebooted): no sweeps until `establish` runs again; one running now is void. */
  invalidate(): void {
    this.generation++;
    this.clear();
  }

  private clear(): void {
    this.info = undefined;
    this.model = undefined;
    this.state = undefined;
  }

  /**
   * Builds the kernel model (from the cache when this build was seen before) and takes a baseline now — or
   * adopts `stored` when it describes exactly the kernel that runs (same release, build id and KASLR shift).
   * Throws IntrospectionError when the guest's kernel cannot be modelled.
   */
  establish(source: BaselineSource, stored?: BaselineInfo, candidates: readonly BaselineInfo[] = []): Promise<EstablishResult> {
    const generation = this.generation;
    const superseded = (): IntrospectionError => new IntrospectionError("host-input", "Cannot take a baseline: the guest was reset (or the watcher closed) meanwhile");
    return this.lock.run(async () => {
      if (this.closed || generation !== this.generation) throw superseded();
      this.mem ??= await this.access.openMemory();
      const regs = await this.access.registers();
      const cpu0 = regs[0];
      if (!cpu0) throw new IntrospectionError("host-input", "Cannot take a baseline: QEMU reported no vCPU registers");
      const mem = this.mem;
      const hint = this.model?.vmcoreinfoAt;
      this.clear();
      if (generation !== this.generation) throw superseded();
      let t = performance.now();
      const model = buildKernelModel(mem, { cr3: cpu0.cr3, cr4: cpu0.cr4, cache: this.options.cache, ...(hint !== undefined ? { vmcoreinfoHint: hint } : {}) });
      const modelMs = ms(t);
      let mismatch: Finding | undefined;
      let info: BaselineInfo | undefined;
      if (stored) {
        const b: unknown = stored.baseline;
        const k = kernelOf(b);
        const sameKernel = describesKernel(b, model);
        let unusable: string | undefined;
        if (sameKernel) {
          unusable = usable(() => sweep({ model, phys: mem, regs }, stored.baseline, undefined, this.options.sweep));
          if (unusable === undefined) info = { baseline: stored.baseline, source: "stored", takenAt: stored.takenAt };
        }
        if (unusable !== undefined) {
          mismatch = { check: "baseline-mismatch", severity: "high", message: `The stored baseline of this boot (taken ${stored.takenAt}) is unusable (${unusable}): a new baseline was taken`, evidence: { reason: "stored-baseline-unusable" } };
        } else if (!sameKernel) {
          mismatch = {
            check: "baseline-mismatch",
            severity: "high",
            message: `The guest now runs ${model.release} (build ${model.buildId ?? "unknown"}, KASLR shift ${hex(model.kaslrShift)}), not the kernel baselined at ${stored.takenAt}: it rebooted or was replaced while vigil was not watching; a new baseline was taken`,
            evidence: { expected: k ? `${k.release} ${k.buildId ?? "?"} ${k.kaslrShift}` : "unknown", found: `${model.release} ${model.buildId ?? "?"} ${hex(model.kaslrShift)}` },
          };
        }
      }
      // A resumed memory state: the baseline of the boot it was saved from, when it is kept and still fits.
      for (const c of stored ? [] : candidates) {
        if (info || !describesKernel(c.baseline, model)) continue;
        if (usable(() => sweep({ model, phys: mem, regs }, c.baseline, undefined, this.options.sweep)) === undefined) info = { baseline: c.baseline, source: "restored", takenAt: c.takenAt };
      }
      t = performance.now();
      info ??= { baseline: takeBaseline({ model, phys: mem, regs }), source: stored ? "reattach" : source, takenAt: new Date().toISOString() };
      const baselineMs = info.source === "stored" || info.source === "restored" ? 0 : ms(t);
      if (this.closed || generation !== this.generation) throw superseded();
      this.model = model;
      this.info = info;
      this.state = undefined;
      this.count = 0;
      this.tracker.reset();
      this.lastReport = undefined;
      return { ...info, mismatch, modelMs, baselineMs, modelFromCache: model.fromCache };
    });
  }

  /**
   * One sweep. With `guestView`, the guest's own view is taken first (after the previous sweep ended, as the lie
   * detector needs). With `track`, new alarms are told apart from reported ones (the watch's sweeps; one-off
   * sweeps leave the tracker alone so the watch still reports what they saw). Guest-caused failures become a
   * finding; an error escapes only when the VM cannot be reached (QMP gone) or there is no baseline.
   */
  runSweep(opts: { guestView: boolean; track: boolean; carve?: boolean; noNewModules?: boolean }): Promise<SweepOutcome> {
    const generation = this.generation;
    return this.lock.run(async () => {
      const model = this.model;
      const info = this.info;
      const mem = this.mem;
      if (!model || !info || !mem || this.closed) throw new IntrospectionError("host-input", "Cannot sweep: there is no baseline for this boot yet");
      const t0 = performance.now();
      let view: GuestView | undefined;
      if (opts.guestView) {
        try {
          view = await this.access.guestView();
        } catch {
          view = undefined; // the agent is busy, restarting or lying about its shape: sweep without its view
        }
      }
      const regs = await this.access.registers();
      if (generation !== this.generation || this.closed) {
        // The guest was reset while its view or registers were being read: this boot's baseline no longer
        // describes the kernel in memory, and comparing them would only produce noise.
        return { sweep: this.count, report: undefined, findings: [], fresh: [], changed: [], cleared: [], active: this.tracker.active(), guestView: null, error: "the guest was reset during the sweep", durationMs: ms(t0) };
      }
      const n = ++this.count;
      let report: SweepReport | undefined;
      let findings: Finding[];
      let error: string | undefined;
      try {
        const input = { model, phys: mem, regs, ...(view ? { guestProcesses: view.processes } : {}), ...(view?.modules ? { guestModules: view.modules } : {}) };
        const r = sweep(input, info.baseline, this.state, { ...this.options.sweep, ...(opts.carve ? { carve: true } : {}), ...(opts.noNewModules ? { noNewModules: true } : {}) });
        this.state = r.state;
        report = r.report;
        findings = r.report.findings;
        this.lastReport = report;
      } catch (err) {
        if (!(err instanceof IntrospectionError)) this.options.onBug?.(err);
        // Start over with a fresh state: whatever made this sweep fail must not make every later one fail.
        this.state = undefined;
        const f = errorFinding(err, `Sweep ${n}`);
        findings = [f];
        error = f.message;
      }
      const tracked = opts.track ? this.tracker.update(findings, n) : { fresh: [], changed: [], cleared: [], active: this.tracker.active() };
      return {
        sweep: n,
        report,
        findings,
        fresh: tracked.fresh,
        changed: tracked.changed,
        cleared: tracked.cleared,
        active: tracked.active,
        guestView: view ? { processes: view.processes.length, modules: view.modules?.length ?? null } : null,
        error,
        durationMs: ms(t0),
      };
    });
  }

  /** Releases the RAM file descriptor; later sweeps fail. */
  close(): void {
    this.closed = true;
    this.invalidate();
    this.mem?.close();
    this.mem = undefined;
  }
}

function kernelOf(b: unknown): Baseline["kernel"] | undefined {
  return typeof b === "object" && b !== null ? ((b as { kernel?: unknown }).kernel as Baseline["kernel"] | undefined) : undefined;
}

/** Whether a baseline (read back from storage: unchecked) is of exactly this kernel: release, build id, KASLR shift. */
export function describesKernel(b: unknown, model: KernelModel): boolean {
  const k = kernelOf(b);
  return typeof k === "object" && k !== null && k.release === model.release && (k.buildId ?? undefined) === model.buildId && k.kaslrShift === hex(model.kaslrShift);
}

/** Runs a dry sweep against a baseline from outside this process: undefined when it holds, else why not. */
function usable(dry: () => unknown): string | undefined {
  try {
    dry();
    return undefined;
  } catch (err) {
    if (!(err instanceof IntrospectionError)) throw err;
    return err.message;
  }
}
