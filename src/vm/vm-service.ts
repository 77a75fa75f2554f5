/**
 * VmService: the one service that executes VM operations, and the one facade other layers (api, storage, vtime,
 * introspection, daemon) call. Every public operation takes the request context, authorizes and audits through
 * the Guard, takes the VM's operation lock (two operations on one VM never interleave), checks the state
 * machine, and either completes or puts the VM back in the state it was in. QEMU processes are started detached
 * and outlive vigil; `recover()` finds them again after a restart.
 *
 * The work is done by parts named for what they do, all sharing one VmCore (locks, runtimes map, deps):
 *   vm-lifecycle   start/stop/kill/pause/resume/restart and `operate`
 *   vm-supervision adopting a live QEMU and recording its exit; detaching on close
 *   vm-recovery    finding QEMUs again after a restart, sweeping leftovers, erasing legacy RAM files
 *   vm-creation    create, createDerived (clone/import), the create quota, materialize
 *   vm-removal     destroy/purge and removeVm
 *   vm-agent       the guest agent (exec, ping); vm-console the serial console and its log
 *   vm-ownership   the site ownership policy (required fields, expired VMs, who may own a VM)
 * This file only wires them and keeps the public method names and signatures.
 */
import type { VmRuntime } from "../host/vm-runtime.ts";
import type { RequestContext } from "../auth/guard.ts";
import { can, seesAllVms } from "../auth/permissions.ts";
import type { OwnerRef, Permission } from "../auth/permissions.ts";
import type { AgentClient } from "../guest-agent/agent-client.ts";
import type { VmRecord, VmRepository } from "./vm-repository.ts";
import type { VmView } from "./vm-view.ts";
import type { VmLayout } from "../paths.ts";
import type { BeforeContHook, RemovalReport, StartOptions, StopResult, VmServiceDeps } from "./vm-types.ts";
import { VmCore } from "./vm-core.ts";
import { VmSupervisor } from "./vm-supervision.ts";
import { VmLifecycle } from "./vm-lifecycle.ts";
import { VmCreation, type DerivedVmInput } from "./vm-creation.ts";
import { VmRemoval } from "./vm-removal.ts";
import { VmMigration } from "./vm-migration.ts";
import { recover } from "./vm-recovery.ts";
import { pingAgent, withAgent } from "./vm-agent.ts";
import { consoleLog, openConsole } from "./vm-console.ts";
import { checkNotExpired, checkOwnershipPolicy, type OwnershipFields } from "./vm-ownership.ts";

export type { BeforeContHook, LockedVm, RemovalReport, StartOptions, StopResult, VmPolicy, VmServiceDeps } from "./vm-types.ts";

export class VmService {
  private readonly core: VmCore;
  private readonly supervisor: VmSupervisor;
  private readonly lifecycle: VmLifecycle;
  private readonly creation: VmCreation;
  private readonly removal: VmRemoval;
  private readonly migration: VmMigration;

  constructor(private readonly d: VmServiceDeps) {
    this.core = new VmCore(d);
    this.supervisor = new VmSupervisor(this.core);
    this.lifecycle = new VmLifecycle(this.core, this.supervisor);
    this.operate = this.lifecycle.operate.bind(this.lifecycle);
    this.creation = new VmCreation(this.core);
    this.removal = new VmRemoval(this.core, this.lifecycle);
    this.migration = new VmMigration(this.core, this.lifecycle, this.removal);
  }

  /** Capabilities register work that must happen on every start before the guest runs. */
  addBeforeContHook(hook: BeforeContHook): void {
    this.lifecycle.addBeforeContHook(hook);
  }

  addBeforeStopHook(hook: BeforeContHook): void {
    this.lifecycle.addBeforeStopHook(hook);
  }

  addBeforeResumeHook(hook: BeforeContHook): void {
    this.lifecycle.addBeforeResumeHook(hook);
  }

  /** Capabilities that attach to every live QEMU (started or found again after a restart) register here. */
  addRuntimeHook(hook: (vm: VmRecord, rt: VmRuntime) => void): void {
    this.supervisor.addRuntimeHook(hook);
  }

