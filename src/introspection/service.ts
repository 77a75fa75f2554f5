/**
 * The IDS as a vigil capability (Livewire's "policy engine" around the sweep engine): for every running VM a
 * watcher with its kernel model and a per-boot baseline, taken automatically once the guest agent first answers
 * after QEMU started (a start, a revert or a restore adopts a new QEMU, so each is a new boot here; a reboot
 * inside QEMU — QMP RESET — is one too). On demand one sweep (`vigil introspect`); continuously, a watch
 * (`vigil watch`): incremental sweeps at an interval, each new finding an audit record by `system` with its
 * evidence, and a containment policy per VM — alert, pause, or snapshot-and-pause.
 *
 * Reading guest memory exposes every secret in the guest: every operation needs `vm.introspect` on the VM.
 * Watch configurations and baselines live in the inventory's `kv` table, so a daemon restart resumes each
 * watch — against the baseline taken for that very QEMU process, not a new one: whatever happened to the guest
 * while vigil was away is still a change from the baseline.
 *
 * The guest is hostile: sweeps are bounded (the engine caps walks and findings), a failed sweep is a finding
 * and the watch goes on, audit records carry bounded evidence, and at most MAX_AUDITED_PER_SWEEP findings per
 * sweep become individual records.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { z } from "zod";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Guard, RequestContext } from "../auth/guard.ts";
import { SYSTEM_ACTOR, can } from "../auth/permissions.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import { openGuestRam } from "../host/guest-ram.ts";
import type { VmRuntime } from "../host/vm-runtime.ts";
import type { Db } from "../inventory/db.ts";
import type { Logger } from "../log.ts";
import type { SnapshotService } from "../storage/snapshots.ts";
import { parseOrThrow } from "../validation.ts";
import type { VmRecord, VmRepository } from "../vm/vm-repository.ts";
import type { VmService } from "../vm/vm-service.ts";
import type { KernelModelCache } from "./kernel-model.ts";
import { parseControlRegisters } from "./page-walk.ts";
import { FilePhysicalMemory, parseMtreeFlat, ramRegionsFromMtree, type PhysicalMemory } from "./physical-memory.ts";
import type { Baseline, Finding, SweepReport } from "./sweep.ts";
import { VmWatcher, boundEvidence, type Alarm, findingKey, isAlarm, parseProcModules, type BaselineInfo, type BaselineSource, type GuestAccess, type GuestView, type SweepOutcome } from "./watcher.ts";
import { guestRamBytes, type Accelerator } from "../qemu/argv.ts";

export const WATCH_POLICIES = ["alert", "pause", "snapshot-and-pause"] as const;
export type WatchPolicy = (typeof WATCH_POLICIES)[number];

export const MIN_INTERVAL_MS = 250;
export const MAX_INTERVAL_MS = 3_600_000;

export const watchRequestSchema = z.strictObject({
  intervalMs: z.number().int().min(MIN_INTERVAL_MS).max(MAX_INTERVAL_MS).default(1000),
  policy: z.enum(WATCH_POLICIES).default("alert"),
  /** Ask the guest for its own view (agent ps, /proc/modules) every Nth sweep: it costs guest CPU (a fork of awk). */
  guestViewEvery: z.number().int().min(1).max(3600).default(1),
  /** "No new modules": any module loaded after the boot's baseline is a high finding (and so contained by the policy). */
  noNewModules: z.boolean().default(false),
});

export const introspectRequestSchema = z.strictObject({
  /** Also carve all of guest RAM for task and module structures (≈ 0.1-0.6 s per 256 MiB). */
  carve: z.boolean().default(false),
});

const storedWatchSchema = z.strictObject({
  intervalMs: z.number().int().min(MIN_INTERVAL_MS).max(MAX_INTERVAL_MS),
  policy: z.enum(WATCH_POLICIES),
  guestViewEvery: z.number().int().min(1).max(3600).default(1),
  noNewModules: z.boolean().default(false),
  startedBy: z.string().max(128),
  startedAt: z.string().max(64),
});
type WatchConfig = z.output<typeof storedWatchSchema>;

/** A stored baseline: for which QEMU process (pid and start time) it was taken. */
const storedBaselineSchema = z.object({
  format: z.literal(1),
  qemu: z.string().max(64),
  source: z.string().max(32),
  takenAt: z.string().max(64),
  baseline: z.unknown(),
});

const archivedBaselineSchema = z.object({ format: z.literal(1), takenAt: z.string().max(64), baseline: z.unknown() });

/** What a watcher of a live VM is doing. */
export type LiveStatus = "waiting-for-agent" | "baselining" | "ready" | "no-baseline" | "error";

export interface WatchStatus {
  vm: string;
  intervalMs: number;
  policy: WatchPolicy;
  guestViewEvery: number;
  noNewModules: boolean;
  startedBy: string;
  startedAt: string;
  /**
   * "watching": sweeping; "armed": the VM is not running (the watch starts with it); "recording": it runs under
   * record and is checked through its recording; otherwise the watcher's status.
   */
  status: "watching" | "armed" | "recording" | LiveStatus;
  sweeps: number;
  lastSweepAt: string | null;
  lastSweepMs: number | null;
  activeFindings: number;
  baseline: { source: BaselineSource; takenAt: string } | null;
  problem: string | null;
}

export interface FindingRecord {
  seq: number;
  time: string;
  sweep: number | null;
  check: string;
  severity: string;
  message: string;
  evidence: Record<string, unknown>;
}

export interface IntrospectReport {
  vm: string;
  sweep: number;
  findings: Finding[];
  processes: SweepReport["processes"];
  modules: SweepReport["modules"];
  kernel: SweepReport["kernel"];
  durationMs: number;
  totalMs: number;
  timings: Record<string, number>;
  coverage: SweepReport["coverage"];
  textPatches: SweepReport["textPatches"];
  carve: SweepReport["carve"] | null;
  baseline: { source: BaselineSource; takenAt: string; notes: string[] };
  guestView: SweepOutcome["guestView"];
}

