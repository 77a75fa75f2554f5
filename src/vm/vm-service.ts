/**
 * VM lifecycle: the one service that executes VM operations. Every public method takes the request context,
 * authorizes and audits through the Guard, takes the VM's operation lock (two operations on one VM never
 * interleave), checks the state machine, and either completes or puts the VM back in the state it was in.
 * QEMU processes are started detached and outlive vigil; `recover()` finds them again after a restart.
 */
import { randomUUID } from "node:crypto";
import { existsSync, readdirSync, rmSync } from "node:fs";
import { join } from "node:path";
import { VigilError, errors, messageOf, q } from "../errors.ts";
import type { VmLayout } from "../paths.ts";
import { buildArgv, type LaunchPlan } from "../qemu/argv.ts";
import { createBlank, createOverlay } from "../qemu/qemu-img.ts";
import { checkSocketPath, ensurePrivateDir, ensurePrivateFile, restrictToOwner } from "../host/private-dir.ts";
import { QEMU_BINARY, isQemuOf, signal, startQemu, waitForExit } from "../host/qemu-process.ts";
import { VmRuntime } from "../host/vm-runtime.ts";
import { eraseOwnedFile, eraseTree } from "../host/erase.ts";
import { consoleBackup } from "../host/console-log.ts";
import { installLoopbackGuard } from "../host/loopback-guard.ts";
import { checkJailAvailable, hostCgroupSpecs, jailEnabled, removeCgroups } from "../host/jail.ts";
import { handOverFiles, planJail, reclaimJailDirs } from "./jail-launch.ts";
import type { RequestContext } from "../auth/guard.ts";
import { can, seesAllVms, ownsVm } from "../auth/permissions.ts";
import { parseOrThrow } from "../validation.ts";
import { createVmRequestSchema, resolveSpec, type VmSpec } from "./spec.ts";
import { checkCreateQuota, checkHostLimits, checkStartQuota, type HostFacts } from "./host-limits.ts";
import { assertAllowed, isLive, type VmState } from "./state-machine.ts";
import type { Lineage, VmRecord, VmRepository } from "./vm-repository.ts";
import type { Permission } from "../auth/permissions.ts";
import { diskFile, type VmView } from "./vm-view.ts";
import { VmCore } from "./vm-core.ts";
import { VmSupervisor } from "./vm-supervision.ts";
import { eraseLegacyRamFile, recover, sweepLeftovers } from "./vm-recovery.ts";
import { consoleLog, openConsole } from "./vm-console.ts";
import { checkNotExpired, checkOwnershipPolicy, resolveOwner } from "./vm-ownership.ts";
import type { BeforeContHook, LockedVm, RemovalReport, StartOptions, StopResult, VmServiceDeps } from "./vm-types.ts";

export type { BeforeContHook, LockedVm, RemovalReport, StartOptions, StopResult, VmPolicy, VmServiceDeps } from "./vm-types.ts";

/** Regular files below `dir` (not sockets or links), for purging. */
function listFiles(dir: string): string[] {
  const out: string[] = [];
  if (!existsSync(dir)) return out;
  for (const entry of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (entry.isFile()) out.push(join(entry.parentPath, entry.name));
  }
  return out;
}

const DEFAULT_STOP_TIMEOUT_MS = 60_000;

export class VmService {
  /** The locks and the runtimes map, shared with the parts below (vm-core.ts). */
  private readonly core: VmCore;
  private readonly supervisor: VmSupervisor;
  private readonly beforeContHooks: BeforeContHook[] = [];

  constructor(private readonly d: VmServiceDeps) {
    this.core = new VmCore(d);
    this.supervisor = new VmSupervisor(this.core);
  }

  private hostFacts(): HostFacts {
    return this.core.hostFacts();
  }

  /** Capabilities register work that must happen on every start before the guest runs. */
  addBeforeContHook(hook: BeforeContHook): void {
    this.beforeContHooks.push(hook);
  }

  /** Capabilities that attach to every live QEMU (started or found again after a restart) register here. */
  addRuntimeHook(hook: (vm: VmRecord, rt: VmRuntime) => void): void {
    this.supervisor.addRuntimeHook(hook);
  }