  /**
   * One guarded, locked operation on an existing VM for capabilities built on the lifecycle (snapshots, clones,
   * export); its signature and contract are `VmLifecycle.operate`'s (vm-lifecycle.ts).
   */
  readonly operate: VmLifecycle["operate"];

  /**
   * Creates a new VM (a clone or an import) under the creator's name: fresh identity, disks prepared by
   * `prepareDisks` in the VM's private directory, the row inserted last, generation 1 recorded. Either all of
   * it exists afterwards or none of it.
   */
  createDerived(
    ctx: RequestContext,
    input: DerivedVmInput,
  ): Promise<VmRecord> {
    return this.creation.createDerived(ctx, input);
  }

  /**
   * The ownership fields of every new VM (vm-ownership.ts): `createDerived` checks them itself; a capability that
   * does costly work first calls this before that work.
   */
  checkOwnershipPolicy(context: string, fields: OwnershipFields, code: "VIGIL_INVALID_SPEC" | "VIGIL_BAD_REQUEST" = "VIGIL_BAD_REQUEST"): void {
    checkOwnershipPolicy(this.d.policy, context, fields, code);
  }

  /**
   * Under the site policy `expiredVms: "stop"`, an expired VM may not run (vm-ownership.ts): for capabilities
   * whose operation would start QEMU (a revert), before they change anything.
   */
  checkNotExpired(vm: VmRecord, context: string): void {
    checkNotExpired(this.d.policy, vm, context);
  }

  /**
   * For capabilities whose operation needs a permission beyond the one on the VM it acts on (a clone also
   * creates a VM; a revert that keeps the vmgenid is unsafe): the Guard checks it on every object and audits a
   * refusal as denied, naming the permission.
   */
  async authorizeAlso(ctx: RequestContext, action: string, permission: Permission, target: { kind: string; name: string }, details?: Record<string, unknown>): Promise<void> {
    await this.d.guard.authorize(ctx, { action, permission, target, details, readOnly: true });
  }

  /** A VM record by id, for capabilities that already passed authorization. */
  recordById(id: string): Promise<VmRecord> {
    return this.d.repo.getById(id);
  }

  /** Updates a VM record, for capabilities finishing a VM they just created (nobody else can see it yet). */
  updateRecord(id: string, change: Parameters<VmRepository["update"]>[1]): Promise<VmRecord> {
    return this.d.repo.update(id, change);
  }

  /** Public view of a record (for capabilities returning VMs). */
  describeVm(vm: VmRecord): VmView {
    return this.core.view(vm);
  }

  /**
   * The VM named `name` for an operation by `ctx`; a VM the actor may not read is answered like a missing one
   * (vm-core.ts). Capabilities that act on a VM by name look it up here before their own authorization.
   */
  lookup(ctx: RequestContext, name: string, action: string): Promise<VmRecord> {
    return this.core.lookup(ctx, name, action);
  }

  // ---- reads ---------------------------------------------------------------------------------------------

  async list(ctx: RequestContext): Promise<VmView[]> {
    await this.authorizeList(ctx);
    return this.readable(ctx, await this.d.repo.list()).map((vm) => this.core.view(vm));
  }

  /**
   * The same VMs as `list`, as the frozen records of the shared list (vm-list-cache.ts), for the inventory summary
   * (vm-view.ts `vmSummaryJson`): nothing is copied or derived per request here.
   */
  async listShared(ctx: RequestContext): Promise<readonly Readonly<VmRecord>[]> {
    await this.authorizeList(ctx);
    return this.readable(ctx, await this.d.repo.listShared());
  }

  /** Anyone who could read some VM may list; the list then holds only the VMs they may read (`readable`). */
  private authorizeList(ctx: RequestContext): Promise<void> {
    return this.d.guard.authorize(ctx, { action: "vm.list", permission: "vm.read", target: { kind: "vm" }, owner: `user:${ctx.actor.name}`, readOnly: true });
  }

  private readable<R extends { owner: string }>(ctx: RequestContext, all: readonly R[]): readonly R[] {
    return seesAllVms(ctx.actor) ? all : all.filter((vm) => can(ctx.actor, "vm.read", vm.owner));
  }