export interface IntrospectionDeps {
  vms: VmService;
  /** VM records by name without an audited read (the service authorizes `vm.introspect` itself). */
  repo: VmRepository;
  guard: Guard;
  audit: AuditLog;
  snapshots: SnapshotService;
  db: Db;
  log: Logger;
  /** The accelerator this host's QEMUs run under: it decides the size of a guest's RAM memfd (qemu/argv.ts). */
  accel: Accelerator;
  /** Wait this long after the agent's first answer before the baseline (lets `start --wait` answer first). */
  settleMs?: number;
  /** Report a watched guest whose agent has not answered after this much running time (default 3 minutes). */
  agentSilentMs?: number;
}

/** At most this many findings of one sweep become individual audit records; the rest are counted in one. */
const MAX_AUDITED_PER_SWEEP = 20;
/** Guest view requests (agent ps, /proc/modules) time out after this. */
const GUEST_VIEW_TIMEOUT_MS = 5000;
/** A watcher without a baseline (no agent, or the model failed) retries after this, doubling up to the cap. */
const RETRY_BASELINE_MS = 30_000;
const RETRY_BASELINE_MAX_MS = 15 * 60_000;
/** A watched guest whose agent has not answered after this much running time is reported (it has no baseline). */
const AGENT_SILENT_MS = 180_000;
/** A watched VM without agent is first baselined after this much running time (its boot is surely over). */
const NO_AGENT_BOOT_MS = 60_000;
/** How long closing waits for watch steps in flight (a containment snapshot can take seconds). */
const CLOSE_WAIT_MS = 15_000;
/** Baselines of earlier boots kept per VM, for memory states saved during them (a revert resumes one). */
const ARCHIVED_BASELINES = 4;
/** Name of the RAM backend in vigil's QEMU command line (qemu/argv.ts: memory-backend-memfd,id=ram0). */
const RAM_BACKEND = "ram0";

const watchKey = (vmId: string): string => `introspection.watch.${vmId}`;
const baselineKey = (vmId: string): string => `introspection.baseline.${vmId}`;
const archivePrefix = (vmId: string): string => `introspection.archive.${vmId}.`;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms).unref());
const systemCtx = (): RequestContext => ({ actor: SYSTEM_ACTOR, requestId: randomUUID() });

/** Identity of a QEMU process: pid and start time (clock ticks since host boot), so a reused pid is not it. */
function qemuIdentity(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    const start = fields[19]; // field 22 (starttime); fields here start at field 3
    return start && /^\d+$/.test(start) ? `${pid}:${start}` : undefined;
  } catch {
    return undefined;
  }
}

/** How the service reaches one VM: QMP (`info mtree -f`, `info registers -a`) and the guest agent. */
class RuntimeAccess implements GuestAccess {
  constructor(
    private readonly rt: VmRuntime,
    private readonly ramBytes: number,
  ) {}

  /** Guest RAM through QEMU's memfd (`/proc/<pid>/fd/N`, read-only, its size checked against the spec). */
  async openMemory(): Promise<PhysicalMemory> {
    const ranges = parseMtreeFlat(await this.rt.qmp.hmp("info mtree -f"));
    const named = ranges.some((r) => r.name === RAM_BACKEND);
    const regions = ramRegionsFromMtree(ranges, named ? RAM_BACKEND : undefined);
    return FilePhysicalMemory.fromFd(openGuestRam(this.rt.pid, this.ramBytes), regions, { maxCachedPages: 4096 }, `the RAM memfd of QEMU ${this.rt.pid}`);
  }

  async registers() {
    return parseControlRegisters(await this.rt.qmp.hmp("info registers -a"));
  }

  async guestView(): Promise<GuestView | undefined> {
    const agent = await this.rt.agentClient();
    const ps = await agent.ps(GUEST_VIEW_TIMEOUT_MS);
    let modules: string[] | undefined;
    try {
      const r = await agent.exec(["cat", "/proc/modules"], GUEST_VIEW_TIMEOUT_MS);
      if (r.exitCode === 0 && !r.truncated) modules = parseProcModules(Buffer.from(r.stdout, "base64").toString("latin1"));
    } catch {
      modules = undefined; // compared only when read completely
    }
    return { processes: ps.processes, modules };
  }
}

/** One running VM as the IDS sees it. */
interface LiveVm {
  readonly vmId: string;
  vmName: string;
  readonly rt: VmRuntime;
  readonly agent: boolean;
  readonly qemu: string | undefined;
  readonly watcher: VmWatcher;
  status: LiveStatus;
  problem: string | null;
  paused: boolean;
  /** Since when the guest has run without a pause (for a silent agent), undefined while paused. */
  runningSince: number | undefined;
  /** Bumped on every guest reset: preparations of an older boot give up. */
  epoch: number;
  /** What the next baseline will be: of a new QEMU ("start") or of a reboot inside it ("reset"). */
  boot: "start" | "reset";
  gone: boolean;
  loop: { stop(): void; config: WatchConfig } | undefined;
  lastSweepAt: string | null;
  lastSweepMs: number | null;
  lastAttempt: number;
  /** Failed baseline attempts of this boot (the retry interval doubles with each). */
  attempts: number;
  /** This boot's failure to baseline (or a silent agent) was reported already. */
  reportedUnbaselined: boolean;
  /** Keys of the alarms a containment action was taken for: while they stay active it is not taken again. */
  containedFor: Set<string>;
  off: () => void;
}

/** Orders kept baselines newest first (ISO timestamps compare as strings). */
const newestFirst = (a: { takenAt: string }, b: { takenAt: string }): number => (a.takenAt < b.takenAt ? 1 : a.takenAt > b.takenAt ? -1 : 0);

function setPaused(w: LiveVm, paused: boolean): void {
  if (paused) w.runningSince = undefined;
  else if (w.paused || w.runningSince === undefined) w.runningSince = Date.now();
  w.paused = paused;
}

export class IntrospectionService {
  private readonly live = new Map<string, LiveVm>();
  /** VMs whose QEMU runs under record: not watched live (see `attach`). */
  private readonly recording = new Set<string>();
  private readonly configs = new Map<string, WatchConfig>();
  private readonly cache: KernelModelCache = new Map();
  /** Watch loops now running: close() lets a step in flight (an audit append, a containment) finish. */
  private readonly running = new Set<Promise<void>>();
  private closing = false;