  /**
   * One guarded, locked operation on an existing VM for capabilities built on the lifecycle (snapshots, clones,
   * export): authorizes `op.permission` on the VM, audits the outcome, holds the VM's lock while `fn` runs, and
   * hands `fn` the lifecycle steps it may combine.
   */
  async operate<T>(
    ctx: RequestContext,
    name: string,
    op: { action: string; permission: Permission; details?: Record<string, unknown> | undefined },
    fn: (h: LockedVm) => Promise<T>,
    describe?: (result: T) => Record<string, unknown>,
  ): Promise<T> {
    const vm = await this.lookup(ctx, name, op.action);
    return this.d.guard.run(
      ctx,
      { action: op.action, permission: op.permission, target: this.target(vm), owner: vm.owner, details: op.details },
      () =>
        this.locked(vm, async (fresh) => {
          const h: LockedVm = {
            vm: fresh,
            layout: this.layout(fresh),
            reload: () => this.d.repo.getById(vm.id),
            update: (change) => this.d.repo.update(vm.id, change),
            runtime: () => this.runtime(fresh),
            start: async (options = {}) => this.startLocked(await this.d.repo.getById(vm.id), options),
            stop: async (timeoutMs = DEFAULT_STOP_TIMEOUT_MS) => this.stopLocked(await this.d.repo.getById(vm.id), timeoutMs),
            kill: async (reason) => this.killLocked(await this.d.repo.getById(vm.id), reason),
          };
          return fn(h);
        }),
      describe,
    );
  }

  /**
   * Creates a new VM (a clone or an import) under the creator's name: fresh identity, disks prepared by
   * `prepareDisks` in the VM's private directory, the row inserted last, generation 1 recorded. Either all of
   * it exists afterwards or none of it.
   */
  async createDerived(
    ctx: RequestContext,
    input: {
      spec: VmSpec;
      owner: string;
      lineage: Lineage;
      baseVmId?: string | undefined;
      resumeSnapshotId?: string | undefined;
      purpose?: string | null | undefined;
      approver?: string | null | undefined;
      expiresAt?: string | null | undefined;
      labels?: Record<string, string> | undefined;
      /** The source's security floor: a copy keeps the constraints of what it copies (never `{}` by accident). */
      securityFloor: Record<string, string>;
      prepareDisks: (l: VmLayout) => Promise<void>;
      reason: "clone" | "import";
    },
  ): Promise<VmRecord> {
    // Before anything exists: a refused clone or import leaves no directory, row or registration behind.
    this.checkOwnershipPolicy(`Cannot create VM ${q(input.spec.name)} (${input.reason})`, input);
    await this.d.users.checkApprover(input.approver, ctx.actor.name, `Cannot create VM ${q(input.spec.name)} (${input.reason})`);
    return this.core.locks.run(`name:${input.spec.name}`, async () => {
      if (await this.d.repo.findByName(input.spec.name)) throw errors.vmExists(input.spec.name);
      const id = randomUUID();
      const vmgenid = randomUUID();
      const vm = await this.materialize({ id, spec: input.spec, vmgenid, generation: 1, owner: input.owner }, input.prepareDisks, () =>
        this.d.repo.insert({
          id,
          name: input.spec.name,
          spec: input.spec,
          state: "stopped",
          host: this.d.hostName,
          vmgenid,
          generation: 1,
          owner: input.owner,
          approver: input.approver ?? null,
          purpose: input.purpose ?? null,
          expiresAt: input.expiresAt ?? null,
          labels: input.labels ?? {},
          lineage: input.lineage,
          isTemplate: false,
          createdBy: ctx.actor.name,
          createdAt: new Date().toISOString(),
          baseVmId: input.baseVmId ?? null,
          resumeSnapshotId: input.resumeSnapshotId ?? null,
          securityFloor: input.securityFloor,
        }),
      );
      await this.d.generations.record(vm.id, { generation: 1, parentGeneration: null, vmgenid, reason: input.reason, snapshot: input.lineage.snapshot ?? null, sourceVmId: input.lineage.sourceVm?.id ?? null, createdBy: ctx.actor.name });
      // The new VM's own story starts with its creation, whatever the operation that made it is filed under.
      await this.d.audit.append({
        actor: ctx.actor.name,
        action: "vm.create",
        target: this.target(vm),
        result: "ok",
        requestId: ctx.requestId,
        details: { via: input.reason, lineage: input.lineage, owner: vm.owner, vmgenid },
      });
      return vm;
    });
  }

  /**
   * The ownership fields of every new VM (vm-ownership.ts): `createDerived` checks them itself; a capability that
   * does costly work first calls this before that work.
   */
  checkOwnershipPolicy(context: string, fields: { approver?: string | null | undefined; purpose?: string | null | undefined; expiresAt?: string | null | undefined }, code: "VIGIL_INVALID_SPEC" | "VIGIL_BAD_REQUEST" = "VIGIL_BAD_REQUEST"): void {
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
    return this.view(vm);
  }

  private layout(vm: { id: string }): VmLayout {
    return this.core.layout(vm);
  }

  private view(vm: VmRecord): VmView {
    return this.core.view(vm);
  }