  async show(ctx: RequestContext, name: string): Promise<VmView> {
    const vm = await this.core.lookup(ctx, name, "vm.show");
    await this.d.guard.authorize(ctx, { action: "vm.show", permission: "vm.read", target: this.core.target(vm), owner: vm.owner, readOnly: true });
    return this.core.view(vm);
  }

  /** The owner of the VM with this id, undefined for unknown ids (what `mayReadRecord` decides on). */
  async ownerOf(vmId: string): Promise<OwnerRef | undefined> {
    return (await this.d.repo.getById(vmId).catch(() => undefined))?.owner;
  }

  /** Every VM's owner by id (the audit list filters records with `mayReadRecord`). */
  async owners(): Promise<Map<string, OwnerRef>> {
    return new Map((await this.d.repo.listShared()).map((vm) => [vm.id, vm.owner]));
  }

  /** The captured serial console output (the last `maxBytes`). */
  consoleLog(ctx: RequestContext, name: string, maxBytes = 256 * 1024): Promise<string> {
    return consoleLog(this.core, ctx, name, maxBytes);
  }

  // ---- create / destroy ----------------------------------------------------------------------------------

  create(ctx: RequestContext, input: unknown): Promise<VmView> {
    return this.creation.create(ctx, input);
  }

  /**
   * Deletes a VM. With `purge`, every registered file of the VM that vigil can reach (its disks, logs, and
   * copies such as exported bundles on this host) is overwritten before unlinking, and the report says what
   * was destroyed and what could not be reached.
   */
  destroy(ctx: RequestContext, name: string, options: { force?: boolean | undefined; purge?: boolean | undefined } = {}): Promise<RemovalReport> {
    return this.removal.destroy(ctx, name, options);
  }

  /** Deletes a stopped VM's files and row; the audit log and the data registry keep its story. */
  removeVm(vm: VmRecord, how: string, purge: boolean): Promise<RemovalReport> {
    return this.removal.removeVm(vm, how, purge);
  }

  // ---- lifecycle -----------------------------------------------------------------------------------------

  start(ctx: RequestContext, name: string, options: StartOptions = {}): Promise<VmView> {
    return this.lifecycle.start(ctx, name, options);
  }

  /** The exact QEMU command line vigil runs for this VM (like Proxmox's `qm showcmd`). */
  qemuCommand(ctx: RequestContext, name: string): Promise<{ binary: string; argv: string[] }> {
    return this.lifecycle.qemuCommand(ctx, name);
  }

  stop(ctx: RequestContext, name: string, options: { timeoutMs?: number | undefined } = {}): Promise<StopResult & { vm: VmView }> {
    return this.lifecycle.stop(ctx, name, options);
  }

  kill(ctx: RequestContext, name: string): Promise<VmView> {
    return this.lifecycle.kill(ctx, name);
  }

  pause(ctx: RequestContext, name: string): Promise<VmView> {
    return this.lifecycle.qmpTransition(ctx, name, "pause", "stop", "paused");
  }

  resume(ctx: RequestContext, name: string): Promise<VmView> {
    return this.lifecycle.qmpTransition(ctx, name, "resume", "cont", "running");
  }

  /** A fresh QEMU process: stop (ACPI, with fallbacks) then start, under one lock. The vmgenid is unchanged. */
  restart(ctx: RequestContext, name: string, options: StartOptions & { timeoutMs?: number | undefined } = {}): Promise<VmView> {
    return this.lifecycle.restart(ctx, name, options);
  }

  // ---- guest agent and console ---------------------------------------------------------------------------

  /** Pings the guest agent `count` times; the round-trip times as the daemon measured them. */
  pingAgent(ctx: RequestContext, name: string, count: number): Promise<{ rttMs: number[] }> {
    return pingAgent(this.core, ctx, name, count);
  }

  /** The guest agent of a running VM, for a read (`vm.read`) or an exec (`vm.exec`). */
  withAgent<T>(ctx: RequestContext, name: string, op: { action: string; permission: "vm.read" | "vm.exec"; details?: Record<string, unknown> }, fn: (agent: AgentClient) => Promise<T>): Promise<T> {
    return withAgent(this.core, ctx, name, op, fn);
  }

