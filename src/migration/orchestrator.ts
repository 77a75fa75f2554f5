/**
 * The manager's side of a live migration (docs/cluster.md "Live migration"): check, dossier, incoming, outgoing,
 * progress, and the record of what happened. The agents do the work and the switchover by themselves; the
 * orchestrator only starts them, follows them, and cleans up the target when the source says it failed. Its state
 * is the `migrations` row, so a restarted manager picks every running migration up again (`reconcile`).
 */
import type { DelegatedActor, MigrationLimits, MigrationProgress, MigrationResult, CertBundle } from "../cluster/types.ts";
import { VigilError, messageOf, q } from "../errors.ts";
import type { MigrationRecord, MigrationState } from "../cluster/cluster-repository.ts";
import { negotiate, negotiateCold, type NegotiatedPlan, type QemuReport } from "./negotiate.ts";
import type { ColdStatus } from "./cold-agents.ts";

/** One call to an agent as the manager makes it (src/cluster/agent-client.ts). */
export interface AgentCaller {
  call<T>(host: string, method: string, path: string, body: unknown, actor: DelegatedActor, opts?: { timeoutMs?: number }): Promise<T>;
}

/** What the orchestrator stores (the `migrations` table through src/cluster/cluster-repository.ts). */
export interface MigrationStore {
  create(row: MigrationRow): Promise<void>;
  update(id: string, change: Partial<MigrationRow>): Promise<void>;
  get(id: string): Promise<MigrationRow | undefined>;
  listActive(): Promise<MigrationRow[]>;
  placementOf(vmName: string): Promise<{ vmId: string; host: string } | undefined>;
  setPlacement(vmId: string, vmName: string, host: string, owner: string): Promise<void>;
}

/** A migration's row as the cluster repository stores it (src/cluster/cluster-repository.ts). */
export type MigrationRow = MigrationRecord;
export type { MigrationState };

/** The source agent's answer about one outgoing migration. */
export interface OutgoingStatus {
  id: string;
  phase: MigrationProgress["phase"];
  progress: MigrationProgress | null;
  result: MigrationResult | null;
  error: string | null;
}

export interface IncomingAnswer {
  ramPort: number;
  nbdPort: number;
  disks: { node: string; exportName: string; sync: "top" | "full" }[];
}

export interface OrchestratorDeps {
  agents: AgentCaller;
  store: MigrationStore;
  /** The host names that may take a VM now (ready, lease valid), and each one's underlay IP. */
  hostAddress(name: string): string | undefined;
  /** A host's cluster listener (IP:PORT): the source hands the switchover state to the target agent there. */
  agentAddress(name: string): string | undefined;
  isReady(name: string): boolean;
  /** Ephemeral certificates for one migration (src/cluster/ca.ts issueMigrationPair). */
  issuePair(id: string): Promise<{ src: CertBundle; dst: CertBundle; srcSubject: string }>;
  /** The manager's audit log and durable events. */
  record(action: string, vmName: string, result: "ok" | "error" | "denied", actor: string, details: Record<string, unknown>): Promise<void>;
  event(kind: string, subject: string, payload: unknown): Promise<void>;
  log: { warn(obj: object, msg: string): void; info(obj: object, msg: string): void };
  /** Poll interval for the source's progress (ms). */
  pollMs?: number;
}

export const DEFAULT_LIMITS: MigrationLimits = { maxDowntimeMs: 300, timeoutMs: 600_000, maxBandwidth: 0 };

const now = (): string => new Date().toISOString();

export class MigrationOrchestrator {
  /** Migrations this manager process is following, with the actor to speak for and a cancel flag. */
  private readonly following = new Map<string, { actor: DelegatedActor; done: Promise<MigrationRow>; cancel: boolean }>();

  private closed = false;

  constructor(private readonly d: OrchestratorDeps) {}

  /** Manager shutdown: stop following (the rows stay `running`; the next manager's reconcile() follows them again). */
  close(): void {
    this.closed = true;
  }