  constructor(private readonly d: IntrospectionDeps) {}

  /** Reads the persisted watch configurations. Call before `VmService.recover()` so reattached VMs are watched again. */
  async load(): Promise<void> {
    const rows = await this.d.db.selectFrom("kv").selectAll().where("key", "like", "introspection.watch.%").execute();
    for (const row of rows) {
      const vmId = row.key.slice("introspection.watch.".length);
      let cfg: WatchConfig | undefined;
      try {
        const parsed = storedWatchSchema.safeParse(JSON.parse(row.value));
        if (parsed.success) cfg = parsed.data;
      } catch {
        cfg = undefined;
      }
      const exists = await this.vmExists(vmId);
      if (cfg && exists) this.configs.set(vmId, cfg);
      else await this.kvDelete(row.key);
    }
  }

  /**
   * Reads one VM's stored watch into the running service: a VM that arrived from another host with its watch
   * (migration/dossier.ts wrote the row) is watched from its first QEMU here. An invalid row is refused.
   */
  async loadWatch(vmId: string): Promise<void> {
    const row = await this.d.db.selectFrom("kv").select("value").where("key", "=", watchKey(vmId)).executeTakeFirst();
    if (!row) return;
    this.configs.set(vmId, parseOrThrow(storedWatchSchema, JSON.parse(row.value), "watch"));
  }

  // ---- the runtime hook --------------------------------------------------------------------------------

  /** Runtime hook: every QEMU vigil adopts (started, reverted, restored, or found again) gets a watcher. */
  readonly attach = (vm: VmRecord, rt: VmRuntime): void => {
    const old = this.live.get(vm.id);
    if (old) this.drop(old);
    if (rt.recording) {
      // No watcher on a recording QEMU: its HMP reads and pauses would be unrecorded work in the very process whose
      // execution the log must reproduce. The checks run on the recording's replays instead (docs/recording.md).
      this.recording.add(vm.id);
      void rt.exited.then(() => this.recording.delete(vm.id));
      return;
    }
    this.recording.delete(vm.id);
    const log = this.d.log.child({ vm: vm.name, component: "introspection" });
    const w: LiveVm = {
      vmId: vm.id,
      vmName: vm.name,
      rt,
      agent: vm.spec.agent,
      qemu: qemuIdentity(rt.pid),
      watcher: new VmWatcher(new RuntimeAccess(rt, guestRamBytes(vm.spec.memoryMiB, this.d.accel)), { cache: this.cache, onBug: (err) => log.error({ err: messageOf(err) }, "introspection engine error") }),
      status: "waiting-for-agent",
      problem: null,
      paused: true,
      runningSince: undefined,
      epoch: 0,
      boot: "start",
      gone: false,
      loop: undefined,
      lastSweepAt: null,
      lastSweepMs: null,
      lastAttempt: 0,
      attempts: 0,
      reportedUnbaselined: false,
      containedFor: new Set(),
      off: () => undefined,
    };
    this.live.set(vm.id, w);
    let runStateEvents = 0;
    w.off = rt.qmp.onEvent((e) => {
      if (e.event === "STOP") {
        runStateEvents++;
        setPaused(w, true);
      } else if (e.event === "RESUME") {
        runStateEvents++;
        setPaused(w, false);
      } else if (e.event === "RESET") this.onReset(w, typeof e.data.reason === "string" ? e.data.reason : "reset");
    });
    const asked = runStateEvents;
    void rt.status().then(
      (s) => {
        if (runStateEvents === asked) setPaused(w, s !== "running");
      },
      () => undefined,
    );
    void rt.exited.then(() => this.gone(w));
    // A watched VM's loop runs from the start: until the baseline exists its ticks only watch the preparation
    // (a silent agent, a failed baseline and its retries), so no guest can stay unbaselined unnoticed.
    this.startLoop(w);
    void this.prepare(w);
  };

  /** Takes (or reuses) the baseline of a freshly adopted QEMU, then starts its watch if it has one. */
  private async prepare(w: LiveVm): Promise<void> {
    const epoch = w.epoch;
    const source = w.boot;
    const current = (): boolean => !w.gone && !this.closing && w.epoch === epoch;
    try {
      if (source === "start") {
        const stored = await this.readBaseline(w.vmId);
        if (stored && w.qemu !== undefined && stored.qemu === w.qemu) {
          // The same QEMU process as before a daemon restart: keep trusting the baseline of its boot.
          await this.establish(w, "stored", stored.info);
          return;
        }
        if (stored) await this.kvDelete(baselineKey(w.vmId));
      }
      if (!w.agent) {
        w.status = "no-baseline";
        w.problem = "the VM has no guest agent: the baseline is taken when introspection is first asked for";
        this.startLoop(w);
        return;
      }
      w.status = "waiting-for-agent";
      if (!(await this.waitForAgent(w, current))) return;
      await sleep(this.d.settleMs ?? 1000);
      if (!current()) return;
      // A resumed memory state is not a boot: use the baseline of the boot it was saved from, if vigil keeps it.
      if (source === "start" && w.rt.loadedState !== undefined) await this.establish(w, "restored-untrusted", undefined, await this.archived(w.vmId));
      else await this.establish(w, source);
    } catch (err) {
      if (!current()) return;
      w.status = "error";
      w.problem = messageOf(err);
      this.d.log.warn({ vm: w.vmName, err: w.problem }, "Cannot baseline the guest kernel");
      const config = this.configs.get(w.vmId);
      if (config) await this.reportUnbaselined(w, config, "baseline-failed", "high", `The guest's kernel could not be baselined: ${w.problem}`).catch((e: unknown) => this.d.log.error({ err: messageOf(e) }, "Cannot report a failed baseline"));
    }
  }

  /** Pings the agent (one request at a time, so nothing piles up while the guest is paused) until it answers. */
  private async waitForAgent(w: LiveVm, current: () => boolean): Promise<boolean> {
    while (current()) {
      if (w.paused) {
        await sleep(500);
        continue;
      }
      try {
        const agent = await w.rt.agentClient();
        await agent.ping(3000);
        return current();
      } catch {
        await sleep(1000);
      }
    }
    return false;
  }