  /** While a VM records, console users reach it through the recorder's relay (`undefined`: QEMU's socket again). */
  setConsoleRelay(vmId: string, socket: string | undefined): void {
    if (socket === undefined) this.core.consoleRelays.delete(vmId);
    else this.core.consoleRelays.set(vmId, socket);
  }

  /** For the console bridge: authorizes, audits and returns the serial socket of a live VM. */
  openConsole(ctx: RequestContext, name: string): Promise<string> {
    return openConsole(this.core, ctx, name);
  }

  /** The runtime of a running VM by id, for capabilities built on top (introspection, snapshots). */
  /** Where a VM's files are (its disks dir follows its storage): for capabilities that read them while holding its lock. */
  layoutOf(vm: VmRecord): VmLayout {
    return this.core.layout(vm);
  }

  /** The runtime of a VM vigil is attached to now, or undefined (metrics: a VM that is not running is not an error). */
  liveRuntime(vmId: string): VmRuntime | undefined {
    return this.core.runtimes.get(vmId);
  }

  runtimeOf(vm: VmRecord): VmRuntime {
    return this.core.runtime(vm);
  }

  // ---- migration (vm-migration.ts; the dossier is migration/dossier.ts) ------------------------------------

  /** Starts an incoming VM's QEMU in its jail with `-incoming defer` and no `cont`; it stays `incoming`. */
  startIncoming(ctx: RequestContext, vmId: string): Promise<VmRecord> {
    return this.migration.startIncoming(ctx, vmId);
  }

  /** After QEMU's incoming migration completed: `cont`, running, location recorded, `vm.migrated-in`. */
  commitIncoming(vmId: string, ctx?: RequestContext, details?: Record<string, unknown>): Promise<VmRecord> {
    return this.migration.commitIncoming(vmId, ctx, details);
  }

  /** A cold move's end on the target: incoming (disks copied, no QEMU) → stopped, location, `vm.migrated-in`. */
  commitStopped(vmId: string, ctx?: RequestContext, details?: Record<string, unknown>): Promise<VmRecord> {
    return this.migration.commitStopped(vmId, ctx, details);
  }

  /** Gives up an incoming VM: QEMU killed, NICs unplugged, row, files and imported identity rows deleted. */
  abortIncoming(vmId: string, ctx?: RequestContext, reason?: string): Promise<void> {
    return this.migration.abortIncoming(vmId, ctx, reason);
  }

  /** Removes a cold-moved copy that arrived (stopped or incoming, never run here) when its source cannot let go. */
  discardArrived(vmId: string, ctx: RequestContext | undefined, reason: string): Promise<void> {
    return this.migration.discardArrived(vmId, ctx, reason);
  }

  /** On the source once the target holds the VM: QEMU quit, row and vigil-made files removed, `vm.migrated-out`. */
  releaseOutgoing(vmId: string, targetHost: string, ctx?: RequestContext, details?: Record<string, unknown>): Promise<void> {
    return this.migration.releaseOutgoing(vmId, targetHost, ctx, details);
  }

  // ---- supervision ---------------------------------------------------------------------------------------

  /**
   * Finds every VM's QEMU again after vigil (re)starts (vm-recovery.ts), first erasing what a crash left in
   * `vms/` (`sweepLeftovers`): a QEMU is only trusted if pid file, process and uuid agree; interrupted operations are rolled back; a VM whose QEMU died meanwhile is crashed.
   */
  async recover(): Promise<{ reattached: string[]; crashed: string[] }> {
    const result = await recover(this.core, this.supervisor);
    // An incoming VM at start: this agent died mid-migration; the source still runs it (docs/cluster.md, step 6).
    for (const vm of await this.d.repo.list()) {
      if (vm.state === "incoming") await this.migration.abortIncoming(vm.id, undefined, "the target's daemon restarted during the migration");
    }
    return result;
  }

  /** Detaches from every QEMU without stopping it: VMs keep running while vigil is away. */
  close(): Promise<void> {
    return this.supervisor.close();
  }
}