  /** Starts a migration and returns its row; `wait()` follows it to the end. */
  async start(actor: DelegatedActor, vmName: string, to: string, limits: MigrationLimits): Promise<MigrationRow> {
    const placed = await this.d.store.placementOf(vmName);
    if (!placed) throw new VigilError("VIGIL_VM_NOT_FOUND", `VM ${q(vmName)} does not exist in this cluster`);
    if (placed.host === to) throw new VigilError("VIGIL_BAD_REQUEST", `VM ${q(vmName)} is already on host ${q(to)}`, { field: "to" });
    if (!this.d.isReady(to)) throw new VigilError("VIGIL_CONFLICT", `Host ${q(to)} cannot take VMs now (not a ready host of this cluster: see \`vigil host list\`)`, { field: "to" });
    if (!this.d.isReady(placed.host)) throw new VigilError("VIGIL_CONFLICT", `The VM's host ${q(placed.host)} is not answering: a VM cannot be migrated off an unreachable host`);
    const active = (await this.d.store.listActive()).find((m) => m.vmName === vmName);
    if (active) throw new VigilError("VIGIL_CONFLICT", `VM ${q(vmName)} is already migrating (${active.id} to ${q(active.target)}): wait, or \`vigil vm migrate ${vmName} --cancel\``);
    const negotiated = await this.negotiate(actor, vmName, placed.host, to);
    const row: MigrationRow = {
      id: crypto.randomUUID(),
      vmId: placed.vmId,
      vmName,
      source: placed.host,
      target: to,
      state: "running",
      phase: "setup",
      requestedBy: actor.name,
      options: { ...limits, negotiated },
      progress: null,
      result: null,
      error: null,
      startedAt: now(),
      updatedAt: now(),
      finishedAt: null,
    };
    await this.d.store.create(row);
    await this.d.event("migration.started", vmName, { id: row.id, source: row.source, target: row.target, capabilities: negotiated.capabilities });
    this.follow(row, actor, () => (negotiated.how === "cold" ? this.beginCold(row, actor) : this.begin(row, actor)));
    return row;
  }

  /**
   * Negotiation (docs/cluster.md): both ends say what their QEMU can do before anything exists on the target; a
   * refusal is audited and thrown with every reason, each naming the host.
   */
  private async negotiate(actor: DelegatedActor, vmName: string, source: string, target: string): Promise<NegotiatedPlan> {
    const [src, dst] = await Promise.all([
      this.d.agents.call<{ qemu: QemuReport; hardware: { machine: string; cpu: string }; state: string }>(source, "GET", `/v1/agent/vms/${vmName}/qemu`, undefined, actor, { timeoutMs: 30_000 }),
      this.d.agents.call<QemuReport>(target, "GET", "/v1/agent/qemu", undefined, actor, { timeoutMs: 60_000 }),
    ]);
    // A stopped (or crashed) VM moves cold: its disks are copied, no QEMU stream runs.
    const cold = src.state === "stopped" || src.state === "crashed";
    const n = (cold ? negotiateCold : negotiate)({ ...src.qemu, host: source }, { ...dst, host: target }, src.hardware);
    if (n.ok) return n.plan;
    await this.d.record("vm.migrate", vmName, "error", actor.name, { source, target, state: "refused", refused: n.refusals });
    throw new VigilError("VIGIL_CONFLICT", `Cannot migrate VM ${q(vmName)} from ${q(source)} to ${q(target)}: ${n.refusals.join("; ")}`, { field: "to" });
  }

  /** The row of a migration, as stored. */
  async get(id: string): Promise<MigrationRow> {
    const row = await this.d.store.get(id);
    if (!row) throw new VigilError("VIGIL_NOT_FOUND", `No migration ${q(id)}`);
    return row;
  }

  /** Resolves with the final row. */
  async wait(id: string): Promise<MigrationRow> {
    const f = this.following.get(id);
    return f ? f.done : this.get(id);
  }

  /** Asks the source to cancel; the migration ends `cancelled` with the VM running on the source. */
  async cancel(actor: DelegatedActor, vmName: string): Promise<MigrationRow> {
    const row = (await this.d.store.listActive()).find((m) => m.vmName === vmName);
    if (!row) throw new VigilError("VIGIL_CONFLICT", `VM ${q(vmName)} is not migrating`);
    const f = this.following.get(row.id);
    if (f) f.cancel = true;
    // A cold move stops at its next poll (beginCold checks the flag); a live one is cancelled by its source.
    if (row.options.negotiated?.how !== "cold") await this.d.agents.call(row.source, "POST", `/v1/agent/migrations/${row.id}/cancel`, {}, actor).catch((err: unknown) => this.d.log.warn({ id: row.id, err: messageOf(err) }, "cannot reach the source to cancel"));
    return row;
  }

