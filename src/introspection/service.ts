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
import { VmWatcher, boundEvidence, isAlarm, parseProcModules, type BaselineInfo, type BaselineSource, type GuestAccess, type GuestView, type SweepOutcome } from "./watcher.ts";

export const WATCH_POLICIES = ["alert", "pause", "snapshot-and-pause"] as const;
export type WatchPolicy = (typeof WATCH_POLICIES)[number];

export const MIN_INTERVAL_MS = 250;
export const MAX_INTERVAL_MS = 3_600_000;

export const watchRequestSchema = z.strictObject({
  intervalMs: z.number().int().min(MIN_INTERVAL_MS).max(MAX_INTERVAL_MS).default(1000),
  policy: z.enum(WATCH_POLICIES).default("alert"),
  /** Ask the guest for its own view (agent ps, /proc/modules) every Nth sweep: it costs guest CPU (a fork of awk). */
  guestViewEvery: z.number().int().min(1).max(3600).default(1),
});

export const introspectRequestSchema = z.strictObject({
  /** Also carve all of guest RAM for task and module structures (≈ 0.1-0.6 s per 256 MiB). */
  carve: z.boolean().default(false),
});

const storedWatchSchema = z.strictObject({
  intervalMs: z.number().int().min(MIN_INTERVAL_MS).max(MAX_INTERVAL_MS),
  policy: z.enum(WATCH_POLICIES),
  guestViewEvery: z.number().int().min(1).max(3600).default(1),
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

/** What a watcher of a live VM is doing. */
export type LiveStatus = "waiting-for-agent" | "baselining" | "ready" | "no-baseline" | "error";

export interface WatchStatus {
  vm: string;
  intervalMs: number;
  policy: WatchPolicy;
  guestViewEvery: number;
  startedBy: string;
  startedAt: string;
  /** "watching": sweeping; "armed": the VM is not running (the watch starts with it); otherwise the watcher's status. */
  status: "watching" | "armed" | LiveStatus;
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
  /** Wait this long after the agent's first answer before the baseline (lets `start --wait` answer first). */
  settleMs?: number;
}

/** At most this many findings of one sweep become individual audit records; the rest are counted in one. */
const MAX_AUDITED_PER_SWEEP = 20;
/** Guest view requests (agent ps, /proc/modules) time out after this. */
const GUEST_VIEW_TIMEOUT_MS = 5000;
/** A watcher without a baseline (no agent, or the model failed) retries at most this often. */
const RETRY_BASELINE_MS = 30_000;
/** Name of the RAM backend in vigil's QEMU command line (qemu/argv.ts: memory-backend-file,id=ram0). */
const RAM_BACKEND = "ram0";

const watchKey = (vmId: string): string => `introspection.watch.${vmId}`;
const baselineKey = (vmId: string): string => `introspection.baseline.${vmId}`;
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
  constructor(private readonly rt: VmRuntime) {}

  async openMemory(): Promise<PhysicalMemory> {
    const ranges = parseMtreeFlat(await this.rt.qmp.hmp("info mtree -f"));
    const named = ranges.some((r) => r.name === RAM_BACKEND);
    return FilePhysicalMemory.open(this.rt.layout.ramFile, ramRegionsFromMtree(ranges, named ? RAM_BACKEND : undefined), { maxCachedPages: 4096 });
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
  /** Bumped on every guest reset: preparations of an older boot give up. */
  epoch: number;
  /** What the next baseline will be: of a new QEMU ("start") or of a reboot inside it ("reset"). */
  boot: "start" | "reset";
  gone: boolean;
  loop: { stop(): void; config: WatchConfig } | undefined;
  lastSweepAt: string | null;
  lastSweepMs: number | null;
  lastAttempt: number;
  /** A containment action was taken (or is running) for the alarms now active. */
  contained: boolean;
  off: () => void;
}

export class IntrospectionService {
  private readonly live = new Map<string, LiveVm>();
  private readonly configs = new Map<string, WatchConfig>();
  private readonly cache: KernelModelCache = new Map();
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
      const exists = await this.d.repo.getById(vmId).then(
        () => true,
        () => false,
      );
      if (cfg && exists) this.configs.set(vmId, cfg);
      else await this.kvDelete(row.key);
    }
  }

  // ---- the runtime hook --------------------------------------------------------------------------------

  /** Runtime hook: every QEMU vigil adopts (started, reverted, restored, or found again) gets a watcher. */
  readonly attach = (vm: VmRecord, rt: VmRuntime): void => {
    const old = this.live.get(vm.id);
    if (old) this.drop(old);
    const log = this.d.log.child({ vm: vm.name, component: "introspection" });
    const w: LiveVm = {
      vmId: vm.id,
      vmName: vm.name,
      rt,
      agent: vm.spec.agent,
      qemu: qemuIdentity(rt.pid),
      watcher: new VmWatcher(new RuntimeAccess(rt), { cache: this.cache, onBug: (err) => log.error({ err: messageOf(err) }, "introspection engine error") }),
      status: "waiting-for-agent",
      problem: null,
      paused: true,
      epoch: 0,
      boot: "start",
      gone: false,
      loop: undefined,
      lastSweepAt: null,
      lastSweepMs: null,
      lastAttempt: 0,
      contained: false,
      off: () => undefined,
    };
    this.live.set(vm.id, w);
    let runStateEvents = 0;
    w.off = rt.qmp.onEvent((e) => {
      if (e.event === "STOP") {
        runStateEvents++;
        w.paused = true;
      } else if (e.event === "RESUME") {
        runStateEvents++;
        w.paused = false;
      } else if (e.event === "RESET") this.onReset(w, typeof e.data.reason === "string" ? e.data.reason : "reset");
    });
    const asked = runStateEvents;
    void rt.status().then(
      (s) => {
        if (runStateEvents === asked) w.paused = s !== "running";
      },
      () => undefined,
    );
    void rt.exited.then(() => this.gone(w));
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
      await this.establish(w, source);
    } catch (err) {
      if (!current()) return;
      w.status = "error";
      w.problem = messageOf(err);
      this.d.log.warn({ vm: w.vmName, err: w.problem }, "Cannot baseline the guest kernel");
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
  private async establish(w: LiveVm, source: BaselineSource, stored?: BaselineInfo): Promise<void> {
    const epoch = w.epoch;
    w.status = "baselining";
    w.lastAttempt = Date.now();
    let r;
    try {
      r = await w.watcher.establish(source, stored);
    } catch (err) {
      if (w.epoch !== epoch || w.gone) return; // superseded by a reset or the exit
      w.status = "error";
      w.problem = messageOf(err);
      throw err;
    }
    if (w.epoch !== epoch || w.gone) return;
    w.status = "ready";
    w.problem = null;
    w.contained = false;
    this.d.log.info({ vm: w.vmName, source: r.source, kernel: r.baseline.kernel, modelMs: r.modelMs, baselineMs: r.baselineMs, modelFromCache: r.modelFromCache, notes: r.baseline.notes.length }, "introspection baseline");
    if (r.source !== "stored" && w.qemu !== undefined) {
      const value = JSON.stringify({ format: 1, qemu: w.qemu, source: r.source, takenAt: r.takenAt, baseline: r.baseline });
      await this.kvSet(baselineKey(w.vmId), value);
    }
    if (r.mismatch) await this.auditFindings(w, 0, [r.mismatch]);
    if (r.source === "reset" || r.source === "reattach") {
      await this.d.audit.append({
        actor: SYSTEM_ACTOR.name,
        action: "ids.baseline",
        target: { kind: "vm", id: w.vmId, name: w.vmName },
        result: "ok",
        details: { source: r.source, takenAt: r.takenAt, kernel: r.baseline.kernel, notes: r.baseline.notes.slice(0, 10) },
      });
    }
    this.startLoop(w);
  }

  private onReset(w: LiveVm, reason: string): void {
    if (w.gone || this.closing) return;
    const hadBaseline = w.watcher.ready || w.status === "baselining";
    w.epoch++;
    w.watcher.invalidate();
    w.status = "waiting-for-agent";
    if (!hadBaseline) {
      // A reset before this boot's baseline (e.g. loading a snapshot before the guest's first instruction, or
      // the second RESET of one reboot): the same boot still waits for its agent.
      void this.prepare(w);
      return;
    }
    w.boot = "reset";
    void this.d.audit
      .append({ actor: SYSTEM_ACTOR.name, action: "ids.guest-reset", target: { kind: "vm", id: w.vmId, name: w.vmName }, result: "ok", details: { reason, note: "the guest rebooted inside QEMU: its baseline is retaken once its agent answers" } })
      .catch((err: unknown) => this.d.log.error({ err: messageOf(err) }, "Cannot audit a guest reset"));
    void this.kvDelete(baselineKey(w.vmId)).then(() => this.prepare(w));
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
    void (async () => {
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
      if ((w.status === "no-baseline" || w.status === "error") && Date.now() - w.lastAttempt >= RETRY_BASELINE_MS) {
        await this.establish(w, w.agent ? "start" : "on-demand").catch((err: unknown) => {
          w.status = "error";
          w.problem = messageOf(err);
        });
      }
      return;
    }
    const view = w.agent && (w.watcher.sweeps + 1) % config.guestViewEvery === 0;
    const out = await w.watcher.runSweep({ guestView: view, track: true });
    w.lastSweepAt = new Date().toISOString();
    w.lastSweepMs = out.report?.durationMs ?? out.durationMs;
    if (out.active.length === 0) w.contained = false;
    if (out.fresh.length === 0) return;
    await this.auditFindings(w, out.sweep, out.fresh, config);
    const serious = out.fresh.filter((f) => f.severity === "critical" || f.severity === "high");
    if (serious.length > 0 && config.policy !== "alert" && !w.contained) {
      w.contained = true;
      await this.contain(w, config, out.sweep, serious);
    }
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

  /** Containment: pause at once (within the interval of the detecting sweep), then keep evidence if asked. */
  private async contain(w: LiveVm, config: WatchConfig, sweepNo: number, serious: readonly Finding[]): Promise<void> {
    const ctx = systemCtx();
    const details: Record<string, unknown> = { policy: config.policy, sweep: sweepNo, findings: serious.slice(0, 5).map((f) => ({ check: f.check, message: f.message.slice(0, 300) })) };
    const target = { kind: "vm", id: w.vmId, name: w.vmName };
    try {
      const vm = await this.d.vms.recordById(w.vmId);
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
    } catch (err) {
      await this.d.audit.append({ actor: SYSTEM_ACTOR.name, action: "ids.policy", target, result: "error", requestId: ctx.requestId, details: { ...details, error: messageOf(err) } });
      this.d.log.error({ vm: w.vmName, err: messageOf(err) }, "Cannot apply the IDS policy");
    }
  }

  // ---- operations ----------------------------------------------------------------------------------------

  private liveOf(vm: VmRecord): LiveVm {
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
    if (w.status === "error") throw new VigilError("VIGIL_INTROSPECTION", `Cannot introspect VM ${q(w.vmName)}: ${w.problem ?? "its kernel could not be modelled"}`);
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
        const out = await w.watcher.runSweep({ guestView: viewable, track: false, carve: req.carve });
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
  async findings(ctx: RequestContext, name: string, limit = 100): Promise<{ vm: string; watch: WatchStatus | null; active: Finding[]; recent: FindingRecord[] }> {
    const vm = await this.d.repo.getByName(name);
    await this.d.guard.authorize(ctx, { action: "ids.findings", permission: "vm.introspect", target: { kind: "vm", id: vm.id, name: vm.name }, owner: vm.owner, readOnly: true });
    const n = Math.max(1, Math.min(1000, Math.floor(limit)));
    const records = await this.d.audit.list({ targetId: vm.id, tail: true, limit: 10_000 });
    const recent = records
      .filter((r) => r.action === "ids.finding")
      .slice(-n)
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
    return { vm: vm.name, watch: this.configs.has(vm.id) ? this.status(vm) : null, active, recent };
  }

  /** Starts or changes the VM's watch (persisted: it survives daemon restarts and follows the VM's starts). */
  async setWatch(ctx: RequestContext, name: string, input: unknown): Promise<WatchStatus> {
    const req = parseOrThrow(watchRequestSchema, input ?? {}, "watch");
    const vm = await this.d.repo.getByName(name);
    return this.d.guard.run(ctx, { action: "ids.watch", permission: "vm.introspect", target: { kind: "vm", id: vm.id, name: vm.name }, owner: vm.owner, details: { intervalMs: req.intervalMs, policy: req.policy, guestViewEvery: req.guestViewEvery } }, async () => {
      const config: WatchConfig = { intervalMs: req.intervalMs, policy: req.policy, guestViewEvery: req.guestViewEvery, startedBy: ctx.actor.name, startedAt: new Date().toISOString() };
      await this.kvSet(watchKey(vm.id), JSON.stringify(config));
      this.configs.set(vm.id, config);
      const w = this.live.get(vm.id);
      if (w && !w.gone) {
        w.contained = false;
        if (!w.watcher.ready && w.status === "no-baseline") await this.establish(w, "on-demand").catch(() => undefined);
        this.startLoop(w);
      }
      return this.status(vm);
    });
  }

  async stopWatch(ctx: RequestContext, name: string): Promise<{ vm: string; stopped: boolean }> {
    const vm = await this.d.repo.getByName(name);
    return this.d.guard.run(ctx, { action: "ids.unwatch", permission: "vm.introspect", target: { kind: "vm", id: vm.id, name: vm.name }, owner: vm.owner }, async () => {
      const had = this.configs.delete(vm.id);
      await this.kvDelete(watchKey(vm.id));
      const w = this.live.get(vm.id);
      if (w) this.stopLoop(w);
      return { vm: vm.name, stopped: had };
    });
  }

  /** Every watch on a VM the actor may introspect. */
  async listWatches(ctx: RequestContext): Promise<{ watches: WatchStatus[] }> {
    await this.d.guard.authorize(ctx, { action: "ids.watches", permission: "vm.introspect", target: { kind: "vm" }, readOnly: true });
    const out: WatchStatus[] = [];
    for (const vmId of [...this.configs.keys()]) {
      const vm = await this.d.repo.getById(vmId).catch(() => undefined);
      if (!vm) {
        // The VM was destroyed: its watch goes with it.
        this.configs.delete(vmId);
        await this.kvDelete(watchKey(vmId));
        continue;
      }
      if (can(ctx.actor, "vm.introspect", vm.owner)) out.push(this.status(vm));
    }
    out.sort((a, b) => (a.vm < b.vm ? -1 : a.vm > b.vm ? 1 : 0));
    return { watches: out };
  }

  private status(vm: VmRecord): WatchStatus {
    const config = this.configs.get(vm.id);
    const w = this.live.get(vm.id);
    const info = w?.watcher.baselineInfo;
    const status: WatchStatus["status"] = !w || w.gone ? "armed" : w.loop && w.watcher.ready ? "watching" : w.status;
    return {
      vm: vm.name,
      intervalMs: config?.intervalMs ?? 0,
      policy: config?.policy ?? "alert",
      guestViewEvery: config?.guestViewEvery ?? 1,
      startedBy: config?.startedBy ?? "",
      startedAt: config?.startedAt ?? "",
      status,
      sweeps: w?.watcher.sweeps ?? 0,
      lastSweepAt: w?.lastSweepAt ?? null,
      lastSweepMs: w?.lastSweepMs ?? null,
      activeFindings: w?.loop ? w.watcher.tracker.active().length : 0,
      baseline: info ? { source: info.source, takenAt: info.takenAt } : null,
      problem: w?.problem ?? null,
    };
  }

  /** Stops every watch loop and releases every RAM file; watches and baselines stay stored for the next start. */
  close(): void {
    this.closing = true;
    for (const w of [...this.live.values()]) {
      this.stopLoop(w);
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