  /**
   * The VM named `name` for an operation by `ctx`. A VM the actor may not even read is answered exactly like a
   * name that does not exist (404), so names are not disclosed across owners; both are audited as denied
   * (`vm.read` missing). Actors who may read every VM just get the 404 for a missing name. Capabilities that
   * act on a VM by name look it up here before their own authorization.
   */
  lookup(ctx: RequestContext, name: string, action: string): Promise<VmRecord> {
    return this.core.lookup(ctx, name, action);
  }

  private target(vm: VmRecord) {
    return this.core.target(vm);
  }

  /** The live runtime of a VM that must be running. */
  private runtime(vm: VmRecord): VmRuntime {
    return this.core.runtime(vm);
  }

  /** Runs `fn` under the VM's operation lock with a freshly read record. */
  private locked<T>(vm: VmRecord, fn: (fresh: VmRecord) => Promise<T>): Promise<T> {
    return this.core.locked(vm, fn);
  }

  // ---- reads ---------------------------------------------------------------------------------------------

  async list(ctx: RequestContext): Promise<VmView[]> {
    // Anyone who could read some VM may list; the list then holds only the VMs they may read.
    await this.d.guard.authorize(ctx, { action: "vm.list", permission: "vm.read", target: { kind: "vm" }, owner: `user:${ctx.actor.name}`, readOnly: true });
    const all = await this.d.repo.list();
    const visible = seesAllVms(ctx.actor) ? all : all.filter((vm) => can(ctx.actor, "vm.read", vm.owner));
    return visible.map((vm) => this.view(vm));
  }

  async show(ctx: RequestContext, name: string): Promise<VmView> {
    const vm = await this.lookup(ctx, name, "vm.show");
    await this.d.guard.authorize(ctx, { action: "vm.show", permission: "vm.read", target: this.target(vm), owner: vm.owner, readOnly: true });
    return this.view(vm);
  }

  /** Whether the actor may read the VM with this id (for filtering event streams); false for unknown ids. */
  async mayRead(ctx: RequestContext, vmId: string | null): Promise<boolean> {
    if (vmId === null) return false;
    const vm = await this.d.repo.getById(vmId).catch(() => undefined);
    return vm !== undefined && can(ctx.actor, "vm.read", vm.owner);
  }

  /** The captured serial console output (the last `maxBytes`). */
  consoleLog(ctx: RequestContext, name: string, maxBytes = 256 * 1024): Promise<string> {
    return consoleLog(this.core, ctx, name, maxBytes);
  }

  // ---- create / destroy ----------------------------------------------------------------------------------

  async create(ctx: RequestContext, input: unknown): Promise<VmView> {
    const rawName = typeof input === "object" && input !== null && typeof (input as { name?: unknown }).name === "string" ? (input as { name: string }).name.slice(0, 64) : null;
    // A VM for yourself or your groups needs vm.create; for anyone else also vm.chown on every VM (admins).
    const rawOwner = typeof input === "object" && input !== null ? (input as { owner?: unknown }).owner : undefined;
    if (typeof rawOwner === "string" && !ownsVm(ctx.actor, rawOwner) && can(ctx.actor, "vm.create")) {
      await this.d.guard.authorize(ctx, { action: "vm.create", permission: "vm.chown", target: { kind: "vm", name: rawName }, details: { owner: rawOwner.slice(0, 64) } });
    }
    return this.d.guard.run(
      ctx,
      { action: "vm.create", permission: "vm.create", target: { kind: "vm", name: rawName }, targetIdOf: (v: VmView) => v.id },
      async () => {
        const req = parseOrThrow(createVmRequestSchema, input, "VM spec", "VIGIL_INVALID_SPEC");
        const owner = await resolveOwner(this.d.users, ctx, req.owner);
        this.checkOwnershipPolicy("Invalid VM spec", req, "VIGIL_INVALID_SPEC");
        await this.d.users.checkApprover(req.approver, ctx.actor.name, "Invalid VM spec");
        return this.core.locks.run(`name:${req.name}`, async () => {
          if (await this.d.repo.findByName(req.name)) throw errors.vmExists(req.name);
          checkHostLimits(req, this.hostFacts());
          const image = this.d.catalog.get(req.image);
          const spec = resolveSpec(req, image, { cpu: "max" });
          const id = randomUUID();
          const vmgenid = randomUUID();
          const vm = await this.materialize(
            { id, spec, vmgenid, generation: 1, owner },
            (l) => this.createDisks(spec, l),
            async () =>
              this.d.repo.insert({
                id,
                name: spec.name,
                spec,
                state: "stopped",
                host: this.d.hostName,
                vmgenid,
                generation: 1,
                owner,
                approver: req.approver ?? null,
                purpose: req.purpose ?? null,
                expiresAt: req.expiresAt ?? null,
                labels: req.labels ?? {},
                lineage: { kind: "image", image: image.name },
                isTemplate: false,
                createdBy: ctx.actor.name,
                createdAt: new Date().toISOString(),
              }),
          );
          await this.d.generations.record(vm.id, { generation: 1, parentGeneration: null, vmgenid, reason: "create", snapshot: null, sourceVmId: null, createdBy: ctx.actor.name });
          return this.view(vm);
        });
      },
      (v) => ({ id: v.id, image: v.spec.image, owner: v.owner, vmgenid: v.vmgenid }),
    );
  }