  /**
   * After a manager restart: every migration still `running` in the table is followed again. The source agent
   * knows whether it is still running; if the source has forgotten it (it restarted), where the VM is decides.
   */
  async reconcile(system: DelegatedActor): Promise<number> {
    const rows = await this.d.store.listActive();
    for (const row of rows) if (!this.following.has(row.id)) this.follow(row, system, () => (row.options.negotiated?.how === "cold" ? this.settleCold(row, system) : this.track(row, system)));
    return rows.length;
  }

  private follow(row: MigrationRow, actor: DelegatedActor, run: () => Promise<MigrationRow>): void {
    const entry = { actor, cancel: false, done: Promise.resolve(row) };
    entry.done = run()
      .catch((err: unknown) => this.finish(row, actor, "failed", { error: messageOf(err) }))
      .finally(() => this.following.delete(row.id));
    this.following.set(row.id, entry);
  }

  private async begin(row: MigrationRow, actor: DelegatedActor): Promise<MigrationRow> {
    const targetAddr = this.d.hostAddress(row.target);
    const sourceAddr = this.d.hostAddress(row.source);
    if (!targetAddr || !sourceAddr) throw new VigilError("VIGIL_HOST", "A host of this migration has no address");
    let incoming: IncomingAnswer | undefined;
    try {
      const dossier = await this.d.agents.call<unknown>(row.source, "GET", `/v1/agent/vms/${row.vmName}/dossier`, undefined, actor);
      const pair = await this.d.issuePair(row.id);
      incoming = await this.d.agents.call<IncomingAnswer>(row.target, "POST", "/v1/agent/migrations/incoming", { id: row.id, dossier, credentials: pair.dst, peerSubject: pair.srcSubject, sourceAddress: sourceAddr, sourceHost: row.source }, actor, { timeoutMs: 120_000 });
      if (this.following.get(row.id)?.cancel) throw new VigilError("VIGIL_CONFLICT", "cancelled");
      await this.d.agents.call(row.source, "POST", "/v1/agent/migrations/outgoing", {
        id: row.id,
        vm: row.vmName,
        target: { host: row.target, address: targetAddr, agent: this.d.agentAddress(row.target) ?? "", ramPort: incoming.ramPort, nbdPort: incoming.nbdPort },
        tlsHostname: `${row.id}.migration.vigil`,
        credentials: pair.src,
        disks: incoming.disks,
        limits: { maxDowntimeMs: row.options.maxDowntimeMs, timeoutMs: row.options.timeoutMs, maxBandwidth: row.options.maxBandwidth },
        ...(row.options.negotiated ? { capabilities: row.options.negotiated.capabilities } : {}),
      }, actor, { timeoutMs: 60_000 });
    } catch (err) {
      // Nothing ran on the source yet: the target's half-made VM is all there is to undo.
      if (incoming) await this.abortTarget(row, actor);
      else await this.abortTarget(row, actor, true);
      const cancelled = this.following.get(row.id)?.cancel === true;
      return this.finish(row, actor, cancelled ? "cancelled" : "failed", { error: cancelled ? null : messageOf(err) });
    }
    await this.d.store.update(row.id, { phase: "disks", updatedAt: now() });
    return this.track(row, actor);
  }