  /** Builds the model and takes the baseline (or adopts `stored`), persists it, and starts the watch. */
  private async establish(w: LiveVm, source: BaselineSource, stored?: BaselineInfo, candidates: readonly BaselineInfo[] = []): Promise<void> {
    const epoch = w.epoch;
    w.status = "baselining";
    w.lastAttempt = Date.now();
    let r;
    try {
      r = await w.watcher.establish(source, stored, candidates);
    } catch (err) {
      if (w.epoch !== epoch || w.gone) return; // superseded by a reset or the exit
      w.attempts++;
      w.status = "error";
      w.problem = messageOf(err);
      throw err;
    }
    if (w.epoch !== epoch || w.gone) return;
    w.status = "ready";
    w.problem = null;
    w.attempts = 0;
    w.containedFor.clear();
    // The watch starts before the bookkeeping below, so a failure to store or audit cannot leave it dead.
    this.startLoop(w);
    this.d.log.info({ vm: w.vmName, source: r.source, kernel: r.baseline.kernel, modelMs: r.modelMs, baselineMs: r.baselineMs, modelFromCache: r.modelFromCache, notes: r.baseline.notes.length }, "introspection baseline");
    if (r.source !== "stored" && w.qemu !== undefined) {
      const value = JSON.stringify({ format: 1, qemu: w.qemu, source: r.source, takenAt: r.takenAt, baseline: r.baseline });
      await this.kvSet(baselineKey(w.vmId), value);
    }
    // A baseline of a boot is kept for the memory states saved during that boot (not one taken from such a state).
    if (r.source !== "stored" && r.source !== "restored" && r.source !== "restored-untrusted") await this.archive(w.vmId, r);
    if (r.mismatch) await this.auditFindings(w, 0, [r.mismatch]);
    if (r.source === "restored-untrusted") {
      await this.auditFindings(w, 0, [
        {
          check: "baseline-untrusted",
          severity: "medium",
          message: `The VM resumed the saved state ${q(w.rt.loadedState)} of a boot vigil has no baseline of (imported, or older than the ${ARCHIVED_BASELINES} boots kept): the baseline was taken from that state, so a change made to the kernel before the state was saved cannot be seen`,
          evidence: { state: w.rt.loadedState ?? null },
        },
      ]);
    }
    if (r.source === "reset" || r.source === "reattach" || r.source === "restored") {
      await this.d.audit.append({
        actor: SYSTEM_ACTOR.name,
        action: "ids.baseline",
        target: { kind: "vm", id: w.vmId, name: w.vmName },
        result: "ok",
        details: { source: r.source, takenAt: r.takenAt, kernel: r.baseline.kernel, notes: r.baseline.notes.slice(0, 10), ...(r.source === "restored" ? { state: w.rt.loadedState ?? null } : {}) },
      });
    }
  }

  private onReset(w: LiveVm, reason: string): void {
    if (w.gone || this.closing) return;
    const hadBaseline = w.watcher.ready || w.status === "baselining";
    w.epoch++;
    w.watcher.invalidate();
    w.status = "waiting-for-agent";
    w.attempts = 0;
    w.reportedUnbaselined = false;
    if (!w.paused) w.runningSince = Date.now(); // the new boot's agent gets its full time to answer
    if (!hadBaseline) {
      // A reset before this boot's baseline (e.g. loading a snapshot before the guest's first instruction, or
      // the second RESET of one reboot): the same boot still waits for its agent. (The bumped epoch ends the
      // preparation already running.)
      void this.prepare(w);
      return;
    }
    w.boot = "reset";
    void this.d.audit
      .append({ actor: SYSTEM_ACTOR.name, action: "ids.guest-reset", target: { kind: "vm", id: w.vmId, name: w.vmName }, result: "ok", details: { reason, note: "the guest rebooted inside QEMU: its baseline is retaken once its agent answers" } })
      .catch((err: unknown) => this.d.log.error({ err: messageOf(err) }, "Cannot audit a guest reset"));
    // The old boot's baseline must not be mistaken for this QEMU's after a daemon restart; prepare at once.
    this.kvDelete(baselineKey(w.vmId)).catch((err: unknown) => this.d.log.error({ err: messageOf(err) }, "Cannot forget the baseline of a rebooted guest"));
    void this.prepare(w);
  }

  /** QEMU exited: the boot is over, and so is its baseline. */
  private async gone(w: LiveVm): Promise<void> {
    this.drop(w);
    if (this.closing) return;
    await this.kvDelete(baselineKey(w.vmId)).catch(() => undefined);
  }

  private drop(w: LiveVm): void {
    w.gone = true;
    w.epoch++;
    this.stopLoop(w);
    w.off();
    w.watcher.close();
    if (this.live.get(w.vmId) === w) this.live.delete(w.vmId);
  }

  // ---- the watch loop ----------------------------------------------------------------------------------

  private startLoop(w: LiveVm): void {
    const config = this.configs.get(w.vmId);
    if (!config || w.gone || this.closing) return;
    if (w.loop && w.loop.config === config) return;
    this.stopLoop(w);
    let stopped = false;
    let wake: (() => void) | undefined;
    w.loop = {
      config,
      stop: () => {
        stopped = true;
        wake?.();
      },
    };
    const loop = (async () => {
      while (!stopped && !w.gone && !this.closing) {
        const t0 = performance.now();
        try {
          await this.tick(w, config);
        } catch (err) {
          // The VM going away is the usual reason; anything else is logged and the watch goes on.
          if (!w.gone && !this.closing) this.d.log.warn({ vm: w.vmName, err: messageOf(err) }, "watch sweep failed");
        }
        const wait = config.intervalMs - (performance.now() - t0);
        if (wait > 0 && !stopped) {
          await new Promise<void>((r) => {
            wake = r;
            setTimeout(r, wait).unref();
          });
          wake = undefined;
        }
      }
    })();
    this.running.add(loop);
    void loop.finally(() => this.running.delete(loop));
  }