  /** The disks of a VM created from an image: overlays on the image's disk, or blank disks. */
  private async createDisks(spec: VmSpec, l: VmLayout): Promise<void> {
    for (const disk of spec.disks) {
      const file = diskFile(l.disksDir, disk.name);
      if (disk.backing) await createOverlay(file, disk.backing, disk.sizeMiB);
      else await createBlank(file, disk.sizeMiB ?? 1024);
    }
  }

  /**
   * Creates a VM's private directory, lets `prepareDisks` fill its disks directory, then inserts its row. If
   * anything fails, the directory is removed and no row exists: a half-created VM is never left behind.
   */
  private async materialize(
    identity: { id: string; spec: VmSpec; vmgenid: string; generation: number; owner: string },
    prepareDisks: (l: VmLayout) => Promise<void>,
    insertRow: () => Promise<VmRecord>,
  ): Promise<VmRecord> {
    // The owner's quotas hold for every VM-creating path; its lock makes check and insert one step.
    return this.core.locks.run(`owner:${identity.owner}`, async () => {
      const usage = await this.core.usage(identity.owner);
      checkCreateQuota(`Cannot create VM ${q(identity.spec.name)}`, identity.owner, usage.owner, await this.d.users.quotasFor(identity.owner, this.d.quotas ?? {}), identity.spec);
      return this.materializeLocked(identity, prepareDisks, insertRow);
    });
  }

  private async materializeLocked(
    identity: { id: string; spec: VmSpec; vmgenid: string; generation: number },
    prepareDisks: (l: VmLayout) => Promise<void>,
    insertRow: () => Promise<VmRecord>,
  ): Promise<VmRecord> {
    const l = this.layout(identity);
    // Recorded before the directory exists: if vigil dies before the end, the next start erases it (sweepLeftovers).
    const intent = await this.d.registry.intend(identity.id, "materialize", l.dir);
    try {
      ensurePrivateDir(this.d.home.vmsDir);
      ensurePrivateDir(l.dir);
      ensurePrivateDir(l.disksDir);
      for (const p of [l.qmpSocket, l.serialSocket, l.agentSocket, l.vtimeSocket]) checkSocketPath(p);
      await prepareDisks(l);
      const vm = await insertRow();
      for (const disk of identity.spec.disks) await this.d.registry.register(vm.id, diskFile(l.disksDir, disk.name), "disk");
      await this.d.locations.moveTo(vm.id, this.d.hostName, l.dir);
      await this.d.registry.fulfil(intent);
      return vm;
    } catch (err) {
      // A half-made VM may hold a full copy of another VM's disk: overwritten, not just unlinked.
      eraseTree(this.d.home.vmsDir, l.dir);
      await this.d.repo.delete(identity.id).catch(() => undefined);
      await this.d.registry.fulfil(intent);
      throw err;
    }
  }

  /**
   * Deletes a VM. With `purge`, every registered file of the VM that vigil can reach (its disks, logs, and
   * copies such as exported bundles on this host) is overwritten before unlinking, and the report says what
   * was destroyed and what could not be reached.
   */
  async destroy(ctx: RequestContext, name: string, options: { force?: boolean | undefined; purge?: boolean | undefined } = {}): Promise<RemovalReport> {
    const vm = await this.lookup(ctx, name, options.purge ? "vm.purge" : "vm.destroy");
    const action = options.purge ? "vm.purge" : "vm.destroy";
    return this.d.guard.run(
      ctx,
      { action, permission: "vm.delete", target: this.target(vm), owner: vm.owner, details: { force: options.force ?? false } },
      () =>
        this.locked(vm, async (fresh) => {
          if (isLive(fresh.state) && options.force) await this.killLocked(fresh, "destroy");
          const current = await this.d.repo.getById(vm.id);
          assertAllowed("destroy", current.name, current.state, options.purge ? "purge" : "destroy");
          const dependents = await this.d.repo.dependentsOf(current.id);
          if (dependents.length > 0) {
            throw new VigilError("VIGIL_CONFLICT", `Cannot ${options.purge ? "purge" : "destroy"} template ${q(current.name)}: linked clones depend on it (${dependents.map((x) => x.name).join(", ")})`);
          }
          return this.removeVm(current, options.purge ? "purged" : "deleted", options.purge ?? false);
        }),
      (r) => ({ destroyed: r.destroyed.map((f) => f.path), unreachable: r.unreachable, ...(r.derived.length > 0 ? { derived: r.derived.map((x) => x.name) } : {}) }),
    );
  }

