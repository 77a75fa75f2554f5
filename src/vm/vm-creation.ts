/**
 * Making VMs: `create` (from an image) and `createDerived` (a clone or an import, for storage/). Both go
 * through `materialize`, which applies the owner's create quota under the owner's lock and makes directory,
 * disks, row and registrations one step: either all of it exists afterwards or none of it.
 */
import { randomUUID } from "node:crypto";
import { rmSync } from "node:fs";
import { dirname } from "node:path";
import { VigilError, errors, q } from "../errors.ts";
import type { VmLayout } from "../paths.ts";
import { createBlank, createFlatCopy, createOverlay } from "../qemu/qemu-img.ts";
import { checkSocketPath, ensurePrivateDir } from "../host/private-dir.ts";
import { eraseTree } from "../host/erase.ts";
import type { RequestContext } from "../auth/guard.ts";
import { can, ownsVm } from "../auth/permissions.ts";
import { parseOrThrow } from "../validation.ts";
import { createVmRequestSchema, resolveSpec, type VmSpec } from "./spec.ts";
import { checkCreateQuota, checkHostLimits } from "./host-limits.ts";
import type { Lineage, VmRecord } from "./vm-repository.ts";
import { diskFile, type VmView } from "./vm-view.ts";
import type { VmCore } from "./vm-core.ts";
import { checkOwnershipPolicy, resolveOwner } from "./vm-ownership.ts";

/** What a clone or an import hands `createDerived`. */
export interface DerivedVmInput {
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
}

export class VmCreation {
  constructor(private readonly core: VmCore) {}