  private stopLoop(w: LiveVm): void {
    w.loop?.stop();
    w.loop = undefined;
  }

  /** One step of a watch: a sweep (with the guest's view), new findings audited, the policy applied. */
  private async tick(w: LiveVm, config: WatchConfig): Promise<void> {
    // A paused guest runs no code, so nothing in it can change; its sweeps resume with it (and a containment
    // pause then holds: the finding is new after the resume, whoever paused the VM before).
    if (w.paused) return;
    if (!w.watcher.ready) {
      // Without an agent nothing says when boot is over: the first attempt waits for some running time.
      const booting = w.status === "no-baseline" && (w.runningSince === undefined || Date.now() - w.runningSince < NO_AGENT_BOOT_MS);
      if (!booting && (w.status === "no-baseline" || w.status === "error") && Date.now() - w.lastAttempt >= this.retryDelay(w)) {
        await this.establish(w, w.agent ? (w.boot === "reset" ? "reset" : "start") : "on-demand").catch(async (err: unknown) => {
          w.status = "error";
          w.problem = messageOf(err);
          await this.reportUnbaselined(w, config, "baseline-failed", "high", `The guest's kernel could not be baselined (attempt ${w.attempts}): ${w.problem}`);
        });
      } else if (w.status === "waiting-for-agent" && w.runningSince !== undefined && Date.now() - w.runningSince >= (this.d.agentSilentMs ?? AGENT_SILENT_MS)) {
        await this.reportUnbaselined(w, config, "agent-silent", "medium", `The guest agent has not answered in ${Math.round((Date.now() - w.runningSince) / 1000)} s of running time: no baseline, so nothing is checked`);
      }
      return;
    }
    const view = w.agent && (w.watcher.sweeps + 1) % config.guestViewEvery === 0;
    const out = await w.watcher.runSweep({ guestView: view, track: true, noNewModules: config.noNewModules });
    w.lastSweepAt = new Date().toISOString();
    w.lastSweepMs = out.report?.durationMs ?? out.durationMs;
    // Containment holds off only while the alarms it was taken for are still active.
    const activeKeys = new Set(out.active.map(findingKey));
    for (const k of w.containedFor) if (!activeKeys.has(k)) w.containedFor.delete(k);
    if (out.fresh.length === 0 && out.changed.length === 0 && out.cleared.length === 0) return;
    // The watch may have been stopped or changed while this sweep waited for the guest: act on what holds now.
    if (w.gone || w.loop?.config !== config) return;
    await this.auditFindings(w, out.sweep, out.fresh, config);
    await this.auditChanges(w, out.sweep, out.changed, out.cleared);
    // An active alarm that became serious is contained like a new one.
    await this.applyPolicy(w, config, out.sweep, [...out.fresh, ...out.changed]);
  }

  /** Pause (and snapshot) for serious new findings the containment already taken does not cover. */
  private async applyPolicy(w: LiveVm, config: WatchConfig, sweepNo: number, fresh: readonly Finding[]): Promise<void> {
    const serious = fresh.filter((f) => (f.severity === "critical" || f.severity === "high") && !w.containedFor.has(findingKey(f)));
    if (serious.length === 0 || config.policy === "alert") return;
    for (const f of serious) w.containedFor.add(findingKey(f));
    if (!(await this.contain(w, config, sweepNo, serious))) for (const f of serious) w.containedFor.delete(findingKey(f));
  }

  /** How long a watcher without a baseline waits before its next attempt: doubling, capped. */
  private retryDelay(w: LiveVm): number {
    return Math.min(RETRY_BASELINE_MAX_MS, RETRY_BASELINE_MS * 2 ** Math.max(0, w.attempts - 1));
  }

  /**
   * A watched guest that cannot be checked is itself a finding (once per boot): otherwise a guest could keep its
   * kernel unbaselined — a silent agent, a corrupted VMCOREINFO — and never be looked at.
   */
  private async reportUnbaselined(w: LiveVm, config: WatchConfig, check: Finding["check"], severity: Finding["severity"], message: string): Promise<void> {
    if (w.reportedUnbaselined || w.gone || w.loop?.config !== config) return;
    w.reportedUnbaselined = true;
    const f: Finding = { check, severity, message, evidence: { status: w.status, attempts: w.attempts } };
    await this.auditFindings(w, 0, [f], config);
    await this.applyPolicy(w, config, 0, [f]);
  }

  private async auditFindings(w: LiveVm, sweepNo: number, fresh: readonly Finding[], config?: WatchConfig): Promise<void> {
    const target = { kind: "vm", id: w.vmId, name: w.vmName };
    for (const f of fresh.slice(0, MAX_AUDITED_PER_SWEEP)) {
      await this.d.audit.append({
        actor: SYSTEM_ACTOR.name,
        action: "ids.finding",
        target,
        result: "ok",
        details: { sweep: sweepNo, check: f.check, severity: f.severity, message: f.message.slice(0, 2000), evidence: boundEvidence(f.evidence), ...(config ? { policy: config.policy } : {}) },
      });
    }
    if (fresh.length > MAX_AUDITED_PER_SWEEP) {
      const rest = fresh.slice(MAX_AUDITED_PER_SWEEP);
      await this.d.audit.append({
        actor: SYSTEM_ACTOR.name,
        action: "ids.finding",
        target,
        result: "ok",
        details: { sweep: sweepNo, check: "findings-truncated", severity: "high", message: `${rest.length} more new findings in sweep ${sweepNo}`, evidence: { omitted: rest.length, checks: [...new Set(rest.map((f) => f.check))] } },
      });
    }
  }