  /** VMs descended from `vm` by clone or import, transitively (breadth first, bounded). */
  private async derivedFrom(vm: VmRecord): Promise<RemovalReport["derived"]> {
    const all = await this.d.repo.list();
    const out: RemovalReport["derived"] = [];
    const queue = [vm.id];
    const seen = new Set(queue);
    while (queue.length > 0 && out.length < 1000) {
      const id = queue.shift()!;
      for (const v of all) {
        if (v.lineage.sourceVm?.id !== id || seen.has(v.id) || v.lineage.kind === "image") continue;
        seen.add(v.id);
        queue.push(v.id);
        out.push({ name: v.name, kind: v.lineage.kind, from: v.lineage.sourceVm.name });
      }
    }
    return out;
  }

  /** Deletes a stopped VM's files and row; the audit log and the data registry keep its story. */
  async removeVm(vm: VmRecord, how: string, purge: boolean): Promise<RemovalReport> {
    const l = this.layout(vm);
    const report: RemovalReport = { id: vm.id, name: vm.name, destroyed: [], unreachable: [], derived: purge ? await this.derivedFrom(vm) : [] };
    for (const f of await this.d.registry.listForRemoval(vm.id)) {
      if (f.host !== this.d.hostName) {
        report.unreachable.push({ path: f.path, host: f.host, purpose: f.purpose, why: "on another host" });
        continue;
      }
      if (f.origin !== "vigil") {
        report.unreachable.push({ path: f.path, host: f.host, purpose: f.purpose, why: "reported by a client, not made by vigil: never touched" });
        continue;
      }
      // vigil erases only what it made, below this VM's own directory, and only if it is still that file.
      if (!f.path.startsWith(l.dir + "/")) {
        report.unreachable.push({ path: f.path, host: f.host, purpose: f.purpose, why: `refused: outside the VM's directory ${l.dir}` });
        continue;
      }
      if (!purge) {
        if (existsSync(f.path)) {
          rmSync(f.path, { force: true });
          report.destroyed.push({ path: f.path, purpose: f.purpose, bytes: 0 });
        }
        await this.d.registry.markRemoved(vm.id, f.path, how);
        continue;
      }
      const r = eraseOwnedFile(l.dir, f.path, f.identity);
      if (r.erased) report.destroyed.push({ path: f.path, purpose: f.purpose, bytes: r.bytes });
      else if (!r.missing) report.unreachable.push({ path: f.path, host: f.host, purpose: f.purpose, why: `refused: ${r.why}` });
      // A refused name goes with the directory below, unwritten: the registration says so.
      await this.d.registry.markRemoved(vm.id, f.path, r.erased || r.missing ? how : `${how}; the name was removed, not erased: ${r.why}`);
    }
    if (purge) {
      // Anything else in the VM's directory that was never registered (sockets, pid file) is erased too.
      for (const path of listFiles(l.dir)) {
        const r = eraseOwnedFile(l.dir, path);
        if (!r.erased && !r.missing) report.unreachable.push({ path, host: this.d.hostName, purpose: "unregistered", why: `refused: ${r.why}` });
      }
    }
    rmSync(l.dir, { recursive: true, force: true });
    await this.d.locations.close(vm.id);
    await this.d.repo.delete(vm.id);
    return report;
  }

  // ---- lifecycle -----------------------------------------------------------------------------------------

  async start(ctx: RequestContext, name: string, options: StartOptions = {}): Promise<VmView> {
    const vm = await this.lookup(ctx, name, "vm.start");
    return this.d.guard.run(
      ctx,
      { action: "vm.start", permission: "vm.control", target: this.target(vm), owner: vm.owner, details: { wait: options.wait ?? false, paused: options.paused ?? false } },
      async () => {
        const started = await this.locked(vm, async (fresh) => {
          assertAllowed("start", fresh.name, fresh.state);
          if (fresh.isTemplate) throw new VigilError("VIGIL_INVALID_STATE", `Cannot start VM ${q(fresh.name)}: it is a template (clone it instead)`);
          this.checkNotExpired(fresh, `Cannot start VM ${q(fresh.name)}`);
          return this.startLocked(fresh, options);
        });
        if (options.wait && started.spec.agent && !options.paused) {
          const t0 = performance.now();
          await this.waitForAgent(started, options.waitTimeoutMs ?? 120_000);
          this.d.log.debug({ vm: vm.name, phase: "agent answered", ms: Math.round(performance.now() - t0) }, "start timing");
        }
        return this.view(await this.d.repo.getById(vm.id));
      },
      (v) => ({ pid: v.pid, accelerator: v.accelerator, vmgenid: v.vmgenid }),
    );
  }

