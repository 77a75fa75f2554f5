/**
 * Snapshots: QEMU internal snapshots in the VM's qcow2 disks, as a tree per VM.
 *
 * - with memory (running VM): the `snapshot-save` job — RAM and device state into the first disk, all disks
 *   snapshotted at the same instant;
 * - disk-only, running VM: the guest's /data is frozen through the agent when it answers (crash-consistent
 *   otherwise, and recorded as such), then one QMP `transaction` of `blockdev-snapshot-internal-sync`;
 * - disk-only, stopped VM: `qemu-img snapshot -c` on every disk.
 *
 * Revert is a fork: a memory snapshot is loaded into a fresh QEMU process that has a new vmgenid GUID, so the
 * guest kernel reseeds its RNG; the VM's generation goes up and the generation tree records from where. Internal
 * snapshots share clusters by refcount, so deleting one never breaks another: its children are re-parented.
 */
import { chmodSync, renameSync, rmSync, statSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { VigilError, messageOf, q } from "../errors.ts";
import type { RequestContext } from "../auth/guard.ts";
import { SYSTEM_ACTOR } from "../auth/permissions.ts";
import type { AuditLog } from "../audit/audit-log.ts";
import type { Logger } from "../log.ts";
import { runJob, type JobProgress } from "../qemu/jobs.ts";
import { QEMU_IMG } from "../qemu/qemu-img.ts";
import { runCommand } from "../util/run-command.ts";
import type { VmRuntime } from "../host/vm-runtime.ts";
import type { LockedVm, VmService } from "../vm/vm-service.ts";
import type { VmRecord } from "../vm/vm-repository.ts";
import { diskFile } from "../vm/vm-view.ts";
import { isLive } from "../vm/state-machine.ts";
import type { GenerationLog } from "../vtime/generations.ts";
import type { ProgressBus } from "../util/progress.ts";
import type { DataRegistry } from "../provenance/data-registry.ts";
import { spawnWithProgress } from "../util/progress-command.ts";
import { Qcow2Image } from "./qcow2.ts";
import type { Snapshot, SnapshotRepository } from "./snapshot-repository.ts";

export interface SnapshotInput {
  name: string;
  description?: string | undefined;
  memory?: boolean | undefined;
  singleUse?: boolean | undefined;
}

export const snapshotNamePattern = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/** Decides whether a revert may go back to a snapshot (the security floor, single use); throws if not. */
export type RevertPolicy = (vm: VmRecord, snapshot: Snapshot, options: { force: boolean; reason: string | undefined }) => Promise<{ forced: boolean }>;
/** Runs after a forced revert below the floor ("carry out certain tasks outside the VM"). */
export type ReapplyHook = (vm: VmRecord, snapshot: Snapshot, reason: string) => Promise<Record<string, unknown>>;

export interface SnapshotNode {
  name: string;
  /** The parent snapshot's name; null for a root. Together these make the tree. */
  parent: string | null;
  kind: "disk" | "memory";
  description: string;
  createdBy: string;
  createdAt: string;
  generation: number;
  vmStateSize: number;
  stateSha256: string | null;
  diskBytes: number;
  singleUse: boolean;
  resumedCount: number;
  current: boolean;
}

export interface SnapshotDeps {
  vms: VmService;
  snapshots: SnapshotRepository;
  generations: GenerationLog;
  audit: AuditLog;
  progress: ProgressBus;
  log: Logger;
  policy: RevertPolicy;
  reapply: ReapplyHook;
  /** Intents of multi-disk steps, so a crash half-way is finished or rolled back at the next start. */
  registry: DataRegistry;
}

function diskFiles(h: { vm: VmRecord; layout: { disksDir: string } }): string[] {
  return h.vm.spec.disks.map((d) => diskFile(h.layout.disksDir, d.name));
}

export class SnapshotService {
  constructor(private readonly d: SnapshotDeps) {}

  private progress(ctx: RequestContext, what: string) {
    return (p: JobProgress) => this.d.progress.emit({ requestId: ctx.requestId, what, current: p.current, total: p.total });
  }

  async create(ctx: RequestContext, vmName: string, input: SnapshotInput): Promise<Snapshot> {
    return this.d.vms.operate(
      ctx,
      vmName,
      { action: "snapshot.create", permission: "vm.modify", details: { snapshot: input.name, memory: input.memory ?? false, singleUse: input.singleUse ?? false } },
      (h) => this.createLocked(ctx, h, input),
      (s) => ({ snapshotId: s.id, kind: s.kind, vmStateSize: s.vmStateSize, stateSha256: s.stateSha256 }),
    );
  }

  /** Takes a snapshot of a VM whose operation lock the caller holds (also used by export --memory). */
  async createLocked(ctx: RequestContext, h: LockedVm, input: SnapshotInput): Promise<Snapshot> {
    const vm = h.vm;
    if (!snapshotNamePattern.test(input.name)) {
      throw new VigilError("VIGIL_BAD_REQUEST", `Invalid snapshot name ${q(input.name)}: use 1-64 letters, digits and ._- starting with a letter or digit`, { field: "name" });
    }
    if (await this.d.snapshots.find(vm.id, input.name)) throw new VigilError("VIGIL_CONFLICT", `Cannot create snapshot ${q(input.name)}: VM ${q(vm.name)} has one with that name`, { field: "name" });
    if (vm.isTemplate) throw new VigilError("VIGIL_INVALID_STATE", `Cannot snapshot VM ${q(vm.name)}: it is a template (frozen)`);
    if (vm.spec.disks.length === 0) throw new VigilError("VIGIL_INVALID_STATE", `Cannot snapshot VM ${q(vm.name)}: it has no disk to hold the snapshot`);
    const live = vm.state === "running" || vm.state === "paused";
    if (!live && vm.state !== "stopped" && vm.state !== "crashed") throw new VigilError("VIGIL_INVALID_STATE", `Cannot snapshot VM ${q(vm.name)}: it is ${vm.state}`);
    if (input.memory && !live) throw new VigilError("VIGIL_INVALID_STATE", `Cannot take a memory snapshot of VM ${q(vm.name)}: it is ${vm.state} (memory snapshots need a running or paused VM)`, { field: "memory" });
    if (input.singleUse && !input.memory) throw new VigilError("VIGIL_BAD_REQUEST", "Only memory snapshots can be single-use (a disk snapshot is never resumed, only rebooted)", { field: "singleUse" });

    const guestFacts: Snapshot["guestFacts"] = {};
    const nodes = vm.spec.disks.map((d) => d.name);
    if (live && input.memory) {
      const rt = h.runtime();
      const count = await reseedCount(rt);
      if (count !== undefined) guestFacts.reseedCount = count;
      await runJob(rt.qmp, "snapshot-save", { tag: input.name, vmstate: nodes[0], devices: nodes }, { onProgress: this.progress(ctx, "snapshot-save") });
    } else if (live) {
      const rt = h.runtime();
      guestFacts.quiesced = await withFrozenGuest(rt, vm, this.d.log, () =>
        rt.qmp.execute("transaction", { actions: nodes.map((n) => ({ type: "blockdev-snapshot-internal-sync", data: { device: n, name: input.name } })) }),
      );
    }
    let intent: string | undefined;
    if (!live) {
      // On every disk or on none: a failure on disk k takes the snapshot off the disks before it, and an intent
      // lets the next start do the same after a crash (until the snapshot's row exists).
      intent = await this.d.registry.intend(vm.id, "snapshot-create", h.layout.disksDir, { snapshot: input.name, disks: diskFiles(h) });
      try {
        await allOrNone(diskFiles(h), (f) => qemuImgSnapshot("-c", input.name, f), (f) => qemuImgSnapshot("-d", input.name, f), this.d.log);
      } catch (err) {
        await this.d.registry.fulfil(intent);
        throw err;
      }
    }
    const rootFile = diskFiles(h)[0]!;
    const { vmStateSize, stateSha256 } = input.memory ? savedStateOf(rootFile, input.name) : { vmStateSize: 0, stateSha256: null };
    const snap = await this.d.snapshots
      .insert({
      vmId: vm.id,
      name: input.name,
      parentId: vm.currentSnapshotId,
      description: input.description ?? "",
      kind: input.memory ? "memory" : "disk",
      spec: vm.spec,
      generation: vm.generation,
      vmgenid: vm.vmgenid,
      vmStateSize,
      stateSha256,
      diskBytes: diskFiles(h).reduce((n, f) => n + statSync(f).size, 0),
      floor: vm.securityFloor,
      guestFacts,
      singleUse: input.singleUse ?? false,
      createdBy: ctx.actor.name,
    })
      .catch(async (err: unknown) => {
        // No row, so no snapshot: the offline one comes off the disks again.
        if (intent) {
          for (const f of diskFiles(h)) await qemuImgSnapshot("-d", input.name, f).catch((e: unknown) => this.d.log.error({ vm: vm.name, disk: f, err: messageOf(e) }, "Cannot delete a snapshot whose row was not written"));
          await this.d.registry.fulfil(intent);
        }
        throw err;
      });
    if (intent) await this.d.registry.fulfil(intent);
    await h.update({ currentSnapshotId: snap.id });
    return snap;
  }

  async list(ctx: RequestContext, vmName: string): Promise<{ vm: string; current: string | null; snapshots: SnapshotNode[] }> {
    const vm = await this.d.vms.show(ctx, vmName);
    const all = await this.d.snapshots.list(vm.id);
    const current = await this.currentOf(vm.id);
    const names = new Map(all.map((s) => [s.id, s.name]));
    return {
      vm: vm.name,
      current: current ? (names.get(current) ?? null) : null,
      snapshots: all.map((s) => ({
        name: s.name,
        parent: s.parentId ? (names.get(s.parentId) ?? null) : null,
        kind: s.kind,
        description: s.description,
        createdBy: s.createdBy,
        createdAt: s.createdAt,
        generation: s.generation,
        vmStateSize: s.vmStateSize,
        stateSha256: s.stateSha256,
        diskBytes: s.diskBytes,
        singleUse: s.singleUse,
        resumedCount: s.resumedCount,
        current: s.id === current,
      })),
    };
  }

  private async currentOf(vmId: string): Promise<string | null> {
    const vms = await this.d.vms.recordById(vmId);
    return vms.currentSnapshotId;
  }

  async delete(ctx: RequestContext, vmName: string, name: string): Promise<{ deleted: string }> {
    return this.d.vms.operate(ctx, vmName, { action: "snapshot.delete", permission: "vm.modify", details: { snapshot: name } }, async (h) => {
      const snap = await this.d.snapshots.get(h.vm.id, h.vm.name, name);
      if (h.vm.state === "running" || h.vm.state === "paused") {
        await runJob(h.runtime().qmp, "snapshot-delete", { tag: name, devices: h.vm.spec.disks.map((d) => d.name) }, { onProgress: this.progress(ctx, "snapshot-delete") });
      } else if (h.vm.state === "stopped" || h.vm.state === "crashed") {
        for (const file of diskFiles(h)) await runCommand(QEMU_IMG, ["snapshot", "-d", name, file], { what: "Deleting a disk snapshot" });
      } else {
        throw new VigilError("VIGIL_INVALID_STATE", `Cannot delete snapshot ${q(name)} of VM ${q(h.vm.name)}: it is ${h.vm.state}`);
      }
      await this.d.snapshots.delete(snap);
      if (h.vm.currentSnapshotId === snap.id) await h.update({ currentSnapshotId: snap.parentId });
      return { deleted: name };
    });
  }

  /**
   * Goes back to a snapshot as a fork: new vmgenid, generation+1. A memory snapshot resumes in a fresh QEMU
   * process; a disk snapshot rolls the disks back and, if the VM was running, boots it again.
   */
  async revert(ctx: RequestContext, vmName: string, name: string, options: { force?: boolean | undefined; reason?: string | undefined; unsafeKeepVmgenid?: boolean | undefined } = {}): Promise<{ vm: ReturnType<VmService["describeVm"]>; generation: number; forced: boolean; reapplied?: Record<string, unknown> }> {
    // A reason justifies going below the security floor; without --force it would be recorded but mean nothing.
    if (options.reason !== undefined && !options.force) {
      throw new VigilError("VIGIL_BAD_REQUEST", `Cannot revert VM ${q(vmName)}: a "reason" is only accepted with "force" (a forced revert below the security floor)`, { field: "reason" });
    }
    if (options.unsafeKeepVmgenid) await this.d.vms.authorizeAlso(ctx, "snapshot.revert", "vm.unsafe", { kind: "vm", name: vmName }, { snapshot: name, unsafeKeepVmgenid: true });
    return this.d.vms.operate(
      ctx,
      vmName,
      { action: "snapshot.revert", permission: "vm.modify", details: { snapshot: name, force: options.force ?? false, reason: options.reason, unsafeKeepVmgenid: options.unsafeKeepVmgenid ?? false } },
      async (h) => {
        const vm = h.vm;
        const snap = await this.d.snapshots.get(vm.id, vm.name, name);
        if (vm.isTemplate) throw new VigilError("VIGIL_INVALID_STATE", `Cannot revert VM ${q(vm.name)}: it is a template`);
        if (!["stopped", "crashed", "running", "paused"].includes(vm.state)) throw new VigilError("VIGIL_INVALID_STATE", `Cannot revert VM ${q(vm.name)}: it is ${vm.state}`);
        // Every check before anything is destroyed: a refused revert leaves the VM exactly as it was.
        const { forced } = await this.d.policy(vm, snap, { force: options.force ?? false, reason: options.reason });
        const wasLive = isLive(vm.state);
        // A revert that starts QEMU (a memory snapshot, or a VM that was live) is a start.
        if (snap.kind === "memory" || wasLive) this.d.vms.checkNotExpired(vm, `Cannot revert VM ${q(vm.name)} to snapshot ${q(snap.name)}`);
        // What can be checked is checked before QEMU is killed or a disk is touched: every disk has the snapshot
        // (and the first one its saved state).
        checkRevertable(vm, diskFiles(h), snap);
        const generation = (await this.d.generations.list(vm.id)).reduce((m, g) => Math.max(m, g.generation), vm.generation) + 1;
        // The fork gets a new GUID so the guest reseeds; keeping the old one is the demonstrable unsafe case.
        const vmgenid = options.unsafeKeepVmgenid ? snap.vmgenid : randomUUID();
        const commit = async () => {
          await h.update({ vmgenid, generation, currentSnapshotId: snap.id });
          await this.d.generations.record(vm.id, { generation, parentGeneration: snap.generation, vmgenid, reason: "revert", snapshot: snap.name, sourceVmId: null, createdBy: ctx.actor.name });
        };
        if (wasLive) await h.kill("revert");
        if (snap.kind === "memory") {
          // QEMU gets the new identity on its command line; if the state cannot be loaded, the VM keeps its old
          // identity and generation (it is stopped: the process it ran in is gone).
          await h.update({ vmgenid, generation, currentSnapshotId: snap.id });
          try {
            await h.start({ beforeCont: (rt) => this.load(ctx, rt, vm, snap) });
          } catch (err) {
            await h.update({ vmgenid: vm.vmgenid, generation: vm.generation, currentSnapshotId: vm.currentSnapshotId });
            throw err;
          }
          await commit();
          await this.d.snapshots.markResumed(snap.id);
          void this.verifyReseed(vm.id, vm.name, generation, snap);
        } else {
          await this.revertDisks(vm, h.layout.disksDir, diskFiles(h), snap.name, generation, commit);
          if (wasLive) await h.start();
        }
        const reapplied = forced ? await this.d.reapply(await h.reload(), snap, options.reason ?? "") : undefined;
        return { vm: this.d.vms.describeVm(await h.reload()), generation, forced, ...(reapplied ? { reapplied } : {}) };
      },
      (r) => ({ generation: r.generation, vmgenid: r.vm.vmgenid, forced: r.forced }),
    );
  }

  /**
   * Rolls every disk back to `tag`, or none: an undo snapshot is taken on every disk first; a failure on one disk
   * (or in `commit`, the inventory's side) puts the disks already reverted back to it. An intent records the step:
   * after a crash, `recoverInterrupted` rolls back (if the inventory was not updated) or finishes.
   */
  private async revertDisks(vm: VmRecord, disksDir: string, files: string[], tag: string, generation: number, commit: () => Promise<void>): Promise<void> {
    const undo = `vigil-undo-${randomUUID()}`;
    const intent = await this.d.registry.intend(vm.id, "snapshot-revert", disksDir, { snapshot: tag, undo, disks: files, generation });
    try {
      await allOrNone(files, (f) => qemuImgSnapshot("-c", undo, f), (f) => qemuImgSnapshot("-d", undo, f), this.d.log);
      try {
        await allOrNone(files, (f) => qemuImgSnapshot("-a", tag, f), (f) => qemuImgSnapshot("-a", undo, f), this.d.log);
        await commit().catch(async (err: unknown) => {
          for (const f of files) await qemuImgSnapshot("-a", undo, f).catch((e: unknown) => this.d.log.error({ vm: vm.name, disk: f, err: messageOf(e) }, "Cannot roll a disk back after a failed revert"));
          throw err;
        });
      } finally {
        for (const f of files) await qemuImgSnapshot("-d", undo, f).catch((e: unknown) => this.d.log.warn({ vm: vm.name, disk: f, err: messageOf(e) }, "Cannot delete a revert's undo snapshot"));
      }
    } finally {
      await this.d.registry.fulfil(intent);
    }
  }

  /**
   * At start, before any request: multi-disk steps a crash cut short. A snapshot without its row is taken off
   * every disk; a disk revert is rolled back to its undo snapshot unless the inventory already records it (then
   * only the undo snapshots go). Each is audited as `snapshot.recovered`.
   */
  async recoverInterrupted(): Promise<number> {
    let n = 0;
    for (const intent of await this.d.registry.openIntents()) {
      if (intent.kind !== "snapshot-create" && intent.kind !== "snapshot-revert") continue;
      const data = intent.data as { snapshot?: unknown; undo?: unknown; disks?: unknown; generation?: unknown };
      const disks = Array.isArray(data.disks) ? data.disks.filter((d): d is string => typeof d === "string" && d.startsWith(intent.path + "/")) : [];
      const vm = await this.d.vms.recordById(intent.vmId).catch(() => undefined);
      if (vm && isLive(vm.state)) continue; // its disks are in use: left open, looked at again at the next start
      let outcome = vm ? "nothing to do" : "the VM no longer exists";
      try {
        if (vm && typeof data.snapshot === "string") {
          if (intent.kind === "snapshot-create") {
            if (await this.d.snapshots.find(vm.id, data.snapshot)) outcome = "completed before the crash";
            else {
              for (const f of disks) if (snapshotOn(f, data.snapshot)) await qemuImgSnapshot("-d", data.snapshot, f);
              outcome = "rolled back: the snapshot was taken off every disk";
            }
          } else if (typeof data.undo === "string") {
            const committed = vm.generation === data.generation && vm.currentSnapshotId !== null;
            for (const f of disks) {
              if (!snapshotOn(f, data.undo)) continue;
              if (!committed) await qemuImgSnapshot("-a", data.undo, f);
              await qemuImgSnapshot("-d", data.undo, f);
            }
            outcome = committed ? "finished: the revert was recorded, its undo snapshots deleted" : "rolled back: every disk is as before the revert";
          }
        }
      } catch (err) {
        this.d.log.error({ vm: intent.vmId, intent: intent.kind, err: messageOf(err) }, "Cannot recover an interrupted snapshot step; it is retried at the next start");
        continue;
      }
      await this.d.registry.fulfil(intent.id);
      await this.d.audit.append({ actor: SYSTEM_ACTOR.name, action: "snapshot.recovered", target: { kind: "vm", id: intent.vmId, name: vm?.name ?? null }, result: "ok", details: { step: intent.kind, snapshot: data.snapshot, outcome } });
      n++;
    }
    return n;
  }

  /**
   * The start hook for imported bundles with saved memory: the first start loads that state instead of booting,
   * once (the snapshot then counts as resumed), and the guest's reseed is verified like after a revert.
   */
  readonly resumeOnStart = async (vm: VmRecord, rt: VmRuntime): Promise<void> => {
    if (!vm.resumeSnapshotId) return;
    const snap = await this.d.snapshots.getById(vm.resumeSnapshotId);
    await this.load(undefined, rt, vm, snap);
    await this.d.vms.updateRecord(vm.id, { resumeSnapshotId: null });
    await this.d.snapshots.markResumed(snap.id);
    void this.verifyReseed(vm.id, vm.name, vm.generation, snap);
  };

  /** Loads a memory snapshot into a QEMU that is up but has not run a guest instruction yet. */
  async load(ctx: RequestContext | undefined, rt: VmRuntime, vm: VmRecord, snap: Snapshot): Promise<void> {
    const nodes = vm.spec.disks.map((d) => d.name);
    rt.loadedState = snap.name;
    await runJob(rt.qmp, "snapshot-load", { tag: snap.name, vmstate: nodes[0], devices: nodes }, ctx ? { onProgress: this.progress(ctx, "snapshot-load") } : {});
  }

  /**
   * After a fork, asks the guest whether its kernel saw the vmgenid change ("crng reseeded due to virtual
   * machine fork") and records the answer; a guest that did not is flagged rollback-unsafe in the audit log.
   */
  private async verifyReseed(vmId: string, vmName: string, generation: number, snap: Snapshot): Promise<void> {
    let status: "seen" | "not-seen" | "unsupported" = "unsupported";
    try {
      const vm = await this.d.vms.recordById(vmId);
      if (!vm.spec.agent) return;
      const rt = this.d.vms.runtimeOf(vm);
      const agent = await rt.agentClient();
      await agent.waitUntilAnswering(60_000);
      const count = await reseedCount(rt);
      if (count === undefined) status = "unsupported";
      else status = count > (snap.guestFacts.reseedCount ?? 0) ? "seen" : "not-seen";
    } catch (err) {
      this.d.log.warn({ vm: vmName, err: messageOf(err) }, "Cannot verify the guest's RNG reseed");
      return;
    }
    await this.d.generations.setReseed(vmId, generation, status);
    await this.d.audit.append({
      actor: SYSTEM_ACTOR.name,
      action: status === "seen" ? "vm.reseed-verified" : "vm.rollback-unsafe",
      target: { kind: "vm", id: vmId, name: vmName },
      result: "ok",
      details: { generation, snapshot: snap.name, status },
    });
  }
}

/** The guest's count of fork reseeds, or undefined if its agent cannot tell. */
async function reseedCount(rt: VmRuntime): Promise<number | undefined> {
  try {
    const agent = await rt.agentClient();
    const r = await agent.exec(["reseed-count"], 10_000);
    const n = Number.parseInt(Buffer.from(r.stdout, "base64").toString("utf8").trim(), 10);
    return Number.isSafeInteger(n) && n >= 0 ? n : undefined;
  } catch {
    return undefined;
  }
}

/** Freezes the guest's filesystem through the agent around `fn`; returns whether it was quiesced. */
async function withFrozenGuest(rt: VmRuntime, vm: VmRecord, log: Logger, fn: () => Promise<unknown>): Promise<boolean> {
  let frozen = false;
  if (vm.spec.agent && vm.state === "running") {
    try {
      const agent = await rt.agentClient();
      frozen = (await agent.fsfreeze("freeze", 5000)).frozen;
    } catch (err) {
      log.info({ vm: vm.name, err: messageOf(err) }, "guest filesystem not frozen: the snapshot is crash-consistent");
    }
  }
  try {
    await fn();
  } finally {
    if (frozen) await (await rt.agentClient()).fsfreeze("thaw", 10_000).catch((err: unknown) => log.error({ vm: vm.name, err: messageOf(err) }, "Cannot thaw the guest filesystem"));
  }
  return frozen;
}

/** Size and sha256 of a snapshot's saved VM state, read from the qcow2 file. */
function savedStateOf(file: string, tag: string): { vmStateSize: number; stateSha256: string | null } {
  const img = Qcow2Image.open(file);
  try {
    const s = img.snapshots().find((x) => x.name === tag);
    if (!s) throw new VigilError("VIGIL_QEMU", `QEMU reported snapshot ${q(tag)} saved, but ${q(file)} does not list it`);
    return { vmStateSize: Number(s.vmStateSize), stateSha256: img.sha256VmState(tag) };
  } finally {
    img.close();
  }
}

function qemuImgSnapshot(op: "-c" | "-d" | "-a", tag: string, file: string): Promise<unknown> {
  const what = { "-c": "Creating a disk snapshot", "-d": "Deleting a disk snapshot", "-a": "Reverting a disk snapshot" }[op];
  return runCommand(QEMU_IMG, ["snapshot", op, tag, file], { what });
}

/**
 * Runs `step` on every file in order; if one fails, `undo` runs on those already done (last first) and the
 * failure is rethrown. An undo that fails too is logged: the intent recorded by the caller is then the record.
 */
async function allOrNone(files: readonly string[], step: (f: string) => Promise<unknown>, undo: (f: string) => Promise<unknown>, log: Logger): Promise<void> {
  const done: string[] = [];
  try {
    for (const f of files) {
      await step(f);
      done.push(f);
    }
  } catch (err) {
    for (const f of done.reverse()) await undo(f).catch((e: unknown) => log.error({ file: f, err: messageOf(e) }, "Cannot undo a step on a disk"));
    throw err;
  }
}

/** The internal snapshot `tag` of a qcow2 file, as its snapshot table lists it (undefined: not there). */
function snapshotOn(file: string, tag: string) {
  const img = Qcow2Image.open(file);
  try {
    return img.snapshots().find((s) => s.name === tag);
  } finally {
    img.close();
  }
}

/** Refuses a revert that would fail half-way: every disk must hold the snapshot, the first its saved state. */
function checkRevertable(vm: VmRecord, files: readonly string[], snap: Snapshot): void {
  for (const [i, f] of files.entries()) {
    let found;
    try {
      found = snapshotOn(f, snap.name);
    } catch (err) {
      throw new VigilError("VIGIL_HOST", `Cannot revert VM ${q(vm.name)} to snapshot ${q(snap.name)}: disk ${q(vm.spec.disks[i]?.name ?? f)} cannot be read (${messageOf(err)}); nothing was changed`, { cause: err });
    }
    if (!found) throw new VigilError("VIGIL_CONFLICT", `Cannot revert VM ${q(vm.name)} to snapshot ${q(snap.name)}: disk ${q(vm.spec.disks[i]?.name ?? f)} does not hold it; nothing was changed`);
    if (i === 0 && snap.kind === "memory" && found.vmStateSize === 0n) {
      throw new VigilError("VIGIL_CONFLICT", `Cannot revert VM ${q(vm.name)} to snapshot ${q(snap.name)}: its saved memory state is missing from disk ${q(vm.spec.disks[0]?.name ?? f)}; nothing was changed`);
    }
  }
}

/**
 * Freezes `snapshot` of `source` as a flat, read-only qcow2 at `base` (a linked clone's base). No time limit (a
 * big disk takes as long as it takes) but progress; written to `base.tmp` and renamed into place, so `base`
 * exists whole or not at all, and the .tmp copy is removed when the copy fails.
 */
export async function freezeSnapshotBase(source: string, snapshot: string, base: string, onPercent: (pct: number) => void): Promise<void> {
  const tmp = `${base}.tmp`;
  try {
    rmSync(tmp, { force: true }); // a copy a crash left half-written
    await spawnWithProgress(QEMU_IMG, ["convert", "-p", "-O", "qcow2", "-l", `snapshot.name=${snapshot}`, source, tmp], onPercent);
    chmodSync(tmp, 0o400);
    renameSync(tmp, base);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

export type { LockedVm };