  /** Every change of an active alarm, and every clearing, as an "ids.finding-change" record (bounded per sweep). */
  private async auditChanges(w: LiveVm, sweepNo: number, changed: readonly Finding[], cleared: readonly Finding[]): Promise<void> {
    const target = { kind: "vm", id: w.vmId, name: w.vmName };
    const all = [...changed.map((f) => ["changed", f] as const), ...cleared.map((f) => ["cleared", f] as const)];
    for (const [change, f] of all.slice(0, MAX_AUDITED_PER_SWEEP)) {
      await this.d.audit.append({
        actor: SYSTEM_ACTOR.name,
        action: "ids.finding-change",
        target,
        result: "ok",
        details: { sweep: sweepNo, change, key: findingKey(f).slice(0, 512), check: f.check, severity: f.severity, message: f.message.slice(0, 2000), evidence: boundEvidence(f.evidence) },
      });
    }
    if (all.length > MAX_AUDITED_PER_SWEEP) {
      await this.d.audit.append({ actor: SYSTEM_ACTOR.name, action: "ids.finding-change", target, result: "ok", details: { sweep: sweepNo, change: "truncated", check: "findings-truncated", severity: "info", message: `${all.length - MAX_AUDITED_PER_SWEEP} more alarm changes in sweep ${sweepNo}`, evidence: { omitted: all.length - MAX_AUDITED_PER_SWEEP } } });
    }
  }

  /** Containment: pause at once (within the interval of the detecting sweep), then keep evidence if asked. */
  private async contain(w: LiveVm, config: WatchConfig, sweepNo: number, serious: readonly Finding[]): Promise<boolean> {
    const ctx = systemCtx();
    const details: Record<string, unknown> = { policy: config.policy, sweep: sweepNo, findings: serious.slice(0, 5).map((f) => ({ check: f.check, message: f.message.slice(0, 300) })) };
    const target = { kind: "vm", id: w.vmId, name: w.vmName };
    try {
      const vm = await this.d.vms.recordById(w.vmId);
      // Still the QEMU this watcher watches (not a newer one started meanwhile)?
      if (w.gone || this.live.get(w.vmId) !== w) return true;
      if (vm.state === "running") {
        await this.d.vms.pause(ctx, vm.name);
        details.paused = true;
      } else details.paused = `not needed: the VM is ${vm.state}`;
      if (config.policy === "snapshot-and-pause") {
        const name = `ids-${new Date().toISOString().replace(/[-:]/g, "").replace(/\.\d+Z$/, "Z")}-s${sweepNo}`;
        await this.d.snapshots.create(ctx, vm.name, { name, memory: true, description: `Evidence: ${serious[0]?.check ?? "finding"} detected by the IDS in sweep ${sweepNo}` });
        details.snapshot = name;
      }
      await this.d.audit.append({ actor: SYSTEM_ACTOR.name, action: "ids.policy", target, result: "ok", requestId: ctx.requestId, details });
      return true;
    } catch (err) {
      await this.d.audit.append({ actor: SYSTEM_ACTOR.name, action: "ids.policy", target, result: "error", requestId: ctx.requestId, details: { ...details, error: messageOf(err) } });
      this.d.log.error({ vm: w.vmName, err: messageOf(err) }, "Cannot apply the IDS policy");
      return false;
    }
  }

  // ---- operations ----------------------------------------------------------------------------------------

  private liveOf(vm: VmRecord): LiveVm {
    if (this.recording.has(vm.id)) throw new VigilError("VIGIL_INVALID_STATE", `Cannot introspect VM ${q(vm.name)} while it records: the checks run on its recording (vigil recording bisect, after vm stop)`);
    const w = this.live.get(vm.id);
    if (!w || w.gone) throw new VigilError("VIGIL_INVALID_STATE", `Cannot introspect VM ${q(vm.name)}: vigil has no connection to its QEMU (state ${vm.state})`);
    return w;
  }

  /** A baseline for a live VM: there already, on demand for a VM without agent, or an error saying why not. */
  private async ensureBaseline(w: LiveVm): Promise<void> {
    if (w.watcher.ready) return;
    // Without an agent there is no better moment than now; after a failure, try again now and then.
    if (w.status === "no-baseline" || (w.status === "error" && (!w.agent || Date.now() - w.lastAttempt >= RETRY_BASELINE_MS))) {
      await this.establish(w, "on-demand");
      if (w.watcher.ready) return;
    }
    if (w.status === "error") {
      // Without an agent vigil cannot tell a guest still booting from one it cannot model: say both.
      const hint = w.agent ? "" : " (a guest without agent may still be booting: try again in a few seconds; otherwise its kernel is not one vigil can model)";
      throw new VigilError("VIGIL_INTROSPECTION", `Cannot introspect VM ${q(w.vmName)}: its kernel could not be modelled${hint}: ${w.problem ?? "no detail"}`);
    }
    throw new VigilError("VIGIL_BUSY", `Cannot introspect VM ${q(w.vmName)} yet: its baseline is taken once its guest agent first answers after the start (now ${w.status}); try again shortly`);
  }

  /** One sweep now (two when this boot was never swept, so the guest's own view can be bracketed): a report. */
  async introspect(ctx: RequestContext, name: string, input: unknown = {}): Promise<IntrospectReport> {
    const req = parseOrThrow(introspectRequestSchema, input ?? {}, "introspection request");
    return this.d.vms.operate(
      ctx,
      name,
      { action: "vm.introspect", permission: "vm.introspect", details: { carve: req.carve } },
      async (h) => {
        if (h.vm.state !== "running" && h.vm.state !== "paused") throw new VigilError("VIGIL_INVALID_STATE", `Cannot introspect VM ${q(h.vm.name)}: it is ${h.vm.state} (allowed when running or paused)`);
        const w = this.liveOf(h.vm);
        const t0 = performance.now();
        await this.ensureBaseline(w);
        const viewable = w.agent && !w.paused;
        if (w.watcher.sweeps === 0 && viewable) await w.watcher.runSweep({ guestView: false, track: false });
        const out = await w.watcher.runSweep({ guestView: viewable, track: false, carve: req.carve, noNewModules: this.configs.get(h.vm.id)?.noNewModules ?? false });
        const r = out.report;
        if (!r) throw new VigilError("VIGIL_INTROSPECTION", `Cannot introspect VM ${q(h.vm.name)}: ${out.error ?? "the sweep did not complete"}`);
        const info = w.watcher.baselineInfo;
        return {
          vm: h.vm.name,
          sweep: out.sweep,
          findings: r.findings,
          processes: r.processes,
          modules: r.modules,
          kernel: r.kernel,
          durationMs: r.durationMs,
          totalMs: Math.round((performance.now() - t0) * 1000) / 1000,
          timings: r.timings,
          coverage: r.coverage,
          textPatches: r.textPatches,
          carve: r.carve ?? null,
          baseline: { source: info?.source ?? "start", takenAt: info?.takenAt ?? "", notes: info?.baseline.notes ?? [] },
          guestView: out.guestView,
        };
      },
      (r) => ({ sweep: r.sweep, findings: r.findings.filter(isAlarm).length, checks: [...new Set(r.findings.filter(isAlarm).map((f) => f.check))].slice(0, 20), durationMs: r.durationMs }),
    );
  }