  async create(ctx: RequestContext, input: unknown): Promise<VmView> {
    const { core } = this;
    const { d } = core;
    const rawName = typeof input === "object" && input !== null && typeof (input as { name?: unknown }).name === "string" ? (input as { name: string }).name.slice(0, 64) : null;
    // A VM for yourself or your groups needs vm.create; for anyone else also vm.chown on every VM (admins).
    const rawOwner = typeof input === "object" && input !== null ? (input as { owner?: unknown }).owner : undefined;
    if (typeof rawOwner === "string" && !ownsVm(ctx.actor, rawOwner) && can(ctx.actor, "vm.create")) {
      await d.guard.authorize(ctx, { action: "vm.create", permission: "vm.chown", target: { kind: "vm", name: rawName }, details: { owner: rawOwner.slice(0, 64) } });
    }
    return d.guard.run(
      ctx,
      { action: "vm.create", permission: "vm.create", target: { kind: "vm", name: rawName }, targetIdOf: (v: VmView) => v.id },
      async () => {
        const req = parseOrThrow(createVmRequestSchema, input, "VM spec", "VIGIL_INVALID_SPEC");
        const owner = await resolveOwner(d.users, ctx, req.owner);
        checkOwnershipPolicy(d.policy, "Invalid VM spec", req, "VIGIL_INVALID_SPEC");
        await d.users.checkApprover(req.approver, ctx.actor.name, "Invalid VM spec");
        return core.locks.run(`name:${req.name}`, async () => {
          if (await d.repo.findByName(req.name)) throw errors.vmExists(req.name);
          checkHostLimits(req, core.hostFacts());
          if (req.storage === "shared" && d.sharedStorage === undefined) {
            throw new VigilError("VIGIL_INVALID_SPEC", `Invalid VM spec: "storage" is "shared" but this host has no shared storage (start the agent with --shared-storage DIR)`, { field: "storage" });
          }
          const image = d.catalog.get(req.image);
          const spec = resolveSpec(req, image, { cpu: "max" });
          const id = randomUUID();
          const vmgenid = randomUUID();
          const vm = await this.materialize(
            { id, spec, owner },
            (l) => createDisks(spec, l, image.disk),
            async () =>
              d.repo.insert({
                id,
                name: spec.name,
                spec,
                state: "stopped",
                host: d.hostName,
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
          await d.generations.record(vm.id, { generation: 1, parentGeneration: null, vmgenid, reason: "create", snapshot: null, sourceVmId: null, createdBy: ctx.actor.name });
          return core.view(vm);
        });
      },
      (v) => ({ id: v.id, image: v.spec.image, owner: v.owner, vmgenid: v.vmgenid }),
    );
  }

  /**
   * Creates a new VM (a clone or an import) under the creator's name: fresh identity, disks prepared by
   * `prepareDisks` in the VM's private directory, the row inserted last, generation 1 recorded. Either all of
   * it exists afterwards or none of it.
   */
  async createDerived(ctx: RequestContext, input: DerivedVmInput): Promise<VmRecord> {
    const { core } = this;
    const { d } = core;
    // Before anything exists: a refused clone or import leaves no directory, row or registration behind.
    checkOwnershipPolicy(d.policy, `Cannot create VM ${q(input.spec.name)} (${input.reason})`, input);
    await d.users.checkApprover(input.approver, ctx.actor.name, `Cannot create VM ${q(input.spec.name)} (${input.reason})`);
    return core.locks.run(`name:${input.spec.name}`, async () => {
      if (await d.repo.findByName(input.spec.name)) throw errors.vmExists(input.spec.name);
      const id = randomUUID();
      const vmgenid = randomUUID();
      const vm = await this.materialize({ id, spec: input.spec, owner: input.owner }, input.prepareDisks, () =>
        d.repo.insert({
          id,
          name: input.spec.name,
          spec: input.spec,
          state: "stopped",
          host: d.hostName,
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
      await d.generations.record(vm.id, { generation: 1, parentGeneration: null, vmgenid, reason: input.reason, snapshot: input.lineage.snapshot ?? null, sourceVmId: input.lineage.sourceVm?.id ?? null, createdBy: ctx.actor.name });
      // The new VM's own story starts with its creation, whatever the operation that made it is filed under.
      await d.audit.append({
        actor: ctx.actor.name,
        action: "vm.create",
        target: core.target(vm),
        result: "ok",
        requestId: ctx.requestId,
        details: { via: input.reason, lineage: input.lineage, owner: vm.owner, vmgenid },
      });
      return vm;
    });
  }

  /**
   * Creates a VM's private directory, lets `prepareDisks` fill its disks directory, then inserts its row. If
   * anything fails, the directory is removed and no row exists: a half-created VM is never left behind.
   */
  private async materialize(
    identity: { id: string; spec: VmSpec; owner: string },
    prepareDisks: (l: VmLayout) => Promise<void>,
    insertRow: () => Promise<VmRecord>,
  ): Promise<VmRecord> {
    const { core } = this;
    const { d } = core;
    // The owner's quotas hold for every VM-creating path; its lock makes check and insert one step.
    return core.locks.run(`owner:${identity.owner}`, async () => {
      const usage = await core.usage(identity.owner);
      checkCreateQuota(`Cannot create VM ${q(identity.spec.name)}`, identity.owner, usage.owner, await d.users.quotasFor(identity.owner, d.quotas ?? {}), identity.spec);
      return this.materializeLocked(identity, prepareDisks, insertRow);
    });
  }

  private async materializeLocked(
    identity: { id: string; spec: VmSpec },
    prepareDisks: (l: VmLayout) => Promise<void>,
    insertRow: () => Promise<VmRecord>,
  ): Promise<VmRecord> {
    const { d } = this.core;
    const l = this.core.layout(identity);
    // Recorded before the directory exists: if vigil dies before the end, the next start erases it (sweepLeftovers).
    const intent = await d.registry.intend(identity.id, "materialize", l.dir);
    try {
      ensurePrivateDir(d.home.vmsDir);
      ensurePrivateDir(l.dir);
      if (identity.spec.storage === "shared") ensurePrivateDir(dirname(l.disksDir));
      ensurePrivateDir(l.disksDir);
      for (const p of [l.qmpSocket, l.serialSocket, l.agentSocket, l.vtimeSocket]) checkSocketPath(p);
      await prepareDisks(l);
      const vm = await insertRow();
      for (const disk of identity.spec.disks) await d.registry.register(vm.id, diskFile(l.disksDir, disk.name), "disk");
      await d.locations.moveTo(vm.id, d.hostName, l.dir);
      await d.registry.fulfil(intent);
      return vm;
    } catch (err) {
      // A half-made VM may hold a full copy of another VM's disk: overwritten, not just unlinked.
      eraseTree(d.home.vmsDir, l.dir);
      if (identity.spec.storage === "shared" && d.sharedStorage !== undefined) {
        eraseTree(d.sharedStorage, dirname(l.disksDir));
        rmSync(dirname(l.disksDir), { recursive: true, force: true });
      }
      await d.repo.delete(identity.id).catch(() => undefined);
      await d.registry.fulfil(intent);
      throw err;
    }
  }
}

/** The disks of a VM created from an image: overlays on the image's disk (a shared VM: standalone copies), or blank disks. */
async function createDisks(spec: VmSpec, l: VmLayout, imageDisk?: string): Promise<void> {
  for (const disk of spec.disks) {
    const file = diskFile(l.disksDir, disk.name);
    if (disk.backing) await createOverlay(file, disk.backing, disk.sizeMiB);
    else if (spec.storage === "shared" && disk.name === "root" && imageDisk !== undefined) await createFlatCopy(file, imageDisk, disk.sizeMiB);
    else await createBlank(file, disk.sizeMiB ?? 1024);
  }
}