  private launchPlan(vm: VmRecord): LaunchPlan {
    const l = this.layout(vm);
    return {
      spec: vm.spec,
      uuid: vm.id,
      vmgenid: vm.vmgenid,
      accel: this.d.accel.accel,
      paths: l,
      diskFiles: Object.fromEntries(vm.spec.disks.map((d) => [d.name, diskFile(l.disksDir, d.name)])),
    };
  }

  /** The exact QEMU command line vigil runs for this VM (like Proxmox's `qm showcmd`). */
  async qemuCommand(ctx: RequestContext, name: string): Promise<{ binary: string; argv: string[] }> {
    const vm = await this.lookup(ctx, name, "vm.showcmd");
    await this.d.guard.authorize(ctx, { action: "vm.showcmd", permission: "vm.read", target: this.target(vm), owner: vm.owner, readOnly: true });
    if (!jailEnabled()) return { binary: QEMU_BINARY, argv: buildArgv(this.launchPlan(vm)) };
    const jail = await planJail(this.d.repo.db, vm, this.layout(vm), this.d.accel.accel, (backing) => buildArgv({ ...this.launchPlan(vm), backing }));
    return { binary: jail.binary, argv: jail.argv };
  }

  /** Starts QEMU for a VM whose lock is held. On failure the VM is back in its previous state. */
  private async startLocked(vm: VmRecord, options: StartOptions): Promise<VmRecord> {
    // The host that starts a VM may not be the one that created it: check its limits here too.
    checkHostLimits(vm.spec, this.hostFacts(), `Cannot start VM ${q(vm.name)}`);
    // Callers check this before they change anything; here it holds for every path that starts QEMU.
    this.checkNotExpired(vm, `Cannot start VM ${q(vm.name)}`);
    // An open NIC reaches the host's loopback through slirp unless the nftables guard is in place (re-installed
    // here: idempotent, and someone may have flushed the ruleset since the daemon started).
    const open = vm.spec.nics.filter((n) => !n.restrict).map((n) => n.name);
    if (open.length > 0) {
      await installLoopbackGuard().catch((err: unknown) => {
        throw new VigilError("VIGIL_HOST", `Cannot start VM ${q(vm.name)}: its open NIC ${open.join(", ")} needs the host loopback guard (nftables), which cannot be installed: ${messageOf(err)}`, { field: "nics", cause: err });
      });
    }
    const previous = vm.state;
    const l = this.layout(vm);
    const t0 = performance.now();
    const mark = (phase: string) => this.d.log.debug({ vm: vm.name, phase, ms: Math.round(performance.now() - t0) }, "start timing");
    // One start at a time passes this point: the memory of live VMs (this one marked starting) is then exact.
    await this.core.locks.run("quota:live-memory", async () => {
      const usage = await this.core.usage(vm.owner);
      checkStartQuota(`Cannot start VM ${q(vm.name)}`, vm.owner, usage.owner, await this.d.users.quotasFor(vm.owner, this.d.quotas ?? {}), vm.spec.memoryMiB, usage.hostLiveMiB, this.hostFacts());
      await this.d.repo.update(vm.id, { state: "starting" });
    });
    let pid: number | undefined;
    // Never silently unjailed: VIGIL_JAIL=off is the one, logged, opt-out (docs/jail.md).
    const jailed = jailEnabled();
    if (!jailed) this.d.log.warn({ vm: vm.name }, "VIGIL_JAIL=off: starting QEMU without its jail");
    try {
      if (jailed) {
        checkJailAvailable();
        reclaimJailDirs(l);
      }
      ensurePrivateDir(l.dir);
      ensurePrivateDir(l.runDir);
      // Guest RAM is a memfd inside QEMU (qemu/argv.ts): no file to create, register or remove.
      await eraseLegacyRamFile(this.core, vm);
      // Created here, empty and 0600, so that QEMU (which would create it 0644) fills a file only vigil's user can read.
      ensurePrivateFile(l.consoleLog);
      // Disks made by an older vigil (0644) are repaired here, before the guest writes to them again.
      for (const d of vm.spec.disks) {
        const file = diskFile(l.disksDir, d.name);
        if (existsSync(file)) restrictToOwner(file);
      }
      const jail = jailed ? await planJail(this.d.repo.db, vm, l, this.d.accel.accel, (backing) => buildArgv({ ...this.launchPlan(vm), backing })) : undefined;
      if (jail) handOverFiles(vm, l, jail.confinement.uid);
      const started = await startQemu(buildArgv(this.launchPlan(vm)), { qmpSocket: l.qmpSocket, pidFile: l.pidFile, qemuLog: l.qemuLog, sockets: [l.qmpSocket, l.serialSocket, l.agentSocket, l.vtimeSocket], jail });
      pid = started.pid;
      mark("qmp socket open");
      const rt = await VmRuntime.attach(vm.id, pid, l, this.d.log, started.exited);
      this.supervisor.adopt(vm, rt);
      for (const hook of this.beforeContHooks) await hook(vm, rt);
      await options.beforeCont?.(rt);
      if (!options.paused) await rt.qmp.execute("cont");
      mark("guest running");
      const updated = await this.d.repo.update(vm.id, { state: options.paused ? "paused" : "running", pid, accelerator: this.d.accel.accel });
      for (const [path, purpose] of [[l.consoleLog, "console-log"], [consoleBackup(l.consoleLog), "console-log"], [l.qemuLog, "qemu-log"]] as const) {
        await this.d.registry.register(vm.id, path, purpose, { hash: false });
      }
      return updated;
    } catch (err) {
      const rt = this.core.runtimes.get(vm.id);
      if (rt) await rt.kill("start failed");
      else if (pid !== undefined) {
        signal(pid, "SIGKILL");
        await waitForExit(pid, 5000);
      }
      this.core.runtimes.delete(vm.id);
      if (jailed) removeCgroups(hostCgroupSpecs(vm.id));
      await this.d.repo.update(vm.id, { state: previous, pid: null });
      throw err;
    }
  }