  /** The watch's recent findings (from the audit log, newest first) and the alarms active now. */
  async findings(ctx: RequestContext, name: string, limit = 100): Promise<{ vm: string; watch: WatchStatus | null; active: Finding[]; alarms: Alarm[]; recent: FindingRecord[] }> {
    const vm = await this.d.vms.lookup(ctx, name, "ids.findings");
    await this.d.guard.authorize(ctx, { action: "ids.findings", permission: "vm.introspect", target: { kind: "vm", id: vm.id, name: vm.name }, owner: vm.owner, readOnly: true });
    const n = Math.max(1, Math.min(1000, Math.floor(limit)));
    const records = await this.d.audit.list({ targetId: vm.id, action: "ids.finding", tail: true, limit: n });
    const recent = records
      .reverse()
      .map((r) => {
        const det = r.details as { sweep?: unknown; check?: unknown; severity?: unknown; message?: unknown; evidence?: unknown };
        return {
          seq: r.seq,
          time: r.time,
          sweep: typeof det.sweep === "number" ? det.sweep : null,
          check: String(det.check ?? ""),
          severity: String(det.severity ?? ""),
          message: String(det.message ?? ""),
          evidence: typeof det.evidence === "object" && det.evidence !== null ? (det.evidence as Record<string, unknown>) : {},
        };
      });
    const w = this.live.get(vm.id);
    const active = w?.loop ? w.watcher.tracker.active() : (w?.watcher.lastReport?.findings.filter(isAlarm) ?? []);
    // Active and cleared alarms with their histories (this daemon's run of the watch; the audit log keeps all).
    const alarms = w?.loop ? w.watcher.tracker.list() : [];
    return { vm: vm.name, watch: this.configs.has(vm.id) ? this.status(vm) : null, active, alarms, recent };
  }

  /** Starts or changes the VM's watch (persisted: it survives daemon restarts and follows the VM's starts). */
  async setWatch(ctx: RequestContext, name: string, input: unknown): Promise<WatchStatus> {
    const req = parseOrThrow(watchRequestSchema, input ?? {}, "watch");
    const vm = await this.d.vms.lookup(ctx, name, "ids.watch");
    const target = { kind: "vm", id: vm.id, name: vm.name };
    await this.authorizePolicy(ctx, vm, "ids.watch", [req.policy, this.configs.get(vm.id)?.policy]);
    if (req.policy === "snapshot-and-pause" && (vm.spec.disks.length === 0 || vm.isTemplate)) {
      throw new VigilError("VIGIL_BAD_REQUEST", `Invalid watch: "policy" snapshot-and-pause needs a VM that can be snapshotted, and ${q(vm.name)} ${vm.isTemplate ? "is a template" : "has no disk"} (allowed: alert, pause)`, { field: "policy" });
    }
    return this.d.guard.run(ctx, { action: "ids.watch", permission: "vm.introspect", target, owner: vm.owner, details: { intervalMs: req.intervalMs, policy: req.policy, guestViewEvery: req.guestViewEvery, noNewModules: req.noNewModules } }, async () => {
      const config: WatchConfig = { intervalMs: req.intervalMs, policy: req.policy, guestViewEvery: req.guestViewEvery, noNewModules: req.noNewModules, startedBy: ctx.actor.name, startedAt: new Date().toISOString() };
      await this.kvSet(watchKey(vm.id), JSON.stringify(config));
      this.configs.set(vm.id, config);
      const w = this.live.get(vm.id);
      if (w && !w.gone) {
        w.containedFor.clear();
        if (!w.watcher.ready && w.status === "no-baseline") await this.establish(w, "on-demand").catch(() => undefined);
        this.startLoop(w);
      }
      return this.status(vm);
    });
  }

  async stopWatch(ctx: RequestContext, name: string): Promise<{ vm: string; stopped: boolean }> {
    const vm = await this.d.vms.lookup(ctx, name, "ids.unwatch");
    await this.authorizePolicy(ctx, vm, "ids.unwatch", [this.configs.get(vm.id)?.policy]);
    return this.d.guard.run(ctx, { action: "ids.unwatch", permission: "vm.introspect", target: { kind: "vm", id: vm.id, name: vm.name }, owner: vm.owner }, async () => {
      const had = this.configs.delete(vm.id);
      await this.kvDelete(watchKey(vm.id));
      const w = this.live.get(vm.id);
      if (w) this.stopLoop(w);
      return { vm: vm.name, stopped: had };
    });
  }

  /**
   * A containment policy makes `system` pause (and snapshot) the VM: setting one — or changing or stopping a watch
   * that has one — needs the right to do that by hand, besides `vm.introspect`: `vm.control` for a pause, and
   * `vm.modify` too for a snapshot. Otherwise a reader with the introspect grant could pause someone else's VM,
   * or switch its containment off.
   */
  private async authorizePolicy(ctx: RequestContext, vm: VmRecord, action: string, policies: ReadonlyArray<WatchPolicy | undefined>): Promise<void> {
    const target = { kind: "vm", id: vm.id, name: vm.name };
    if (policies.some((p) => p === "pause" || p === "snapshot-and-pause")) await this.d.guard.authorize(ctx, { action, permission: "vm.control", target, owner: vm.owner });
    if (policies.includes("snapshot-and-pause")) await this.d.guard.authorize(ctx, { action, permission: "vm.modify", target, owner: vm.owner });
  }