  /**
   * A stopped VM's move (docs/cluster.md "Moving a stopped VM"): dossier, import on the target, the source pushes
   * the disks agent to agent, the target commits, the source lets go. Before the commit a failure aborts the
   * target's incoming VM; a source that cannot let go gets the target's copy discarded. The VM is in one place.
   */
  private async beginCold(row: MigrationRow, actor: DelegatedActor): Promise<MigrationRow> {
    const t0 = Date.now();
    let prepared = false;
    let committed = false;
    const agent = this.d.agentAddress(row.target);
    try {
      if (!agent) throw new VigilError("VIGIL_HOST", `Host ${q(row.target)} has no cluster address`);
      const dossier = await this.d.agents.call<unknown>(row.source, "GET", `/v1/agent/vms/${row.vmName}/dossier`, undefined, actor);
      const plan = await this.d.agents.call<{ disks: { name: string; sync: "top" | "full" }[] }>(row.target, "POST", "/v1/agent/cold/incoming", { id: row.id, dossier, sourceHost: row.source }, actor, { timeoutMs: 120_000 });
      prepared = true;
      await this.d.store.update(row.id, { phase: "disks", updatedAt: now() });
      await this.d.agents.call(row.source, "POST", "/v1/agent/cold/outgoing", { id: row.id, vm: row.vmName, target: { host: row.target, agent }, disks: plan.disks.map((x) => ({ name: x.name, sync: x.sync })) }, actor);
      let status: ColdStatus;
      for (;;) {
        if (this.closed) return row;
        status = await this.d.agents.call<ColdStatus>(row.source, "GET", `/v1/agent/cold/${row.id}`, undefined, actor, { timeoutMs: 10_000 });
        const progress = { phase: "disks" as const, ramTransferred: 0, ramRemaining: 0, ramTotal: 0, dirtyRate: 0, expectedDowntimeMs: 0, downtimeLimitMs: 0, iterations: 0, diskDone: status.diskDone, diskTotal: status.diskTotal };
        await this.d.store.update(row.id, { phase: "disks", progress, updatedAt: now() });
        await this.d.event("migration.progress", row.vmName, { id: row.id, ...progress });
        if (status.phase === "failed") throw new VigilError("VIGIL_HOST", `copying the disks failed: ${status.error ?? "no reason given"}`);
        if (status.phase === "completed") break;
        if (this.following.get(row.id)?.cancel) throw new VigilError("VIGIL_CONFLICT", "cancelled");
        if (Date.now() - t0 > row.options.timeoutMs) throw new VigilError("VIGIL_TIMEOUT", `the disks were not copied within ${row.options.timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, this.d.pollMs ?? 250));
      }
      const arrived = await this.d.agents.call<{ owner: string }>(row.target, "POST", `/v1/agent/cold/${row.id}/commit`, {}, actor);
      committed = true;
      await this.d.agents.call(row.source, "POST", `/v1/agent/cold/${row.id}/release`, {}, actor, { timeoutMs: 60_000 });
      await this.d.store.setPlacement(row.vmId, row.vmName, row.target, arrived.owner);
      const result: MigrationResult = { downtimeMs: 0, totalMs: Date.now() - t0, ramTransferred: 0, diskTransferred: status.diskDone, iterations: 0, finalDowntimeLimitMs: 0, throttlePercent: 0 };
      return this.finish(row, actor, "completed", { result });
    } catch (err) {
      const why = committed ? `the source could not let go of the VM (${messageOf(err)}); the target's copy was removed` : messageOf(err);
      if (prepared) {
        await this.d.agents.call(row.target, "POST", `/v1/agent/cold/${row.id}/abort`, { reason: `cold move failed: ${messageOf(err)}` }, actor).catch((e: unknown) => this.d.log.warn({ id: row.id, err: messageOf(e) }, "cannot reach the target to abort the cold move; it cleans up at its next start"));
      }
      const cancelled = this.following.get(row.id)?.cancel === true && !committed;
      return this.finish(row, actor, cancelled ? "cancelled" : "failed", { error: cancelled ? null : `${why}; the VM stays on ${row.source}` });
    }
  }

  /** A cold move found running after a manager restart: done if the target holds the VM stopped and the source no longer does. */
  private async settleCold(row: MigrationRow, actor: DelegatedActor): Promise<MigrationRow> {
    const there = await this.d.agents.call<{ state: string; owner: string }>(row.target, "GET", `/v1/vms/${row.vmName}`, undefined, actor).catch(() => undefined);
    const here = await this.d.agents.call<{ state: string }>(row.source, "GET", `/v1/vms/${row.vmName}`, undefined, actor).catch((err: unknown) => (err instanceof VigilError && err.code === "VIGIL_VM_NOT_FOUND" ? null : undefined));
    if (there && there.state !== "incoming" && here === null) {
      await this.d.store.setPlacement(row.vmId, row.vmName, row.target, there.owner);
      return this.finish(row, actor, "completed", { result: null });
    }
    await this.d.agents.call(row.target, "POST", `/v1/agent/cold/${row.id}/abort`, { reason: "the manager restarted during the cold move" }, actor).catch(() => undefined);
    return this.finish(row, actor, "failed", { error: `the manager restarted during the cold move; the VM stays on ${row.source}` });
  }

  /** Follows the source's progress until the migration ends, then records it. */
  private async track(row: MigrationRow, actor: DelegatedActor): Promise<MigrationRow> {
    const pollMs = this.d.pollMs ?? 250;
    let misses = 0;
    for (;;) {
      if (this.closed) return row;
      let status: OutgoingStatus | undefined;
      try {
        status = await this.d.agents.call<OutgoingStatus>(row.source, "GET", `/v1/agent/migrations/${row.id}`, undefined, actor, { timeoutMs: 10_000 });
        misses = 0;
      } catch (err) {
        if (err instanceof VigilError && err.code === "VIGIL_NOT_FOUND") return this.settleByLocation(row, actor);
        // A source that stops answering: its migration cannot finish without it (the RAM stream is its) — wait a while.
        if (++misses > Math.max(10, Math.ceil(30_000 / pollMs))) {
          await this.abortTarget(row, actor);
          return this.finish(row, actor, "failed", { error: `the source host ${q(row.source)} stopped answering: ${messageOf(err)}` });
        }
      }
      if (status) {
        if (status.progress) {
          await this.d.store.update(row.id, { phase: status.phase, progress: status.progress, updatedAt: now() });
          await this.d.event("migration.progress", row.vmName, { id: row.id, ...status.progress });
        }
        if (status.phase === "completed") return this.completed(row, actor, status.result);
        if (status.phase === "failed" || status.phase === "cancelled") {
          await this.abortTarget(row, actor);
          return this.finish(row, actor, status.phase, { error: status.error });
        }
      }
      await new Promise((r) => setTimeout(r, pollMs));
    }
  }

  /** The source forgot the migration (it restarted): the VM is wherever an agent says it is running. */
  private async settleByLocation(row: MigrationRow, actor: DelegatedActor): Promise<MigrationRow> {
    const onTarget = await this.d.agents.call<{ state: string }>(row.target, "GET", `/v1/vms/${row.vmName}`, undefined, actor).catch(() => undefined);
    if (onTarget && onTarget.state === "running") return this.completed(row, actor, null);
    await this.abortTarget(row, actor);
    return this.finish(row, actor, "failed", { error: "the source host restarted during the migration; the VM stayed there" });
  }

  private async completed(row: MigrationRow, actor: DelegatedActor, result: MigrationResult | null): Promise<MigrationRow> {
    // The target resumes the VM by itself on QEMU's `completed`; wait (bounded) until it says so.
    const deadline = Date.now() + 60_000;
    for (;;) {
      const vm = await this.d.agents.call<{ state: string; owner: string }>(row.target, "GET", `/v1/vms/${row.vmName}`, undefined, actor).catch(() => undefined);
      if (vm && vm.state === "running") {
        await this.d.store.setPlacement(row.vmId, row.vmName, row.target, vm.owner);
        break;
      }
      if (Date.now() > deadline) return this.finish(row, actor, "failed", { error: `the source finished but the target ${q(row.target)} does not report the VM running` });
      await new Promise((r) => setTimeout(r, 200));
    }
    return this.finish(row, actor, "completed", { result });
  }

  private async abortTarget(row: MigrationRow, actor: DelegatedActor, quiet = false): Promise<void> {
    await this.d.agents.call(row.target, "POST", `/v1/agent/migrations/${row.id}/abort`, {}, actor).catch((err: unknown) => {
      // A target that is down cleans its incoming VM at its next start (vm-recovery).
      if (!quiet) this.d.log.warn({ id: row.id, err: messageOf(err) }, "cannot reach the target to abort; it cleans up at its next start");
    });
  }

  private async finish(row: MigrationRow, actor: DelegatedActor, state: MigrationState, what: { error?: string | null; result?: MigrationResult | null }): Promise<MigrationRow> {
    const change: Partial<MigrationRow> = { state, phase: state === "running" ? "failed" : state === "completed" ? "completed" : state, error: what.error ?? null, result: what.result ?? null, updatedAt: now(), finishedAt: now() };
    await this.d.store.update(row.id, change);
    const final = { ...row, ...change };
    await this.d.record("vm.migrate", row.vmName, state === "completed" ? "ok" : "error", actor.name, {
      id: row.id,
      source: row.source,
      target: row.target,
      state,
      ...(row.options.negotiated ? { capabilities: row.options.negotiated.capabilities, qemu: `${row.options.negotiated.source.version} → ${row.options.negotiated.target.version}`, machine: row.options.negotiated.machine } : {}),
      ...(final.result ? { downtimeMs: final.result.downtimeMs, totalMs: final.result.totalMs } : {}),
      ...(final.error ? { error: final.error } : {}),
    });
    await this.d.event(`migration.${state}`, row.vmName, { id: row.id, result: final.result, error: final.error });
    this.d.log.info({ id: row.id, vm: row.vmName, state }, "migration ended");
    return final;
  }
}