  private async waitForAgent(vm: VmRecord, timeoutMs: number): Promise<void> {
    const rt = this.runtime(vm);
    const agent = await rt.agentClient();
    await Promise.race([
      agent.waitUntilAnswering(timeoutMs),
      rt.exited.then((r) => {
        throw new VigilError("VIGIL_QEMU", `VM ${q(vm.name)} exited while waiting for its agent (${r.kind === "crashed" ? r.detail : r.reason})`);
      }),
    ]);
  }

  async stop(ctx: RequestContext, name: string, options: { timeoutMs?: number | undefined } = {}): Promise<StopResult & { vm: VmView }> {
    const vm = await this.lookup(ctx, name, "vm.stop");
    return this.d.guard.run(
      ctx,
      { action: "vm.stop", permission: "vm.control", target: this.target(vm), owner: vm.owner },
      () =>
        this.locked(vm, async (fresh) => {
          assertAllowed("stop", fresh.name, fresh.state);
          const result = await this.stopLocked(fresh, options.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS);
          return { ...result, vm: this.view(await this.d.repo.getById(vm.id)) };
        }),
      (r) => ({ how: r.how }),
    );
  }

  /** ACPI power button, then QMP quit, then SIGKILL: each step only if the previous one did not work in time. */
  private async stopLocked(vm: VmRecord, timeoutMs: number): Promise<StopResult> {
    const rt = this.runtime(vm);
    await this.d.repo.update(vm.id, { state: "stopping" });
    rt.expectedExit = "stop";
    let how: StopResult["how"] = "acpi";
    const within = (ms: number) => Promise.race([rt.exited.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms).unref())]);
    try {
      if (vm.state === "paused") await rt.qmp.execute("cont"); // a paused guest cannot handle the power button
      await rt.qmp.execute("system_powerdown");
    } catch {
      /* QEMU may already be going away */
    }
    if (!(await within(timeoutMs))) {
      how = "quit";
      await rt.qmp.execute("quit").catch(() => undefined);
      if (!(await within(5000))) {
        how = "killed";
        await rt.kill("stop");
      }
    }
    this.core.runtimes.delete(vm.id);
    await this.d.repo.update(vm.id, { state: "stopped", pid: null });
    return { how };
  }

  async kill(ctx: RequestContext, name: string): Promise<VmView> {
    const vm = await this.lookup(ctx, name, "vm.kill");
    return this.d.guard.run(ctx, { action: "vm.kill", permission: "vm.control", target: this.target(vm), owner: vm.owner }, () =>
      this.locked(vm, async (fresh) => {
        assertAllowed("kill", fresh.name, fresh.state);
        await this.killLocked(fresh, "kill");
        return this.view(await this.d.repo.getById(vm.id));
      }),
    );
  }

  private async killLocked(vm: VmRecord, reason: string): Promise<void> {
    const rt = this.core.runtimes.get(vm.id);
    if (rt) await rt.kill(reason);
    else if (vm.pid !== null && isQemuOf(vm.pid, vm.id)) {
      signal(vm.pid, "SIGKILL");
      await waitForExit(vm.pid, 10_000);
    }
    this.core.runtimes.delete(vm.id);
    removeCgroups(hostCgroupSpecs(vm.id));
    await this.d.repo.update(vm.id, { state: "stopped", pid: null });
  }

  async pause(ctx: RequestContext, name: string): Promise<VmView> {
    return this.qmpTransition(ctx, name, "pause", "stop", "paused");
  }

  async resume(ctx: RequestContext, name: string): Promise<VmView> {
    return this.qmpTransition(ctx, name, "resume", "cont", "running");
  }

  private async qmpTransition(ctx: RequestContext, name: string, action: "pause" | "resume", command: string, to: VmState): Promise<VmView> {
    const vm = await this.lookup(ctx, name, `vm.${action}`);
    return this.d.guard.run(ctx, { action: `vm.${action}`, permission: "vm.control", target: this.target(vm), owner: vm.owner }, () =>
      this.locked(vm, async (fresh) => {
        assertAllowed(action, fresh.name, fresh.state);
        await this.runtime(fresh).qmp.execute(command);
        return this.view(await this.d.repo.update(vm.id, { state: to }));
      }),
    );
  }

  /** A fresh QEMU process: stop (ACPI, with fallbacks) then start, under one lock. The vmgenid is unchanged. */
  async restart(ctx: RequestContext, name: string, options: StartOptions & { timeoutMs?: number | undefined } = {}): Promise<VmView> {
    const vm = await this.lookup(ctx, name, "vm.restart");
    return this.d.guard.run(ctx, { action: "vm.restart", permission: "vm.control", target: this.target(vm), owner: vm.owner }, async () => {
      const started = await this.locked(vm, async (fresh) => {
        assertAllowed("restart", fresh.name, fresh.state);
        this.checkNotExpired(fresh, `Cannot restart VM ${q(fresh.name)}`);
        await this.stopLocked(fresh, options.timeoutMs ?? DEFAULT_STOP_TIMEOUT_MS);
        return this.startLocked(await this.d.repo.getById(vm.id), options);
      });
      if (options.wait && started.spec.agent) await this.waitForAgent(started, options.waitTimeoutMs ?? 120_000);
      return this.view(await this.d.repo.getById(vm.id));
    });
  }

  // ---- guest agent ---------------------------------------------------------------------------------------

  /** Pings the guest agent `count` times; the round-trip times as the daemon measured them. */
  async pingAgent(ctx: RequestContext, name: string, count: number): Promise<{ rttMs: number[] }> {
    return this.withAgent(ctx, name, { action: "vm.guest-ping", permission: "vm.read" }, async (a) => {
      const rttMs: number[] = [];
      for (let i = 0; i < Math.min(count, 1000); i++) {
        const t0 = performance.now();
        await a.ping(5000);
        rttMs.push(performance.now() - t0);
      }
      return { rttMs };
    });
  }

  /** The guest agent of a running VM, for a read (`vm.read`) or an exec (`vm.exec`). */
  async withAgent<T>(ctx: RequestContext, name: string, op: { action: string; permission: "vm.read" | "vm.exec"; details?: Record<string, unknown> }, fn: (agent: import("../guest-agent/agent-client.ts").AgentClient) => Promise<T>): Promise<T> {
    const vm = await this.lookup(ctx, name, op.action);
    return this.d.guard.run(ctx, { action: op.action, permission: op.permission, target: this.target(vm), owner: vm.owner, details: op.details, readOnly: op.permission === "vm.read" }, async () => {
      assertAllowed("agent", vm.name, vm.state, "talk to the agent of");
      if (!vm.spec.agent) throw new VigilError("VIGIL_INVALID_STATE", `Cannot talk to the agent of VM ${q(vm.name)}: it was created without one`);
      return fn(await this.runtime(vm).agentClient());
    });
  }

  /** For the console bridge: authorizes, audits and returns the serial socket of a live VM. */
  openConsole(ctx: RequestContext, name: string): Promise<string> {
    return openConsole(this.core, ctx, name);
  }

  /** The runtime of a running VM by id, for capabilities built on top (introspection, snapshots). */
  runtimeOf(vm: VmRecord): VmRuntime {
    return this.runtime(vm);
  }

  // ---- supervision ---------------------------------------------------------------------------------------

  /**
   * Finds every VM's QEMU again after vigil (re)starts (vm-recovery.ts): a QEMU is only trusted if pid file,
   * process and uuid agree; interrupted operations are rolled back; a VM whose QEMU died meanwhile is crashed.
   */
  recover(): Promise<{ reattached: string[]; crashed: string[] }> {
    return recover(this.core, this.supervisor);
  }

  /** At start, before any request: erases what a crash left in `vms/` (vm-recovery.ts). */
  sweepLeftovers(): Promise<Array<{ path: string; files: number; bytes: number }>> {
    return sweepLeftovers(this.core);
  }

  /** Detaches from every QEMU without stopping it: VMs keep running while vigil is away. */
  close(): Promise<void> {
    return this.supervisor.close();
  }
}