  /** Every watch on a VM the actor may introspect. */
  async listWatches(ctx: RequestContext): Promise<{ watches: WatchStatus[] }> {
    await this.d.guard.authorize(ctx, { action: "ids.watches", permission: "vm.introspect", target: { kind: "vm" }, readOnly: true });
    const out: WatchStatus[] = [];
    for (const vmId of [...this.configs.keys()]) {
      if (!(await this.vmExists(vmId))) {
        // The VM was destroyed: its watch and kept baselines go with it.
        this.configs.delete(vmId);
        await this.forgetVm(vmId);
        continue;
      }
      const vm = await this.d.repo.getById(vmId);
      if (can(ctx.actor, "vm.introspect", vm.owner)) out.push(this.status(vm));
    }
    out.sort((a, b) => (a.vm < b.vm ? -1 : a.vm > b.vm ? 1 : 0));
    return { watches: out };
  }

  private status(vm: VmRecord): WatchStatus {
    const config = this.configs.get(vm.id);
    const w = this.live.get(vm.id);
    const info = w?.watcher.baselineInfo;
    const recording = this.recording.has(vm.id);
    const status: WatchStatus["status"] = recording ? "recording" : !w || w.gone ? "armed" : w.loop && w.watcher.ready ? "watching" : w.status;
    return {
      vm: vm.name,
      intervalMs: config?.intervalMs ?? 0,
      policy: config?.policy ?? "alert",
      guestViewEvery: config?.guestViewEvery ?? 1,
      noNewModules: config?.noNewModules ?? false,
      startedBy: config?.startedBy ?? "",
      startedAt: config?.startedAt ?? "",
      status,
      sweeps: w?.watcher.sweeps ?? 0,
      lastSweepAt: w?.lastSweepAt ?? null,
      lastSweepMs: w?.lastSweepMs ?? null,
      activeFindings: w?.loop ? w.watcher.tracker.active().length : 0,
      baseline: info ? { source: info.source, takenAt: info.takenAt } : null,
      problem: recording ? "the VM records: it is checked through its recording, not live" : (w?.problem ?? null),
    };
  }

  /**
   * Stops every watch loop — waiting (at most CLOSE_WAIT_MS) for a step in flight, so a containment or an audit
   * append does not race the database closing — and releases every RAM file. Watches and baselines stay stored
   * for the next start.
   */
  async close(): Promise<void> {
    this.closing = true;
    for (const w of this.live.values()) this.stopLoop(w);
    await Promise.race([Promise.allSettled([...this.running]), sleep(CLOSE_WAIT_MS)]);
    for (const w of [...this.live.values()]) {
      w.off();
      w.watcher.close();
    }
    this.live.clear();
  }

  // ---- storage ---------------------------------------------------------------------------------------------

  private async readBaseline(vmId: string): Promise<{ qemu: string; info: BaselineInfo } | undefined> {
    const row = await this.d.db.selectFrom("kv").select("value").where("key", "=", baselineKey(vmId)).executeTakeFirst();
    if (!row) return undefined;
    try {
      const parsed = storedBaselineSchema.safeParse(JSON.parse(row.value));
      if (!parsed.success) return undefined;
      // The baseline itself is checked strictly by the sweep engine before its first use.
      return { qemu: parsed.data.qemu, info: { baseline: parsed.data.baseline as Baseline, source: "stored", takenAt: parsed.data.takenAt } };
    } catch {
      return undefined;
    }
  }

  /** Keeps the baseline of a boot for the memory states saved during it; the newest ARCHIVED_BASELINES per VM. */
  private async archive(vmId: string, info: BaselineInfo): Promise<void> {
    const k = info.baseline.kernel;
    await this.kvSet(`${archivePrefix(vmId)}${k.buildId ?? "unknown"}.${k.kaslrShift}`, JSON.stringify({ format: 1, takenAt: info.takenAt, baseline: info.baseline }));
    const rows = await this.d.db.selectFrom("kv").select(["key", "value"]).where("key", "like", `${archivePrefix(vmId)}%`).execute();
    // takenAt is the value's first field (written below): read without parsing ≈ 2 MB of JSON per kept boot.
    const byAge = rows.map((r) => ({ key: r.key, takenAt: /^\{"format":1,"takenAt":"([^"]*)"/.exec(r.value)?.[1] ?? "" })).sort(newestFirst);
    for (const old of byAge.slice(ARCHIVED_BASELINES)) await this.kvDelete(old.key);
  }

  /** The kept baselines of the VM's earlier boots, newest first (each is checked by a dry sweep before use). */
  private async archived(vmId: string): Promise<BaselineInfo[]> {
    const rows = await this.d.db.selectFrom("kv").select("value").where("key", "like", `${archivePrefix(vmId)}%`).execute();
    const out: BaselineInfo[] = [];
    for (const row of rows) {
      try {
        const v = archivedBaselineSchema.safeParse(JSON.parse(row.value));
        if (v.success) out.push({ baseline: v.data.baseline as Baseline, source: "restored", takenAt: v.data.takenAt });
      } catch {
        continue; // unreadable: not a candidate
      }
    }
    return out.sort(newestFirst);
  }

  /** Whether the VM exists; any other error (the database) is thrown, never taken for "destroyed". */
  private async vmExists(vmId: string): Promise<boolean> {
    try {
      await this.d.repo.getById(vmId);
      return true;
    } catch (err) {
      if (err instanceof VigilError && err.code === "VIGIL_VM_NOT_FOUND") return false;
      throw err;
    }
  }

  private async forgetVm(vmId: string): Promise<void> {
    await this.kvDelete(watchKey(vmId));
    await this.kvDelete(baselineKey(vmId));
    await this.d.db.deleteFrom("kv").where("key", "like", `${archivePrefix(vmId)}%`).execute();
  }

  private async kvSet(key: string, value: string): Promise<void> {
    await this.d.db
      .insertInto("kv")
      .values({ key, value })
      .onConflict((oc) => oc.column("key").doUpdateSet({ value }))
      .execute();
  }

  private async kvDelete(key: string): Promise<void> {
    await this.d.db.deleteFrom("kv").where("key", "=", key).execute();
  }
}

